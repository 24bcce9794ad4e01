package main

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// agentPackages are the packages that make up the agent (issue 10): a
// newcomer reads them to find where a request is balanced, authorized and
// forwarded, so each file should hold one responsibility.
var agentPackages = []string{
	"agent", "balance", "httpproxy", "health", "svid", "mqtt/relay",
	"egress", "localid", "outlier", "retry",
	// The leaf packages the agent links (decoders, policy engine, masker,
	// audit log, API types), held to the same rule.
	"api", "mqtt", "authz", "mask", "audit", "audit/ship", "syncproto", "netseam",
	"transport", "proxy", "gossip", "meshdns", "identity", "wire", "pathnorm", "sockowner",
	"workloadapi", "atomicfile", "fastpath",
}

// maxFileLines is the size above which a file of the agent's packages
// must say at its top why it is not split.
const maxFileLines = 500

// overLimitReason starts the comment line that gives that reason.
const overLimitReason = "// Over 500 lines:"

// TestAgentFilesShort keeps the agent's packages split by responsibility:
// a non-test Go file above maxFileLines lines fails unless a line starting
// with overLimitReason comes before its first declaration.
func TestAgentFilesShort(t *testing.T) {
	for _, pkg := range agentPackages {
		dir := filepath.Join("..", "..", "internal", filepath.FromSlash(pkg))
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatalf("list %s: %v", dir, err)
		}
		if len(files) == 0 {
			t.Errorf("internal/%s has no Go files: update agentPackages", pkg)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			lines, reason, err := fileLines(f)
			if err != nil {
				t.Fatal(err)
			}
			if lines > maxFileLines && !reason {
				t.Errorf("%s has %d lines (more than %d) and no %q line at its top: split it, or say why not",
					f, lines, maxFileLines, overLimitReason)
			}
		}
	}
}

// fileLines counts the lines of a Go file and reports whether a line
// starting with overLimitReason comes before its first declaration.
func fileLines(path string) (lines int, reason bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	inHeader := true
	for sc.Scan() {
		lines++
		l := sc.Text()
		for _, kw := range []string{"func ", "type ", "var ", "const "} {
			if strings.HasPrefix(l, kw) {
				inHeader = false
			}
		}
		if inHeader && strings.HasPrefix(l, overLimitReason) {
			reason = true
		}
	}
	return lines, reason, sc.Err()
}
