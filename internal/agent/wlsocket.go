package agent

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/fogmesh/fogmesh/internal/workloadapi"
)

// DefaultWorkloadAPISocket is where the Workload API socket of an agent
// with state directory stateDir is by default: workload.sock in the
// directory beside it named <stateDir>-public (for the default state
// directory, /var/lib/fogmesh/agent-public/workload.sock).
//
// It is not in the state directory: that one is 0700 (it holds the node's
// and the workloads' private keys), so a workload of another uid could
// not even reach the socket to be attested. The public directory is 0755
// and only the agent may write it, the socket in it 0666: any local
// process may connect, and its credentials (SO_PEERCRED) decide which
// SVIDs it gets. It is a sibling, not a fixed path like /run/fogmesh, so
// agents with different state directories on one host (fogmesh dev,
// tests) each keep their own socket.
func DefaultWorkloadAPISocket(stateDir string) string {
	return filepath.Join(filepath.Clean(stateDir)+"-public", "workload.sock")
}

// makeStateDir makes the state directory 0700, and the missing directories
// above it 0755 so that the public directory beside it can be reached.
func makeStateDir(dir string) error {
	if err := os.MkdirAll(filepath.Dir(filepath.Clean(dir)), 0o755); err != nil {
		return err
	}
	return os.MkdirAll(dir, 0o700)
}

// listenWorkloadAPI opens the Workload API socket. At the default path it
// first makes the public directory (workloadapi.PrepareDir), and warns
// when a directory above it keeps other users out.
func (a *Agent) listenWorkloadAPI() (net.Listener, error) {
	path := a.cfg.WorkloadAPISocket
	if path == DefaultWorkloadAPISocket(a.cfg.StateDir) {
		dir := filepath.Dir(path)
		if err := workloadapi.PrepareDir(dir); err != nil {
			return nil, err
		}
		if d := unsearchableAncestor(dir); d != "" {
			a.log.Warn("agent: the Workload API socket is out of reach of other users: a directory above it is not searchable by them (chmod o+x it, or set workloadAPISocket)",
				"socket", path, "dir", d)
		}
	}
	ln, err := workloadapi.Listen(path)
	if err != nil {
		return nil, fmt.Errorf("workload API: %w", err)
	}
	return ln, nil
}

// unsearchableAncestor returns the first directory from dir up to the
// root that other users may not traverse (no o+x), or "".
func unsearchableAncestor(dir string) string {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
			return d
		}
		if d == filepath.Dir(d) {
			return ""
		}
	}
}
