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

// TestPrepareDir: the default socket's directory is made 0755 (any user
// may reach the socket, only the agent may write there); a symlink in its
// place is refused.
func TestPrepareDir(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "a", "public")
	if err := PrepareDir(dir); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v, %v; want mode 0755", d, fi, err)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := PrepareDir(dir); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o755 {
		t.Errorf("existing dir left %v, want 0755", fi.Mode().Perm())
	}
	other := filepath.Join(base, "elsewhere")
	os.Mkdir(other, 0o700)
	link := filepath.Join(base, "link")
	os.Symlink(other, link)
	if err := PrepareDir(link); err == nil {
		t.Error("PrepareDir accepted a symlink")
	}
	if fi, _ := os.Stat(other); fi.Mode().Perm() != 0o700 {
		t.Errorf("symlink target's mode changed to %v", fi.Mode().Perm())
	}
}
