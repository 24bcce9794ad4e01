package audit

import (
	"context"
	"strings"
	"testing"
)

// TestLongRecordsReadBack: a record of escaped characters encodes to a
// line over 64 KiB (each field is cut at MaxFieldBytes, but a control
// character takes 6 bytes in JSON) yet under maxLine, so Append writes it
// and a replica takes it. ReadFrom must read it back: it is what the
// agent ships from and what a regional control plane ships up from, and
// a line it cannot read stops the chain's shipping at that seq for good.
func TestLongRecordsReadBack(t *testing.T) {
	esc := strings.Repeat("\x01", MaxFieldBytes)
	l := openLog(t, t.TempDir(), nil)
	for i := range 3 {
		r := authz(i)
		if i == 1 {
			r.Actor, r.Object, r.Reason = esc, esc, esc
		}
		if err := l.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs, err := l.ReadFrom(1, 10)
	if err != nil || len(recs) != 3 {
		t.Fatalf("log ReadFrom: %d records, %v; want 3", len(recs), err)
	}
	if line, _ := recs[1].MarshalLine(); len(line) <= 64<<10 {
		t.Fatalf("the long record's line is %d bytes; the test wants one over 64 KiB", len(line))
	}

	rp, err := OpenReplica(t.TempDir(), recs[0].Node)
	if err != nil {
		t.Fatal(err)
	}
	defer rp.Close()
	if last, err := rp.Append(recs); err != nil || last != 3 {
		t.Fatalf("replica Append: %d, %v", last, err)
	}
	got, err := rp.ReadFrom(2, 10)
	if err != nil || len(got) != 2 || got[0].Hash != recs[1].Hash {
		t.Fatalf("replica ReadFrom: %d records, %v; want 2", len(got), err)
	}
}
