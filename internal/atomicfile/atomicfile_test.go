package atomicfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWrite: a new file and a replaced one hold exactly the bytes written,
// with the mode asked for, and no temporary file is left beside them.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cache.json")
	for _, c := range []struct {
		data string
		perm os.FileMode
	}{{"first, longer content", 0o600}, {"second", 0o644}} {
		if err := Write(path, []byte(c.data), c.perm); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != c.data {
			t.Fatalf("read %q, %v; want %q", got, err, c.data)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != c.perm {
			t.Fatalf("mode %v, want %v", fi.Mode().Perm(), c.perm)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want only the file", len(entries))
	}
}

// TestWriteErrors: a missing directory, or a directory where the file
// should be, is an error naming the path, and leaves what was there.
func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope", "f")
	if err := Write(missing, []byte("x"), 0o600); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("missing directory: %v", err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "keep"), []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Write(sub, []byte("x"), 0o600); err == nil || !strings.Contains(err.Error(), sub) {
		t.Fatalf("over a non-empty directory: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(sub, "keep")); err != nil || string(b) != "k" {
		t.Fatalf("directory content changed: %q %v", b, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary file left behind: %d entries", len(entries))
	}
}
