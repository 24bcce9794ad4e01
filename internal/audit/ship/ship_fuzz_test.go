package ship

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// FuzzAcks: whatever the control plane answers (the seq it says it holds
// after each batch, or a refusal), the shipper sends each batch from the
// seq after the one last acknowledged, as a run of consecutive records,
// and never takes the control plane to hold a record it was not sent: the
// agent prunes its log up to what is shipped, so believing an ack past
// the batch would delete records the control plane never had.
func FuzzAcks(f *testing.F) {
	const total = 2*Batch + 40
	dir := f.TempDir()
	l, err := audit.Open(audit.Config{Dir: dir, Node: "n1", NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	for i := range total {
		l.Append(audit.Record{Kind: audit.KindAuthz, Action: "connect", Object: "demo/echo", Decision: audit.Deny, Reason: string(rune('a' + i%26))})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Flush(ctx); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { l.Close() })
	recs, _ := l.ReadFrom(1, total)
	last, _ := l.Last()
	hashOf := func(seq uint16) string {
		if seq >= 1 && int(seq) <= len(recs) {
			return recs[seq-1].Hash
		}
		return "x"
	}
	// acks: 3 bytes each: what to answer (0: the batch's last seq, 1: the
	// seq given, 2: that many past the batch, 3: a refusal holding the seq
	// given) and a seq.
	f.Add(uint16(0), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add(uint16(10), []byte{0, 0, 0, 1, 0, 5, 0, 0, 0})
	f.Add(uint16(Batch), []byte{2, 0, 1, 0, 0, 0})
	f.Add(uint16(0), []byte{1, 0x01, 0x40, 0, 0, 0})
	f.Add(uint16(total+5), []byte{0, 0, 0, 3, 0, 0})
	f.Add(uint16(3), []byte{1, 0, 0, 0, 0, 0, 2, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, cpSeq uint16, acks []byte) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		written := make(chan struct{})
		go func() { // all shipped: Run waits for records; end it
			select {
			case written <- struct{}{}:
				cancel()
			case <-ctx.Done():
			}
		}()
		ackc := make(chan *wire.Message, 1)
		var sent, acked uint64 // the highest seq sent; the seq last acknowledged
		first := true
		s := &Shipper{Log: l, Written: written, AckTimeout: time.Minute, Shipped: func(seq uint64) {
			if first {
				first = false
				if seq > last {
					t.Fatalf("shipping starts past the log's end: %d > %d", seq, last)
				}
			} else if seq > sent {
				t.Fatalf("took the control plane to hold seq %d, but sent it only up to %d", seq, sent)
			}
			acked = seq
		}}
		err := s.Run(ctx, uint64(cpSeq), hashOf(cpSeq), func(m *wire.Message) error {
			batch, err := audit.DecodeBatch(m.Audit)
			if err != nil || len(batch) == 0 {
				t.Fatalf("batch %v", err)
			}
			for i, r := range batch {
				if r.Seq != acked+1+uint64(i) {
					t.Fatalf("batch record %d is seq %d; the control plane holds up to %d", i, r.Seq, acked)
				}
			}
			sent = max(sent, batch[len(batch)-1].Seq)
			if len(acks) < 3 {
				cancel()
				return nil
			}
			kind, v := acks[0]%4, uint64(binary.BigEndian.Uint16(acks[1:3]))
			acks = acks[3:]
			ack := &wire.Message{Type: wire.TypeAuditAck, AuditSeq: batch[len(batch)-1].Seq}
			switch kind {
			case 1:
				ack.AuditSeq = v
			case 2:
				ack.AuditSeq += v
			case 3:
				ack.AuditSeq, ack.Error = min(v, ack.AuditSeq), "audit: refused"
				cancel() // Run backs off a second before it resends
			}
			ackc <- ack
			return nil
		}, ackc)
		_ = err
	})
}
