package audit

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// Tail reads the last records of a log across rotated files, whole lines
// only: a torn last line and a line cut by the byte bound are left out.
func TestTail(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(Config{Dir: dir, Node: "n1", MaxFileBytes: 2000, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 40; i++ {
		dec := Allow
		if i%4 == 0 {
			dec = Deny
		}
		if err := l.Append(Record{Kind: KindAuthz, Actor: "spiffe://td/ns/demo/sa/web", Action: "GET /x", Object: "demo/hello", Decision: dec}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.Close()
	files, _ := ChainFiles(dir, "")
	if len(files) < 3 {
		t.Fatalf("want rotated files, have %v", files)
	}
	all, err := Tail(dir, "", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	authz := 0
	for i, r := range all {
		if i > 0 && r.Seq != all[i-1].Seq+1 {
			t.Fatalf("seq %d after %d", r.Seq, all[i-1].Seq)
		}
		if r.Kind == KindAuthz {
			authz++
		}
	}
	if authz != 40 || all[0].Seq != 1 {
		t.Fatalf("%d authz records from seq %d, want 40 from 1", authz, all[0].Seq)
	}
	some, err := Tail(dir, "", 1500)
	if err != nil {
		t.Fatal(err)
	}
	if len(some) == 0 || len(some) >= len(all) || some[len(some)-1].Seq != all[len(all)-1].Seq {
		t.Fatalf("1500 bytes: %d records ending at %v, of %d", len(some), some, len(all))
	}
	// A line being written (no newline yet) is not a record.
	f, _ := os.OpenFile(filepath.Join(dir, "audit.log"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"seq":999,"node":"n1"`)
	f.Close()
	again, err := Tail(dir, "", 1<<20)
	if err != nil || len(again) != len(all) {
		t.Fatalf("torn tail: %d records, %v; want %d", len(again), err, len(all))
	}
}
