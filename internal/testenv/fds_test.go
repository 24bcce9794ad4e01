package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

// TestOpenFilesUnder counts the files open under a directory, not those of
// a sibling whose name starts the same.
func TestOpenFilesUnder(t *testing.T) {
	root := t.TempDir()
	dir, sibling := filepath.Join(root, "d"), filepath.Join(root, "dd")
	for _, d := range []string{dir, sibling} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var open []*os.File
	for _, p := range []string{filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(sibling, "c")} {
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, f)
	}
	if n := OpenFilesUnder(t, dir); n != 2 {
		t.Fatalf("%d open under %s, want 2", n, dir)
	}
	for _, f := range open {
		f.Close()
	}
	if n := OpenFilesUnder(t, dir); n != 0 {
		t.Fatalf("%d open under %s after closing, want 0", n, dir)
	}
}
