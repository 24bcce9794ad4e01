package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/yamux"
)

// The per-peer budget of bytes buffered in yamux streams. yamux (v0.1.2)
// has no flow control over a session's streams together: each stream it
// holds may buffer its whole window (ServerConfig.StreamWindow) ahead of
// the relay that reads it, granted in full when the stream is accepted,
// and it holds a stream until both ends have closed it, or until
// StreamCloseTimeout (a minute) after we closed ours if the peer never
// does, so streams refused or done here stay in it after the stream cap
// let go of them. One peer could thus make the agent hold streams × window
// bytes: 1 GiB at the defaults (1,024 × 1 MiB), 16 GiB at the largest
// window, and more through refused streams it leaves open (each holds a
// window for a minute, as many as it opens).
//
// A held stream's window can be neither withheld nor shrunk from outside
// yamux, so the budget counts windows, not the bytes in them: the streams
// of the peer's that the server accepted and yamux still holds (peerHeld:
// those being served, and those closed here that the peer has not closed
// yet) times the stream window. Streams not accepted yet are not counted:
// yamux's backlog holds at most 256 a session, with its initial window of
// 256 KiB each, and resets those past it. A stream that takes the peer
// past the budget is refused with the stream cap's status (the peer closes
// a refused stream, which frees it, and tries another endpoint). While the
// peer holds more than 9/8 of the budget (it keeps refused or ended
// streams open, which no agent does, or many refusals have not reached it
// yet) its session takes no more streams: they wait in the backlog until
// held streams end, those the peer leaves open StreamCloseTimeout after we
// closed ours. So a peer's streams hold at most 9/8 of the budget in the
// agent, plus that backlog. Each stream costs an atomic add at its accept
// and a lock at its close; reads and writes cost nothing more. QUIC
// connections have flow control of their own (quicMaxConnWindow each).

// DefaultPeerBuffer is the default budget of one peer's stream windows:
// 256 streams at DefaultStreamWindow, 1,024 at MinStreamWindow.
const DefaultPeerBuffer = 256 << 20

// bufferPoll is the longest a session's accept loop waits, held past its
// peer's budget, between two looks at the streams yamux holds (it has no
// event for a stream it lets go).
const bufferPoll = 100 * time.Millisecond

// bufferWarnEvery is the least time between two warnings that a peer is
// at its budget (a peer may hit it with every stream it opens).
const bufferWarnEvery = 10 * time.Second

// peerBuffer is PeerStreams' budget and its counters.
type peerBuffer struct {
	bytes   int              // the budget; <= 0: none
	refused *metrics.Counter // fogmesh_agent_peer_buffer_rejections_total
	pauses  *metrics.Counter // fogmesh_agent_peer_buffer_pauses_total
	warned  atomic.Int64     // when a refusal was last logged, Unix ns
}

func newPeerBuffer(bytes int, set *metrics.Set) peerBuffer {
	if bytes == 0 {
		bytes = DefaultPeerBuffer
	}
	return peerBuffer{
		bytes:   bytes,
		refused: set.GetOrCreateCounter(`fogmesh_agent_peer_buffer_rejections_total`),
		pauses:  set.GetOrCreateCounter(`fogmesh_agent_peer_buffer_pauses_total`),
	}
}

// warnDue reports whether a refusal should be logged now (at most one per
// bufferWarnEvery).
func (b *peerBuffer) warnDue() bool {
	now := time.Now().UnixNano()
	last := b.warned.Load()
	return now-last >= int64(bufferWarnEvery) && b.warned.CompareAndSwap(last, now)
}

// peerHeld counts one peer's yamux streams that the server accepted and
// yamux still holds.
type peerHeld struct {
	open atomic.Int64 // accepted and not closed here

	mu      sync.Mutex      // guards the following
	gone    []*yamux.Stream // closed here; yamux may still hold them
	pruneAt int             // len(gone) at which closed prunes it
}

// accept counts sc, just accepted, until its Close.
func (h *peerHeld) accept(sc *streamConn) {
	h.open.Add(1)
	sc.held = h
}

// closed moves st, just closed here (its read deadline past), to the
// streams yamux may still hold. They are pruned when they have doubled
// since the last time, so each close costs O(1) on average.
func (h *peerHeld) closed(st *yamux.Stream) {
	h.open.Add(-1)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gone = append(h.gone, st)
	if len(h.gone) >= h.pruneAt {
		h.pruneLocked()
	}
}

// count returns the streams held, exactly (pruned first) when they are
// more than limit.
func (h *peerHeld) count(limit int) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := int(h.open.Load()) + len(h.gone)
	if n > limit {
		h.pruneLocked()
		n = int(h.open.Load()) + len(h.gone)
	}
	return n
}

func (h *peerHeld) pruneLocked() {
	var scratch [16 << 10]byte
	keep := h.gone[:0]
	for _, st := range h.gone {
		if lingers(st, scratch[:]) {
			keep = append(keep, st)
		}
	}
	clear(h.gone[len(keep):])
	h.gone = keep
	h.pruneAt = max(64, 2*len(keep))
}

// lingers reports whether yamux still holds st, a stream closed here
// (whose read deadline is past, so reads return at once). yamux has no
// call for that, but a read tells: EOF or a reset once yamux let it go
// (both ends closed it, the peer reset it, StreamCloseTimeout, the session
// ended), a timeout while it lingers. Bytes still buffered are read and
// dropped (nobody reads a closed stream), freeing them: at most a few
// windows' worth, as the peer may refill what the reads free.
func lingers(st *yamux.Stream, scratch []byte) bool {
	for range 64 {
		_, err := st.Read(scratch)
		switch {
		case err == nil:
		case errors.Is(err, yamux.ErrTimeout):
			return true
		default:
			return false
		}
	}
	return true
}

// bufferLimit returns how many streams pc's peer may have held at this
// server's window: 0 without a budget.
func (s *Server) bufferLimit() int {
	if b := s.limit.buf.bytes; b > 0 {
		return max(1, b/s.cfg.StreamWindow)
	}
	return 0
}

// admitBuffered checks the budget of pc's peer for sc, a stream just
// accepted with a place of pc's: false if sc was refused (its place given
// back) because the peer's streams hold more windows than its budget.
func (s *Server) admitBuffered(sc *streamConn, pc *peerCount, log *slog.Logger) bool {
	limit := s.bufferLimit()
	if limit == 0 {
		return true
	}
	held := pc.held.count(limit)
	if held <= limit {
		return true
	}
	s.limit.release(pc)
	b := &s.limit.buf
	b.refused.Inc()
	if b.warnDue() {
		log.Warn("mesh: peer at its buffer budget; its new streams are refused", "streams", held,
			"window", s.cfg.StreamWindow, "budget", b.bytes)
	}
	s.refuseBusy(sc, fmt.Sprintf("%v: %d stream windows fill its buffer budget of %d bytes", errPeerStreams, limit, b.bytes))
	return false
}

// waitBuffered holds the accept loop of sess, a session of pc's peer,
// while the peer holds more than 9/8 of its budget: it keeps open streams
// it was refused or that ended (a peer closes those), or it opened
// more streams at once than were refused yet. yamux then leaves the
// peer's new streams in its backlog (256, then it resets them) until
// streams end; those a peer leaves open end StreamCloseTimeout after we
// closed ours. It returns when ctx is done or sess closed too.
func (s *Server) waitBuffered(ctx context.Context, sess *yamux.Session, pc *peerCount, log *slog.Logger) {
	limit := s.bufferLimit()
	over := limit + limit/8
	if limit == 0 || pc.held.count(over) <= over {
		return
	}
	b := &s.limit.buf
	b.pauses.Inc()
	if b.warnDue() {
		log.Warn("mesh: peer holds streams past its buffer budget; taking no more of its streams until some end",
			"streams", pc.held.count(over), "window", s.cfg.StreamWindow, "budget", b.bytes)
	}
	t := time.NewTimer(time.Millisecond)
	defer t.Stop()
	for d := time.Millisecond; pc.held.count(over) > over; d = min(2*d, bufferPoll) {
		t.Reset(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		case <-sess.CloseChan():
			return
		}
	}
}
