package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
)

// readJoinTokenFile reads a join token from path for -join-token-file. A
// missing file means no token: in Kubernetes the agent DaemonSet mounts
// the Secret whose key is the node's name, and a node that has joined
// keeps its certificate and needs no token (deploy/agent.yaml).
func readJoinTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("agent: -join-token-file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", fmt.Errorf("agent: -join-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(b) == 4096 || strings.ContainsAny(tok, " \t\n") {
		return "", Usagef("agent: -join-token-file %s: not a token (one line expected)", path)
	}
	return tok, nil
}
