package audit

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
)

// filesBytes is the size of a log's files.
func filesBytes(t *testing.T, l *Log) int64 {
	t.Helper()
	files, err := l.Files()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

// TestMaxBytesBoundsTheLog: a log at its size bound (a node cut off with
// records it could not ship) drops new records, counts them and, once
// Prune removed shipped files, writes a "lost" record saying how many;
// the chain stays unbroken, and nothing is pruned that was not shipped.
func TestMaxBytesBoundsTheLog(t *testing.T) {
	const maxBytes = 16 << 10
	l := openLog(t, t.TempDir(), func(c *Config) { c.MaxFileBytes, c.MaxBytes, c.NoSync = 2<<10, maxBytes, true })
	for i := range 300 { // about 75 KiB of records
		if err := l.Append(authz(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	kept, _ := l.Last()
	if got := filesBytes(t, l); got > maxBytes {
		t.Fatalf("the log takes %d bytes, bound %d", got, maxBytes)
	}
	lost := l.Dropped()
	if lost == 0 || kept+lost != 300 {
		t.Fatalf("kept %d, lost %d of 300", kept, lost)
	}
	// Nothing is shipped yet: Prune(0) removes nothing, and the bound
	// still holds.
	if n := l.Prune(0); n != 0 {
		t.Fatalf("pruned %d files with nothing shipped", n)
	}
	l.Append(authz(1))
	l.Flush(context.Background())
	if l.Dropped() != lost+1 {
		t.Fatalf("a record past the bound was not counted: %d", l.Dropped())
	}
	// Shipped through kept: room is made, and the next write first says
	// what was lost.
	if n := l.Prune(kept); n == 0 || filesBytes(t, l) > maxBytes/2 {
		t.Fatalf("pruned %d files, the log takes %d bytes", n, filesBytes(t, l))
	}
	if err := l.Append(authz(2)); err != nil {
		t.Fatal(err)
	}
	l.Flush(context.Background())
	recs, err := l.ReadFrom(kept+1, 10)
	if err != nil || len(recs) != 2 {
		t.Fatalf("records after the bound: %v %v", recs, err)
	}
	if recs[0].Action != "lost" || !strings.HasPrefix(recs[0].Reason, fmt.Sprintf("%d records lost: the log was at its size bound", lost+1)) ||
		recs[1].Object != authz(2).Object {
		t.Fatalf("after pruning: %+v", recs)
	}
	files, _ := l.Files()
	rep := mustVerify(t, Verifier{Head: logHead(l)}, files...)
	if rep.Tampered() {
		t.Fatalf("the pruned chain reads as tampered: %+v", rep.Problems)
	}
}
