package audit

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestDamagedFirstLineKeepsFileInChain: an active file whose first line is
// damaged (a bad sector, a bit flip) but whose later records are whole
// still holds those records. When it is rotated it must be named by the
// first seq it holds, not by seq 0: the rotated-file listing skips a name
// with seq 0, so the file dropped out of the chain for good — its records
// no longer read (shipping stopped at them), verified or pruned.
func TestDamagedFirstLineKeepsFileInChain(t *testing.T) {
	dir := t.TempDir()
	writeN(t, dir, 5, nil)
	active := filepath.Join(dir, "audit.log")
	b, err := os.ReadFile(active)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.IndexByte(b, '\n')
	copy(b[:i], bytes.Repeat([]byte{'#'}, i))
	if err := os.WriteFile(active, b, 0o600); err != nil {
		t.Fatal(err)
	}
	l := openLog(t, dir, func(c *Config) { c.MaxFileBytes = int64(len(b)) + 10 })
	for i := range 3 {
		if err := l.Append(authz(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files, err := l.Files()
	if err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(files) < 2 {
		t.Fatalf("the rotated file is not in the chain: files %v, directory %v", files, names)
	}
	// Seq 1 is the damaged line; 2..5 and 6..8 are whole, and Verify
	// names the damage, not a removal.
	rep := mustVerify(t, Verifier{}, files...)
	if rep.LastSeq != 8 || rep.Records != 7 || len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemMalformed {
		t.Fatalf("chain: %d records up to seq %d, problems %v; want 7 up to 8 and the damaged line (files %v, directory %v)",
			rep.Records, rep.LastSeq, rep.Problems, files, names)
	}
	if got, err := l.seg.readFrom(6, 20); err != nil || len(got) != 3 {
		t.Fatalf("readFrom(6): %d records, %v; want 3", len(got), err)
	}
}
