// Package ship sends a node's audit log to the control plane over the sync
// stream (docs/protocol.md, "Audit records"): in order, without gaps, one
// batch at a time, each answered by an auditAck, resuming where the
// control plane's copy ends and restarting from seq 1 when the node's
// chain no longer continues it. The stream itself is the caller's: it
// passes a write function and the channel its acks arrive on.
package ship

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Batch is how many records one audit message carries.
const Batch = 256

// Shipper ships one audit log. Run may be called again for each new
// stream, but not concurrently.
type Shipper struct {
	Log *audit.Log
	// Written is signalled after records are written (audit.Config's
	// OnWrite, into a channel with a buffer of one); Run waits on it when
	// everything is shipped.
	Written <-chan struct{}
	// Logger receives refusals and read errors (nil: discarded).
	Logger *slog.Logger
	// Shipped, if set, is told the last seq the control plane holds, on
	// every ack.
	Shipped func(seq uint64)
	// Refused, if set, is called when the control plane refuses a batch.
	Refused func()
	// Damaged, if set, is told how many records were unreadable on disk
	// (audit.DamageError) and skipped, once the control plane holds the
	// damage marker sent in their place.
	Damaged func(records uint64)
	// AckTimeout is how long an ack may take before the stream is given
	// up (default 30s).
	AckTimeout time.Duration
}

func (s *Shipper) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Shipper) shipped(seq uint64) {
	if s.Shipped != nil {
		s.Shipped(seq)
	}
}

// Run sends the records the control plane does not hold yet (it holds up
// to cpSeq, whose hash is cpHash), one batch at a time, each answered by
// an auditAck on acks; it then waits for new records. It returns nil when
// ctx ends, or an error when the stream should be dropped (a write
// failed, no ack came).
func (s *Shipper) Run(ctx context.Context, cpSeq uint64, cpHash string, write func(*wire.Message) error, acks <-chan *wire.Message) error {
	ackTimeout := s.AckTimeout
	if ackTimeout <= 0 {
		ackTimeout = 30 * time.Second
	}
	// Does this node's chain continue the one the control plane holds? Not
	// when the control plane holds more than the node has, or another
	// record at its last seq: the node's state was reset and its chain
	// started anew. Then ship from seq 1 as a restart; the control plane
	// archives the old chain.
	restart := false
	if cpSeq > 0 {
		last, _ := s.Log.Last()
		if cpSeq > last {
			restart = true
		} else if cpHash != "" {
			got, err := s.Log.ReadFrom(cpSeq, 1)
			restart = err == nil && (len(got) != 1 || got[0].Hash != cpHash)
		}
	}
	if restart {
		s.log().Warn("agent: this node's audit chain does not continue the control plane's (state reset, or restored from a backup?); shipping it as a restart",
			"controlSeq", cpSeq)
		cpSeq = 0
	}
	s.shipped(cpSeq)
	next := cpSeq + 1
	// held is the hash of seq next-1 as the control plane holds it ("" if
	// not known): what a damage marker must chain to.
	held := cpHash
	if cpSeq == 0 {
		held = audit.Genesis
	}
	backoff := time.Second
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	for ctx.Err() == nil {
		recs, err := s.Log.ReadFrom(next, Batch)
		var dmg *audit.DamageError
		if errors.As(err, &dmg) {
			recs, err = s.skipDamage(dmg, held)
		}
		if err != nil {
			s.log().Error("agent: read audit log for shipping", "from", next, "err", err)
			if !wait(backoff) {
				return nil
			}
			backoff = min(2*backoff, 5*time.Minute)
			continue
		}
		if len(recs) == 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-s.Written:
			}
			continue
		}
		batch, err := audit.EncodeBatch(recs)
		if err != nil {
			return fmt.Errorf("send audit: %w", err)
		}
		if err := write(&wire.Message{Type: wire.TypeAudit, Audit: batch, AuditRestart: restart && (recs[0].Seq == 1 || dmg != nil && dmg.From == 1)}); err != nil {
			return fmt.Errorf("send audit: %w", err)
		}
		t := time.NewTimer(ackTimeout)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
			return fmt.Errorf("no auditAck within %s", ackTimeout)
		case m := <-acks:
			t.Stop()
			if sent := recs[len(recs)-1].Seq; m.AuditSeq > sent {
				// An ack past what this stream sent (another stream of
				// this node raced it, or the control plane is wrong) is
				// taken as far as the batch only: believing the rest
				// would skip records never sent here, and the agent
				// prunes its log up to what is shipped. Records the
				// control plane does hold are sent again and skipped
				// there.
				s.log().Warn("agent: auditAck past the last audit record sent; taken as holding the batch only",
					"ackSeq", m.AuditSeq, "sent", sent)
				m = &wire.Message{Type: m.Type, AuditSeq: sent, Error: m.Error}
			}
			if m.AuditSeq != next-1 {
				held = ""
				for i := range recs {
					if recs[i].Seq == m.AuditSeq {
						held = recs[i].Hash
					}
				}
			}
			if dmg != nil && m.AuditSeq >= dmg.To && s.Damaged != nil {
				s.Damaged(dmg.To - dmg.From + 1)
			}
			next = m.AuditSeq + 1
			s.shipped(m.AuditSeq)
			if m.Error == "" {
				restart = false
				backoff = time.Second
				continue
			}
			if s.Refused != nil {
				s.Refused()
			}
			s.log().Error("agent: control plane refused audit records", "from", recs[0].Seq, "to", recs[len(recs)-1].Seq, "err", m.Error)
			if !wait(backoff) {
				return nil
			}
			backoff = min(2*backoff, 5*time.Minute)
		}
	}
	return nil
}

// skipDamage returns the batch that ships past records unreadable on disk:
// a damage marker in their place, chained to held (the hash of the record
// before them the control plane holds, or as read from the files), then
// the records after them. The damage is logged at warning level each time
// it is sent.
func (s *Shipper) skipDamage(d *audit.DamageError, held string) ([]audit.Record, error) {
	prev := held
	if prev == "" {
		prev = d.Prev
	}
	s.log().Warn("agent: audit records unreadable on disk (damaged); shipping a damage marker in their place and the records after them",
		"from", d.From, "to", d.To, "file", d.File, "offset", d.Start, "lines", d.Lines, "bytes", d.Bytes)
	mk, err := s.Log.DamageMarker(d, prev)
	if err != nil {
		return nil, fmt.Errorf("%w (%w)", d, err)
	}
	rest, err := s.Log.ReadFrom(d.To+1, Batch-1)
	if err != nil {
		rest = nil // the marker alone; the next read goes on from there
	}
	return append([]audit.Record{mk}, rest...), nil
}
