package transport

import (
	"cmp"
	"fmt"
	"log/slog"
	"math"
	"slices"
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
// yamux, with its window granted and whatever the peer sent on it, until
// the peer closes it too or for StreamCloseTimeout (a minute).
//
// So at each stream it accepts, the server checks two counts of the
// peer's streams over its live yamux sessions (peerSessions):
//   - served, the streams being served (an atomic count from accept to
//     end): at the budget in windows, the stream is refused as over the
//     stream cap. Not yamux's count, which includes the accept backlog: a
//     burst of streams would then all be refused.
//   - held, yamux's own count (the sum of NumStreams: accepted, in the
//     accept backlog, closed here but not by the peer): past the budget
//     and what a burst explains (bufferCutAt), the peer leaves its refused
//     or ended streams open, which this agent's client never does, and
//     the sessions holding the most streams are cut, as many as bring the
//     peer back within the bound, which frees all of their streams.
//     Refusing alone would not bound them: each refused stream lingers
//     too. Not the session of the new stream: with several sessions, the
//     one that left its streams open may not be the one that opens next,
//     and one whose streams are being served would be cut for another's.
//
// What the peer sends on a stream held here but not served is bounded
// apart (drain.go): every stream yamux holds was granted its whole window
// (Accept grants it before the server can decide), and a peer that filled
// the refused streams it left open held up to bufferCutAt windows, not the
// budget's (measured: 263 MiB of heap for 520 refused streams of 256 KiB
// against a budget of 4 MiB). Now the server reads and drops what comes on
// a stream it refused until the stream ends, and cuts the session of a
// peer that sends past the window it had before the refusal: those streams
// hold no buffer but what arrived since their drain's last read (the same
// measure: 3 MiB), and cost a goroutine each while the peer keeps them
// open. Not drained: a stream that was served and ended here (a local
// error) while the peer's side is open, which may still hold a window,
// within bufferCutAt; the peer's client may rightly still be sending. Streams in the
// backlog of a session whose accept loop waits (maxOpening streams
// without a header, or a refusal's write to a peer that does not read)
// are only seen at the next stream some session of the peer accepts.
//
// The cost is two atomic adds per stream and, per accepted stream, one
// loop over the peer's sessions (at most maxSessionsPerPeer) under a
// per-peer lock (BenchmarkPeerBufferCheck: about 50 ns with one session,
// 1 µs with 64, no allocation); nothing per read or write, no served
// stream is read, and no session is kept past its end. NumStreams takes the
// session's stream lock, which yamux holds while it sends a reset for a
// stream past a full backlog (up to connWriteTimeout if the peer does not
// read): only that peer's own accept loops wait. QUIC connections have
// their own connection-wide flow control.

// peerBufferWarnEvery is how often at most a refusal over the budget is
// logged as a warning (the others at debug), over all peers, and a cut
// over it reported, per peer (cutreport.go).
const peerBufferWarnEvery = 10 * time.Second

// peerBuffer is the budget's configuration, shared by the servers of a
// PeerStreams.
type peerBuffer struct {
	bytes    int64            // 0: twice the stream cap's windows; < 0: none
	noCap    bool             // the stream cap is off: no default budget
	rejected *metrics.Counter // fogmesh_agent_peer_buffer_rejections_total
	cuts     *metrics.Counter // fogmesh_agent_peer_buffer_session_cuts_total
	lastWarn atomic.Int64     // unix nanoseconds of the last warning
}

func newPeerBuffer(bytes int, maxStreams int64, set *metrics.Set) peerBuffer {
	return peerBuffer{
		bytes:    int64(bytes),
		noCap:    maxStreams <= 0,
		rejected: set.GetOrCreateCounter(`fogmesh_agent_peer_buffer_rejections_total`),
		cuts:     set.GetOrCreateCounter(`fogmesh_agent_peer_buffer_session_cuts_total`),
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
		return int(min(l.max, math.MaxInt/2) * 2) // saturated: a wrap would be no budget
	}
	return max(1, int(b/int64(window)))
}

// peerSessions is one peer's live server-side yamux sessions, each from
// its setup to its end, or to its cut over the budget.
type peerSessions struct {
	served atomic.Int64 // its yamux streams being served (serveConn)
	drains atomic.Int64 // its refused streams being drained (drain.go)

	mu   sync.Mutex // guards list
	list []peerSession
}

// peerSession is a yamux session, what its handshake authenticated, and
// the drains of its refused streams (drain.go; nil in tests).
type peerSession struct {
	sess   *yamux.Session
	auth   *peerAuth
	drains *refusals
}

func (p *peerSessions) add(s *yamux.Session, auth *peerAuth, drains *refusals) {
	p.mu.Lock()
	p.list = append(p.list, peerSession{s, auth, drains})
	p.mu.Unlock()
}

// remove forgets s, keeping no reference to it.
// remove takes s out of the list, and reports whether it was in it: of
// the cuts that remove the session they cut, only the one that did cuts.
func (p *peerSessions) remove(s *yamux.Session) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.removeLocked(s)
}

func (p *peerSessions) removeLocked(s *yamux.Session) bool {
	for i, x := range p.list {
		if x.sess == s {
			last := len(p.list) - 1
			p.list[i] = p.list[last]
			p.list[last] = peerSession{}
			p.list = p.list[:last]
			return true
		}
	}
	return false
}

// serve takes a place among the peer's served streams, or reports false
// (none taken) when limit (> 0) are taken. The add comes before the test:
// sessions of the peer accepting at once would all pass a test made
// before any of them added. unserve gives the place back.
func (p *peerSessions) serve(limit int) bool {
	if n := p.served.Add(1); limit > 0 && n > int64(limit) {
		p.served.Add(-1)
		return false
	}
	return true
}

func (p *peerSessions) unserve() { p.served.Add(-1) }

// held returns the streams yamux holds over the peer's live sessions. A
// closed session is skipped: yamux still counts its streams, freed, and it
// stays in the list until its serveConn returns.
func (p *peerSessions) held() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.list {
		if !s.sess.IsClosed() {
			n += s.sess.NumStreams()
		}
	}
	return n
}

// takeHeaviest takes out of the list, for the caller to cut, the live
// sessions holding the most streams, as many as bring the streams held
// to bound or fewer (none if they are already), and returns them with
// the streams held before. Of sessions holding as many, cur (the
// session of the stream just accepted) is taken last. Taken out of the
// list under its lock: sessions of the peer checking at once cut a
// session once, and do not count those another cuts.
func (p *peerSessions) takeHeaviest(bound int, cur *yamux.Session) (take []peerSession, held int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	type counted struct {
		peerSession
		n int
	}
	live := make([]counted, 0, len(p.list))
	for _, s := range p.list {
		if !s.sess.IsClosed() {
			n := s.sess.NumStreams()
			live = append(live, counted{s, n})
			held += n
		}
	}
	slices.SortFunc(live, func(a, b counted) int {
		if c := cmp.Compare(b.n, a.n); c != 0 {
			return c
		}
		return cmp.Compare(boolInt(a.sess == cur), boolInt(b.sess == cur))
	})
	left := held
	for _, s := range live {
		if left <= bound {
			break
		}
		take = append(take, s.peerSession)
		left -= s.n
		p.removeLocked(s.sess)
	}
	return take, held
}

// takeMostDrains takes out of the list, for the caller to cut, the live
// session with the most drains (drain.go), if the live sessions have more
// than bound in all, and returns it with its drains and the total; none
// (a zero peerSession) if they have no more than bound.
func (p *peerSessions) takeMostDrains(bound int) (x peerSession, k, total int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.list {
		if s.drains == nil || s.sess.IsClosed() {
			continue
		}
		n := s.drains.count()
		total += n
		if n > k {
			x, k = s, n
		}
	}
	if total <= bound {
		return peerSession{}, 0, total
	}
	p.removeLocked(x.sess)
	return x, k, total
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// What overBuffer decides for a stream just accepted.
const (
	bufferOK     = iota
	bufferRefuse // refuse the stream as over the stream cap
	bufferCut    // close the stream's session
)

// bufferCutAt is how many streams yamux may hold for one peer, with a
// budget of limit, before the session of its next stream is cut. A
// refused stream stays in yamux (with its whole window granted) until the
// peer closes it, which this agent's client does as soon as it reads the
// refusal; but a burst of streams holds more than that for a while: the
// session's accept backlog (up to AcceptBacklog streams not yet taken,
// which is also how many opens a yamux client may have unanswered) and
// the refused ones whose close is on its way (as many again). A peer past
// that leaves its refused streams open. The allowance is per peer, not
// per session: with many sessions a peer would hold that many times more.
func bufferCutAt(limit int) int {
	extra := max(limit/4, 16) + 2*yamuxAcceptBacklog
	if limit > math.MaxInt-extra { // saturated: a wrap would cut at every stream
		return math.MaxInt
	}
	return limit + extra
}

// yamuxAcceptBacklog is yamuxConfig's AcceptBacklog (yamux's default).
var yamuxAcceptBacklog = yamux.DefaultConfig().AcceptBacklog

// overBuffer decides (and counts, and logs) what to do with a stream just
// accepted on sess from pc's peer, with a budget of limit streams (0:
// none): if yamux holds more than bufferCutAt for the peer (the served
// ones, the backlog, and the closed ones the peer keeps open), cut the
// peer's sessions holding the most (cutHeaviest), and the stream with
// them if sess is one; else refuse it if the peer has limit yamux streams
// being served (an
// exact count: streams in yamux's accept backlog must not count, or a
// burst of streams would all be refused). bufferOK takes the stream's
// place among the served (pc.yamux.serve), which the caller gives back
// (unserve) when the stream ends or is not served after all.
func (s *Server) overBuffer(sess *yamux.Session, pa *peerAuth, pc *peerCount, limit int, log *slog.Logger) int {
	if limit <= 0 {
		pc.yamux.serve(0)
		return bufferOK
	}
	held := pc.yamux.held() // the new stream included
	if held > bufferCutAt(limit) && s.cutHeaviest(sess, pc, limit) {
		return bufferCut
	}
	if pc.yamux.serve(limit) {
		return bufferOK
	}
	b := &s.limit.buf
	b.rejected.Inc()
	level := slog.LevelDebug
	now := time.Now().UnixNano()
	if last := b.lastWarn.Load(); now-last >= int64(peerBufferWarnEvery) && b.lastWarn.CompareAndSwap(last, now) {
		level = slog.LevelWarn
	}
	log.Log(s.ctx, level, "mesh: stream refused over the peer's buffer budget", "served", pc.yamux.served.Load(), "held", held,
		"budget", fmt.Sprintf("%d streams of %d bytes", limit, s.cfg.StreamWindow))
	return bufferRefuse
}

// refuseOverLimit refuses stream c of pc's peer, over its buffer budget
// of limit streams if v (overBuffer's verdict) is bufferRefuse, else over
// the stream cap (giving back the place overBuffer took). Each says which:
// the source agent logs it, and the operator raises that setting.
func (s *Server) refuseOverLimit(c meshStream, pc *peerCount, v, limit int) {
	if v == bufferOK {
		pc.yamux.unserve()
		s.refuseOverCap(c, s.limit.msg)
		return
	}
	s.refuseOverCap(c, fmt.Sprintf("%v: at most %d being served at once, its buffer budget (meshPeerBuffer: %d streams of %d bytes)",
		errPeerStreams, limit, limit, s.cfg.StreamWindow))
}

// cutHeaviest cuts pc's sessions holding the most streams, as many as
// bring the peer back to bufferCutAt(limit) streams held, and reports
// whether sess (the session of the stream just accepted) is one of them.
// None is cut if another session's check cut enough first.
func (s *Server) cutHeaviest(sess *yamux.Session, pc *peerCount, limit int) bool {
	take, held := pc.yamux.takeHeaviest(bufferCutAt(limit), sess)
	cut := false
	for _, x := range take {
		err := fmt.Errorf("%w: yamux holds %d of its streams (this session %d), at most %d with a budget of %d streams of %d bytes",
			ErrPeerBuffer, held, x.sess.NumStreams(), bufferCutAt(limit), limit, s.cfg.StreamWindow)
		s.cutOverBuffer(x, pc, err)
		cut = cut || x.sess == sess
	}
	return cut
}

// cutOverBuffer closes x's session, whose peer (pc's) has held streams in yamux
// here, past bufferCutAt, or ignored a refusal (drain.go), as err (which
// wraps ErrPeerBuffer) says, and reports the cut as every mesh cut is
// reported (reportCut: logged with the peer's identity and address,
// counted with reason CutBuffer, audited by the agent through OnCut),
// unless the session was cut for another cause first. Its streams fail
// with err.
//
// A peer cut here may connect and be cut again at once, tens of times a
// second: so each peer's cuts are reported at most once every
// peerBufferWarnEvery (s.cuts, cutreport.go; the others are counted, and
// logged at debug), and the next report, or a late one at the window's
// end, says how many were not.
func (s *Server) cutOverBuffer(x peerSession, pc *peerCount, err error) {
	sess, pa := x.sess, x.auth
	x.drains.end() // before Close: its drains would spin in their reads until it reached them
	b := &s.limit.buf
	b.cuts.Inc()
	n := sess.NumStreams()
	log := s.log.With("peer", sess.RemoteAddr().String())
	c := Cut{Dir: "in", Peer: pa.id, Reason: CutBuffer, Err: err, Streams: n}
	if pa.cause != nil && !pa.setCause(err) { // nil: insecure mode, no identity
		sess.Close()
		return
	}
	s.m.cut(c.Reason)
	if r, now := s.cuts.cut(pc.key, c, log, time.Now()); now {
		sayCut(log, s.cfg.OnCut, r) // first: the cut is on record before the peer sees it
	} else {
		log.Debug("mesh: session cut", "dir", c.Dir, "peerId", c.Peer.String(), "reason", c.Reason, "streams", c.Streams, "err", err)
	}
	sess.Close()
}
