package store

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEmptyStoreFileRefused: a store file cut to zero bytes (a restore
// gone wrong, a damaged disk) is refused, not silently made a new, empty
// store: that would forget the deny list (a revoked node whose
// certificate has not expired could connect again), the used tokens and
// the audit heads, with nothing said. The file is left as it was.
func TestEmptyStoreFileRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fogmesh.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, Options{})
	if err == nil {
		s.Close()
		t.Fatal("an empty store file was opened as a new store")
	}
	if !strings.Contains(err.Error(), "empty") {
		t.Fatalf("error does not say the file is empty: %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != 0 {
		t.Fatalf("the empty file was changed: %v, %v", fi, err)
	}
	// A missing file is a new store, as before.
	open(t, filepath.Join(t.TempDir(), "new.db"), Options{})
}
