package transport

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/yamux"
)

// The per-peer budget of buffered bytes over yamux. yamux grants each
// stream its whole receive window when it is accepted and has no
// session-wide flow control, so a peer's streams may make the agent buffer
// a window each; and a stream the agent closed (refused, or done) stays in
// yamux, with whatever the peer sent on it, until the peer closes it too or
// for StreamCloseTimeout (a minute). So at each stream it accepts, the
// server sums NumStreams over the peer's live yamux sessions: yamux's own
// count of the streams it holds (accepted, waiting in the accept backlog,
// closed here but not by the peer). Past the budget, in windows, the
// stream is refused as over the stream cap. Refused streams the peer
// leaves open still count, so once a peer reaches the budget all its new
// streams are refused until it closes some or yamux releases them: what
// the peer holds stays bounded. The cost is one loop over the peer's
// sessions (at most maxSessionsPerPeer) per accepted stream, under a
// per-peer lock; nothing per read or write, and no stream is read or kept.
// QUIC connections have their own connection-wide flow control.

// peerBufferWarnEvery is how often at most a refusal over the budget is
// logged as a warning (the others at debug).
const peerBufferWarnEvery = 10 * time.Second

// peerBuffer is the budget's configuration, shared by the servers of a
// PeerStreams.
type peerBuffer struct {
	bytes    int64            // 0: twice the stream cap's windows; < 0: none
	noCap    bool             // the stream cap is off: no default budget
	rejected *metrics.Counter // fogmesh_agent_peer_buffer_rejections_total
	lastWarn atomic.Int64     // unix nanoseconds of the last warning
}

func newPeerBuffer(bytes int, maxStreams int64, set *metrics.Set) peerBuffer {
	return peerBuffer{
		bytes:    int64(bytes),
		noCap:    maxStreams <= 0,
		rejected: set.GetOrCreateCounter(`fogmesh_agent_peer_buffer_rejections_total`),
	}
}

// bufferStreams returns how many streams of window bytes each one peer
// may have held by yamux here (at least one), or 0 for no budget.
func (l *PeerStreams) bufferStreams(window int) int {
	b := l.buf.bytes
	switch {
	case b < 0, b == 0 && l.buf.noCap:
		return 0
	case b == 0: // room for the backlog and lingering closes past the cap
		return int(2 * l.max)
	}
	return max(1, int(b/int64(window)))
}

// peerSessions is one peer's live server-side yamux sessions, each from
// its setup to its end.
type peerSessions struct {
	mu   sync.Mutex
	list []*yamux.Session
}

func (p *peerSessions) add(s *yamux.Session) {
	p.mu.Lock()
	p.list = append(p.list, s)
	p.mu.Unlock()
}

// remove forgets s, keeping no reference to it.
func (p *peerSessions) remove(s *yamux.Session) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, x := range p.list {
		if x == s {
			last := len(p.list) - 1
			p.list[i] = p.list[last]
			p.list[last] = nil
			p.list = p.list[:last]
			return
		}
	}
}

// held returns the streams yamux holds over the peer's sessions.
func (p *peerSessions) held() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.list {
		n += s.NumStreams()
	}
	return n
}

// overBuffer reports (and counts, and logs) whether a stream just
// accepted from pc's peer puts the streams yamux holds for it past the
// budget of limit streams (0: none).
func (s *Server) overBuffer(pc *peerCount, limit int, log *slog.Logger) bool {
	if limit <= 0 {
		return false
	}
	held := pc.yamux.held() // the new stream included
	if held <= limit {
		return false
	}
	b := &s.limit.buf
	b.rejected.Inc()
	level := slog.LevelDebug
	now := time.Now().UnixNano()
	if last := b.lastWarn.Load(); now-last >= int64(peerBufferWarnEvery) && b.lastWarn.CompareAndSwap(last, now) {
		level = slog.LevelWarn
	}
	log.Log(s.ctx, level, "mesh: stream refused over the peer's buffer budget",
		"held", held, "budget", fmt.Sprintf("%d streams of %d bytes", limit, s.cfg.StreamWindow))
	return true
}
