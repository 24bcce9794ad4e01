package control

import (
	"fmt"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/audit"
)

// TestUIKeepsRecentDenials: of the records nodes ship, the UI keeps the
// denials only, the newest maxDenials of them.
func TestUIKeepsRecentDenials(t *testing.T) {
	var u uiState
	var recs []audit.Record
	for i := 1; i <= 2*maxDenials; i++ {
		d := audit.Allow
		if i%2 == 0 || i > maxDenials {
			d = audit.Deny
		}
		recs = append(recs, audit.Record{Seq: uint64(i), Kind: audit.KindAuthz, Decision: d, Object: fmt.Sprint(i)})
	}
	u.noteAudit(recs[:10])
	if len(u.denials) != 5 || u.denials[0].Seq != 2 {
		t.Fatalf("after 10 records: %d denials, first %d", len(u.denials), u.denials[0].Seq)
	}
	u.noteAudit(recs[10:])
	if len(u.denials) != maxDenials || u.denials[maxDenials-1].Seq != 2*maxDenials || u.denials[0].Seq != maxDenials+1 {
		t.Fatalf("kept %d denials, seqs %d..%d", len(u.denials), u.denials[0].Seq, u.denials[len(u.denials)-1].Seq)
	}
}

// TestUILoadsStoredDenials: denials read back from the chains at start
// merge with those noted meanwhile, by time, each node and seq once, the
// newest maxDenials kept.
func TestUILoadsStoredDenials(t *testing.T) {
	var u uiState
	t0 := time.Unix(1700000000, 0)
	live := audit.Record{Node: "b", Seq: 7, Decision: audit.Deny, Time: t0.Add(time.Hour)}
	u.noteAudit([]audit.Record{live})
	var stored []audit.Record
	for i := 1; i <= maxDenials; i++ {
		stored = append(stored, audit.Record{Node: "a", Seq: uint64(i), Decision: audit.Deny, Time: t0.Add(time.Duration(i) * time.Second)})
	}
	stored = append(stored, live) // also on disk: ingested while loading
	u.loadDenials(stored)
	if len(u.denials) != maxDenials || u.denials[maxDenials-1] != live || u.denials[0].Seq != 2 {
		t.Fatalf("%d denials, first %+v, last %+v", len(u.denials), u.denials[0], u.denials[len(u.denials)-1])
	}
}
