package audit

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// chainRecords returns the records of a chain of n records of edge-1.
func chainRecords(t *testing.T, n int) []Record {
	t.Helper()
	var recs []Record
	for _, f := range writeN(t, t.TempDir(), n, nil) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, ln := range strings.SplitAfter(string(b), "\n") {
			if ln == "" {
				continue
			}
			r, err := DecodeLine([]byte(ln))
			if err != nil {
				t.Fatal(err)
			}
			recs = append(recs, *r)
		}
	}
	if len(recs) != n {
		t.Fatalf("%d records, want %d", len(recs), n)
	}
	return recs
}

// A replica holds no open file between batches (the control plane keeps
// one per node), and goes on from where it left off.
func TestReplicaHoldsNoFileBetweenBatches(t *testing.T) {
	recs := chainRecords(t, 13)
	rdir := t.TempDir()
	rp, err := OpenReplica(rdir, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	defer rp.Close()
	if n := testenv.OpenFilesUnder(t, rdir); n != 0 {
		t.Fatalf("%d files open after OpenReplica, want 0", n)
	}
	for _, b := range [][2]int{{0, 5}, {3, 9}, {9, 12}} {
		if last, err := rp.Append(recs[b[0]:b[1]]); err != nil || last != uint64(b[1]) {
			t.Fatalf("append %v: %d, %v", b, last, err)
		}
		if n := testenv.OpenFilesUnder(t, rdir); n != 0 {
			t.Fatalf("%d files open after a batch, want 0", n)
		}
	}
	if got, err := rp.ReadFrom(11, 5); err != nil || len(got) != 2 || got[1].Hash != recs[11].Hash {
		t.Fatalf("ReadFrom: %v, %v", got, err)
	}
	if rep, err := rp.Verify(Verifier{Head: &Head{12, recs[11].Hash}, FromGenesis: true}); err != nil || !rep.Intact() || rep.Records != 12 {
		t.Fatalf("%+v %v", rep, err)
	}
	if n := testenv.OpenFilesUnder(t, rdir); n != 0 {
		t.Fatalf("%d files open after reads, want 0", n)
	}
	// A refused batch leaves nothing open either.
	if _, err := rp.Append(recs[0:1]); err != nil {
		t.Fatal(err)
	}
	if err := rp.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := rp.Append(recs[12:]); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v, want ErrClosed", err)
	}
}

// Files kept closed between writes rotate like held ones, and the chain
// across the rotated files verifies.
func TestIdleSegmentsRotate(t *testing.T) {
	recs := chainRecords(t, 20)
	dir := t.TempDir()
	seg, _, err := openSegments(dir, "audit.log", 700, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	seg.keepClosed()
	for i := range recs {
		line, err := recs[i].MarshalLine()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := seg.write(line, recs[i].Seq, Head{Seq: recs[i].Seq, Hash: recs[i].Hash}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if n := testenv.OpenFilesUnder(t, dir); n != 0 {
			t.Fatalf("%d files open after write %d", n, i)
		}
	}
	rot, err := seg.rotated()
	if err != nil || len(rot) < 2 {
		t.Fatalf("rotated files: %v, %v; want several", rot, err)
	}
	rep, err := seg.verifyAnchored(Verifier{FromGenesis: true})
	if err != nil || !rep.Intact() || rep.Records != 20 {
		t.Fatalf("%+v %v", rep, err)
	}
	if err := seg.close(); err != nil {
		t.Fatal(err)
	}
}

// An idle replica whose active file is shorter than what it wrote (a
// rotation renamed it and could not create the next one, or someone cut
// it) refuses the next batch instead of writing it after a gap of zeros.
func TestIdleReplicaRefusesAShortActiveFile(t *testing.T) {
	recs := chainRecords(t, 4)
	rdir := t.TempDir()
	rp, err := OpenReplica(rdir, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	defer rp.Close()
	if _, err := rp.Append(recs[:2]); err != nil {
		t.Fatal(err)
	}
	files, err := rp.Files()
	if err != nil || len(files) != 1 {
		t.Fatalf("files %v, %v", files, err)
	}
	if err := os.Rename(files[0], files[0]+".moved"); err != nil {
		t.Fatal(err)
	}
	if _, err := rp.Append(recs[2:]); err == nil || !strings.Contains(err.Error(), "were written") {
		t.Fatalf("append to a short active file: %v", err)
	}
	if b, err := os.ReadFile(files[0]); err == nil && strings.ContainsRune(string(b), 0) {
		t.Fatalf("a gap of zeros was written: %q", b)
	}
}
