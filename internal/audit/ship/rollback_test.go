package ship

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestRolledBackLogDivergedRecords: a node whose state directory was
// restored from a backup (its log 1..10 a prefix of the 1..30 the control
// plane holds) writes records 11..35 that differ from those held. Its
// shipper restarts from seq 1 (the control plane's seq 30 differs from its
// own); the same seq 1 is taken as a resend, and the batch is refused as a
// fork. The shipper used to take the control plane's head (30) as shipped
// (the node prunes up to it: its differing records 11..30 lost) and was
// then refused forever. Now the control plane answers a fork with seq 0
// and archives its chain (internal/control: ingestNodeAudit); the shipper
// ships from seq 1 as a restart, which is taken. This control plane
// stand-in does what the real one does with a replica. With a stale
// welcome (the control plane's seq 10, which the node holds too: its head
// moved on after the welcome) the shipper resumes at 11 and is refused as
// a fork: then too it ships from seq 1 as a restart.
func TestRolledBackLogDivergedRecords(t *testing.T) {
	t.Run("welcome", func(t *testing.T) { testRolledBackLog(t, false) })
	t.Run("stale welcome", func(t *testing.T) { testRolledBackLog(t, true) })
}

func testRolledBackLog(t *testing.T, stale bool) {
	base := t.TempDir()
	dirB, dirA, dirR := filepath.Join(base, "b"), filepath.Join(base, "a"), filepath.Join(base, "r")
	open := func(dir string) (*audit.Log, chan struct{}) {
		w := make(chan struct{}, 1)
		l, err := audit.Open(audit.Config{Dir: dir, Node: "n1", NoSync: true, OnWrite: func(uint64) {
			select {
			case w <- struct{}{}:
			default:
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		return l, w
	}
	add := func(l *audit.Log, n int, tag string) {
		for i := 0; i < n; i++ {
			l.Append(audit.Record{Kind: audit.KindAuthz, Action: "connect", Object: "demo/echo", Decision: audit.Deny, Reason: tag})
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := l.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	lb, _ := open(dirB)
	add(lb, 10, "shared")
	lb.Close()
	if out, err := exec.Command("cp", "-r", dirB, dirA).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	la, _ := open(dirA)
	add(la, 20, "first incarnation")
	recsA, _ := la.ReadFrom(1, 100)
	la.Close()
	rep, err := audit.OpenReplica(dirR, "n1")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { rep.Close() }()
	if last, err := rep.Append(recsA); err != nil || last != 30 {
		t.Fatal(last, err)
	}
	cpSeq, cpHash := rep.Last()
	if stale {
		cpSeq, cpHash = 10, recsA[9].Hash
	}
	archives := 0
	archive := func() {
		archives++
		rep.Close()
		if err := os.Rename(dirR, dirR+".archived"); err != nil {
			t.Fatal(err)
		}
		if rep, err = audit.OpenReplica(dirR, "n1"); err != nil {
			t.Fatal(err)
		}
	}
	lb, written := open(dirB) // the rolled-back agent
	defer lb.Close()
	add(lb, 25, "after rollback") // its 11..35
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acks := make(chan *wire.Message, 1)
	var shipped uint64
	var refused, badShipped int
	forked := false
	s := &Shipper{Log: lb, Written: written, AckTimeout: time.Second,
		Shipped: func(seq uint64) {
			shipped = seq
			if seq == 0 {
				return
			}
			// Every seq taken as shipped is the node's record, held.
			mine, _ := lb.ReadFrom(seq, 1)
			held, _ := rep.ReadFrom(seq, 1)
			if len(mine) != 1 || len(held) != 1 || mine[0].Hash != held[0].Hash {
				badShipped++
			}
			if seq == 35 {
				cancel()
			}
		},
		Refused: func() { refused++ }}
	s.Run(ctx, cpSeq, cpHash, func(m *wire.Message) error {
		recs, _ := audit.DecodeBatch(m.Audit)
		ack := &wire.Message{Type: wire.TypeAuditAck}
		if forked && !m.AuditRestart {
			// A control plane that could not archive its chain
			// still holds it: only a restart archives it then.
			t.Errorf("the batch after a fork refused (seq %d..) is not a restart", recs[0].Seq)
		}
		forked = false
		if got, _ := rep.ReadFrom(1, 1); m.AuditRestart && len(got) == 1 && got[0].Hash != recs[0].Hash {
			archive() // a restart with another seq 1 (restartAuditChain)
		}
		var err error
		if ack.AuditSeq, err = rep.Append(recs); err != nil {
			ack.Error = err.Error()
			if errors.Is(err, audit.ErrDiverged) {
				archive() // as ingestNodeAudit does
				ack.AuditSeq, ack.AuditRestart, forked = 0, true, true
			}
		}
		acks <- ack
		return nil
	}, acks)
	if ctx.Err() != context.Canceled {
		t.Fatalf("the node's chain was not all shipped: shipped %d, refused %d", shipped, refused)
	}
	t.Logf("shipped=%d refused=%d archives=%d", shipped, refused, archives)
	if badShipped > 0 {
		t.Fatalf("%d acks counted records shipped that the control plane holds otherwise", badShipped)
	}
	if archives != 1 {
		t.Fatalf("%d archives of the control plane's chain, want 1", archives)
	}
	mine, _ := lb.ReadFrom(1, 100)
	held, _ := rep.ReadFrom(1, 100)
	if len(mine) != 35 || len(held) != 35 || held[34].Hash != mine[34].Hash {
		t.Fatalf("the control plane holds %d records, the node %d; want its 35", len(held), len(mine))
	}
	old, err := audit.OpenReplica(dirR+".archived", "n1")
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if got, _ := old.ReadFrom(1, 100); len(got) != 30 || got[29].Hash != recsA[29].Hash {
		t.Fatalf("the archive holds %d records, want the old chain's 30", len(got))
	}
}
