package main

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBinaryRunsTheRelayCommand: the lean binary is the relay command, with
// its exit codes: no certificate is a usage error (2), as for `fogmesh
// relay`, and the leading "relay" argument is optional.
func TestBinaryRunsTheRelayCommand(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "fogmesh-relay")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0"}, {"relay", "-addr", "127.0.0.1:0"}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "fogmesh-relay: relay: a certificate, a key and a trust bundle file are required") {
			t.Errorf("%v: %v\n%s", args, err, out)
		}
	}
}
