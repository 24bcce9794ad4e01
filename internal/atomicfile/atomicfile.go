// Package atomicfile replaces a file so that a crash leaves either the old
// content or the new, never a torn file: the agent's offline cache, its
// node key and certificate and its local API token are written through it.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write writes b to path with mode perm through a temporary file in the
// same directory: written, fsynced, renamed over path, and the directory
// fsynced so the rename survives a power cut.
func Write(path string, b []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename this fails harmlessly
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(b)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", path, err)
	}
	SyncDir(dir)
	return nil
}

// SyncDir fsyncs directory dir, so that a rename or a new file in it
// survives a power cut (best effort: errors are ignored).
func SyncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
