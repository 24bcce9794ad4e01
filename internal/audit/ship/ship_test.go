package ship

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// node is a real audit log in a temporary directory with the shipper's
// wake-up channel, as the agent wires them.
type node struct {
	log     *audit.Log
	written chan struct{}
}

func openNode(t *testing.T) *node {
	n := &node{written: make(chan struct{}, 1)}
	l, err := audit.Open(audit.Config{Dir: t.TempDir(), Node: "n1", NoSync: true, OnWrite: func(uint64) {
		select {
		case n.written <- struct{}{}:
		default:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	n.log = l
	return n
}

// add appends count records and waits until they are on disk.
func (n *node) add(t *testing.T, count int) {
	t.Helper()
	for i := 0; i < count; i++ {
		if err := n.log.Append(audit.Record{Kind: audit.KindAuthz, Actor: "spiffe://fogmesh.local/ns/demo/sa/web",
			Action: "connect", Object: "demo/echo", Decision: audit.Deny, Reason: fmt.Sprint("p", i)}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.log.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// stream is the control plane's end: what the shipper wrote, and where
// the test's acks go.
type stream struct {
	sent    chan *wire.Message
	acks    chan *wire.Message
	done    chan error
	cancel  context.CancelFunc
	shipped atomic.Uint64
	refused atomic.Int32
}

func run(t *testing.T, n *node, cpSeq uint64, cpHash string, s *Shipper, writeErr error) *stream {
	st := &stream{sent: make(chan *wire.Message, 16), acks: make(chan *wire.Message, 1), done: make(chan error, 1)}
	if s == nil {
		s = &Shipper{}
	}
	s.Log, s.Written = n.log, n.written
	s.Shipped = st.shipped.Store
	s.Refused = func() { st.refused.Add(1) }
	ctx, cancel := context.WithCancel(context.Background())
	st.cancel = cancel
	go func() {
		st.done <- s.Run(ctx, cpSeq, cpHash, func(m *wire.Message) error {
			if writeErr != nil {
				return writeErr
			}
			st.sent <- m
			return nil
		}, st.acks)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-st.done:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
	return st
}

// batch waits for the next message and returns its records' first and
// last seq and its restart flag.
func (st *stream) batch(t *testing.T) (first, last uint64, restart bool) {
	t.Helper()
	select {
	case m := <-st.sent:
		if m.Type != wire.TypeAudit {
			t.Fatalf("sent %s", m.Type)
		}
		recs, err := audit.DecodeBatch(m.Audit)
		if err != nil || len(recs) == 0 {
			t.Fatalf("batch: %d records, %v", len(recs), err)
		}
		for i := range recs {
			if recs[i].Seq != recs[0].Seq+uint64(i) {
				t.Fatalf("batch has a gap at %d: seq %d", i, recs[i].Seq)
			}
		}
		return recs[0].Seq, recs[len(recs)-1].Seq, m.AuditRestart
	case <-time.After(10 * time.Second):
		t.Fatal("no batch sent")
		return 0, 0, false
	}
}

func (st *stream) ack(seq uint64, errMsg string) {
	st.acks <- &wire.Message{Type: wire.TypeAuditAck, AuditSeq: seq, Error: errMsg}
}

// TestShipInOrder: records go out in batches of at most Batch, each sent
// only after the previous one's ack; once all are shipped, a new record
// is sent as soon as it is written.
func TestShipInOrder(t *testing.T) {
	n := openNode(t)
	n.add(t, Batch+44)
	st := run(t, n, 0, "", nil, nil)
	if f, l, r := st.batch(t); f != 1 || l != Batch || r {
		t.Fatalf("first batch %d..%d restart %v", f, l, r)
	}
	select {
	case m := <-st.sent:
		t.Fatalf("a second batch before the first ack: %+v", m)
	default:
	}
	st.ack(Batch, "")
	if f, l, _ := st.batch(t); f != Batch+1 || l != Batch+44 {
		t.Fatalf("second batch %d..%d", f, l)
	}
	st.ack(Batch+44, "")
	n.add(t, 1)
	if f, l, _ := st.batch(t); f != Batch+45 || l != Batch+45 {
		t.Fatalf("new record's batch %d..%d", f, l)
	}
	if got := st.shipped.Load(); got != Batch+44 {
		t.Fatalf("shipped %d", got)
	}
}

// TestShipResumesOrRestarts: shipping resumes after the control plane's
// last record when its hash matches; when it does not, or the control
// plane holds more than the node has, the node's chain is shipped from
// seq 1 as a restart.
func TestShipResumesOrRestarts(t *testing.T) {
	n := openNode(t)
	n.add(t, 10)
	recs, err := n.log.ReadFrom(4, 1)
	if err != nil || len(recs) != 1 {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name        string
		cpSeq       uint64
		cpHash      string
		first       uint64
		wantRestart bool
	}{
		{"same chain", 4, recs[0].Hash, 5, false},
		{"same seq, other record", 4, strings.Repeat("0", 64), 1, true},
		{"control plane holds more", 20, "", 1, true},
	} {
		st := run(t, n, c.cpSeq, c.cpHash, nil, nil)
		f, _, r := st.batch(t)
		st.cancel()
		if f != c.first || r != c.wantRestart {
			t.Errorf("%s: first batch starts at %d restart %v, want %d %v", c.name, f, r, c.first, c.wantRestart)
		}
	}
}

// TestShipRefusedIsRetried: a refused batch is counted and sent again,
// from after the seq the control plane says it holds, after a pause.
func TestShipRefusedIsRetried(t *testing.T) {
	n := openNode(t)
	n.add(t, 5)
	st := run(t, n, 0, "", nil, nil)
	st.batch(t)
	st.ack(2, "bad hash at 3")
	if f, l, _ := st.batch(t); f != 3 || l != 5 {
		t.Fatalf("retried batch %d..%d, want 3..5", f, l)
	}
	if st.refused.Load() != 1 || st.shipped.Load() != 2 {
		t.Fatalf("refused %d, shipped %d", st.refused.Load(), st.shipped.Load())
	}
}

// TestShipDropsStream: a write error or a missing ack ends Run with an
// error, so the caller drops the stream.
func TestShipDropsStream(t *testing.T) {
	n := openNode(t)
	n.add(t, 1)
	broken := errors.New("stream broken")
	st := run(t, n, 0, "", nil, broken)
	if err := <-st.done; !errors.Is(err, broken) {
		t.Fatalf("write error: Run returned %v", err)
	}
	st.done <- nil // for the cleanup

	st = run(t, n, 0, "", &Shipper{AckTimeout: 50 * time.Millisecond}, nil)
	st.batch(t)
	select {
	case err := <-st.done:
		if err == nil || !strings.Contains(err.Error(), "no auditAck") {
			t.Fatalf("no ack: Run returned %v", err)
		}
		st.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("Run kept waiting for an ack past AckTimeout")
	}
}

// TestShipSkipsDamagedRecords: records damaged on disk in the middle of
// the log (seq 4 and 5 of 10) must not stop shipping: the shipper sends
// the records before them, then a damage marker in their place (the node's
// record, at seq 5, chained to seq 3, naming seq 4..5 and the bytes
// skipped) followed by seq 6 on.
func TestShipSkipsDamagedRecords(t *testing.T) {
	n := openNode(t)
	n.add(t, 10)
	files, err := n.log.Files()
	if err != nil {
		t.Fatal(err)
	}
	damageLines(t, files[len(files)-1], 4, 5)
	third, err := n.log.ReadFrom(3, 1)
	if err != nil || len(third) != 1 {
		t.Fatalf("read seq 3: %v", err)
	}
	st := run(t, n, 0, "", nil, nil)
	if f, l, _ := st.batch(t); f != 1 || l != 3 {
		t.Fatalf("first batch %d..%d, want 1..3", f, l)
	}
	st.ack(3, "")
	var m *wire.Message
	select {
	case m = <-st.sent:
	case <-time.After(10 * time.Second):
		t.Fatal("shipping stopped at the damaged records")
	}
	recs, err := audit.DecodeBatch(m.Audit)
	if err != nil || len(recs) != 6 {
		t.Fatalf("batch after the damage: %d records, %v; want the marker and seq 6..10", len(recs), err)
	}
	mk := recs[0]
	if mk.Seq != 5 || mk.Kind != audit.KindAudit || mk.Action != "damaged" || mk.Object != "seq 4..5" ||
		mk.Prev != third[0].Hash || !strings.Contains(mk.Reason, "bytes") || recs[1].Seq != 6 || recs[5].Seq != 10 {
		t.Fatalf("marker %+v, then seq %d..%d", mk, recs[1].Seq, recs[5].Seq)
	}
	if h, err := mk.ComputeHash(); err != nil || h != mk.Hash {
		t.Fatalf("marker hash %s, want %s (%v)", mk.Hash, h, err)
	}
}

// damageLines overwrites lines from..to (1-based) of path in place with
// '#' bytes, keeping their newlines.
func damageLines(t *testing.T, path string, from, to int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	line := 1
	for i := range b {
		if b[i] == '\n' {
			line++
		} else if line >= from && line <= to {
			b[i] = '#'
		}
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
