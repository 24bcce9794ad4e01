package audit

import (
	"errors"
	"os/exec"
	"path/filepath"
	"testing"
)

// forkedChains returns two chains of edge-1 that share their first shared
// records and then differ: a, of shared+na records, and b, of shared+nb
// (b is what a node restored from a backup taken at seq shared writes).
func forkedChains(t *testing.T, shared, na, nb int) (a, b []Record) {
	t.Helper()
	base := t.TempDir()
	dirA, dirB := filepath.Join(base, "a"), filepath.Join(base, "b")
	write := func(dir string, n int, tag string) []Record {
		l := openLog(t, dir, nil)
		for i := range n {
			rec := authz(i)
			rec.Reason = tag
			if err := l.Append(rec); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		l = openLog(t, dir, nil)
		defer l.Close()
		recs, err := l.ReadFrom(1, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		return recs
	}
	write(dirA, shared, "shared")
	if out, err := exec.Command("cp", "-r", dirA, dirB).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	a = write(dirA, na, "first incarnation")
	b = write(dirB, nb, "after rollback")
	if len(a) != shared+na || len(b) != shared+nb || a[shared-1].Hash != b[shared-1].Hash || a[shared].Hash == b[shared].Hash {
		t.Fatalf("forked chains: %d and %d records", len(a), len(b))
	}
	return a, b
}

// A resent batch that lies below the replica's head is skipped only if its
// records are the ones held: a batch of a chain that forked below the head
// is refused as a fork, not counted as held (the sender would take its
// differing records as shipped and prune them).
func TestReplicaChecksHeldRecordsBelowHead(t *testing.T) {
	held, other := forkedChains(t, 10, 20, 25)
	rp, err := OpenReplica(t.TempDir(), "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	defer rp.Close()
	if last, err := rp.Append(held); err != nil || last != 30 {
		t.Fatalf("append the held chain: %d, %v", last, err)
	}
	// The same records resent, below the head: skipped as before.
	for _, b := range [][2]int{{0, 1}, {0, 10}, {5, 20}, {10, 29}, {28, 30}} {
		if last, err := rp.Append(held[b[0]:b[1]]); err != nil || last != 30 {
			t.Fatalf("resend %v: %d, %v", b, last, err)
		}
	}
	// The shared prefix of the other chain is held too.
	if last, err := rp.Append(other[:10]); err != nil || last != 30 {
		t.Fatalf("resend the shared prefix: %d, %v", last, err)
	}
	// Past the fork: refused, below the head, at it and past it.
	for _, b := range [][2]int{{10, 11}, {0, 15}, {10, 29}, {20, 29}, {25, 35}, {0, 35}} {
		last, err := rp.Append(other[b[0]:b[1]])
		if !errors.Is(err, ErrFork) || last != 30 {
			t.Fatalf("forked batch %v: %d, %v; want a fork refused", b, last, err)
		}
	}
	if seq, hash := rp.Last(); seq != 30 || hash != held[29].Hash {
		t.Fatalf("head %d %s after refusals", seq, hash)
	}
	// A damage marker resent in a record's place below the head is made
	// anew each send (another time, another hash): not taken as a fork.
	marker := held[14]
	marker.Kind, marker.Action, marker.Object, marker.Hash = KindAudit, ActionDamaged, "seq 15..15", "another"
	resend := append(append([]Record{}, held[10:14]...), marker)
	if last, err := rp.Append(resend); err != nil || last != 30 {
		t.Fatalf("resend ending at a damage marker: %d, %v; want it skipped as held", last, err)
	}
	// The chain held still takes what continues it.
}
