package workloadapi

import (
	"os"
	"path/filepath"
	"testing"
)

// TestListenDoesNotChmodThroughSymlink: someone who may write the socket's
// directory swaps the fresh socket for a symlink to a private file between
// Listen's bind and its chmod. Listen must refuse, and the symlink's target
// must keep its mode (a chmod following the link made it 0666).
func TestListenDoesNotChmodThroughSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "secret")
	if err := os.WriteFile(target, []byte("key"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "workload.sock")
	testHookAfterBind = func(p string) {
		if err := os.Remove(p); err != nil {
			t.Error(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Error(err)
		}
	}
	defer func() { testHookAfterBind = nil }()
	ln, err := Listen(path)
	if err == nil {
		ln.Close()
		t.Error("Listen succeeded with a symlink swapped in at the socket path")
	} else {
		t.Logf("refused: %v", err)
	}
	fi, err := os.Stat(target)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("symlink target's mode %v after Listen, want 0600 (the chmod followed the symlink)", fi.Mode().Perm())
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symlink at the socket path: %v, %v (Listen must leave what it did not make)", fi, err)
	}
}

// TestListenSetsSocketMode: the socket Listen makes is 0666 whatever the
// umask, so every local user can connect (attestation decides the rest).
func TestListenSetsSocketMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "workload.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket mode %v, want a socket with 0666", fi.Mode())
	}
}
