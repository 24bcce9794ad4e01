package transport

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// A stream this server refused (over the cap or the budget, a bad header,
// a source or destination refused, a failed dial) and closed stays in
// yamux until the peer closes it too, or for StreamCloseTimeout, with its
// whole window granted at accept. Unread, what the peer sends on it stays
// in the stream's receive buffer: a peer that fills its refused streams
// and leaves them open made the agent hold a window for each, up to
// bufferCutAt windows (peerbuffer.go). So after the refusal the server
// reads and drops what the peer still sends (drainRefused), and frees the
// stream's buffer (yamux's Shrink), until the stream ends: at the peer's
// FIN or RST, which this agent's client sends as soon as it reads the
// refusal, at StreamCloseTimeout (yamux then lets the stream go), or
// when the session ends.
//
// The drain's reads give the peer back its window (yamux sends a window
// update once half a window is read), so it is bounded in bytes as well:
// a peer may send one window before it hears of the refusal (the window
// granted at accept; the first update follows the refusal on the wire),
// so a peer that sends more has heard it and goes on: its session is cut
// as over the budget (cutOverBuffer). The drain does not just stop
// reading instead: the peer would then fill the window granted, and hold
// it until StreamCloseTimeout, which is what the drain is for.
//
// The drain does not stop at a deadline of its own either: after it the
// stream's window is open again and the peer could fill it. A drain that
// waits costs a goroutine, no buffer (its read into none, in drain), and
// a wake-up every drainWait (refusals; 400 idle drains: 30 ms of CPU a
// second, against 0.2 ms when they waited without a deadline);
// their number is bounded per peer (maxDrainsPerPeer; with a budget, by
// the streams the peer may hold too, bufferCutAt), and each lasts at
// most StreamCloseTimeout. A peer's session ended for
// any cause ends its drains (refusals).

// drainChunk is the size of the buffers drains read into, one per read in
// progress (drainBufs), not one per drain.
const drainChunk = 16 << 10

var drainBufs = sync.Pool{New: func() any { return new([drainChunk]byte) }}

// refusals are the drains of one server-side yamux session's refused
// streams. When the session ends, its drains must leave their reads at
// once: a yamux Read blocked while its session shuts down spins (it
// retries on the closed shutdown channel) until Close reaches its stream,
// and hundreds of them spinning held Close itself back for seconds (a
// minute under the race detector) on every core. So the drains' reads
// are ended, with a read deadline in the past, before the session wakes
// them: by the connection under it (drainsConn) when a read or a write
// on it fails, as it does before yamux ends the session for the peer's
// close or a broken connection; by the server before it closes a session
// itself (Close, DropPeer, cutIfInvalid, cutOverBuffer); and, for the
// ends yamux decides alone (a protocol error, a keepalive timeout), by
// the connection's Close, which yamux calls just after it wakes the
// reads. Its goroutine may lose its core right there, and then waits
// behind the spinning reads for one, for seconds (under -race: 0.6-0.9 s
// of CPU for 400 drains in one such end of forty); so does any other
// goroutine that would end them then (one waiting for the session's end,
// a timer's: tried, 2-4 s). So each drain's read also has a deadline of
// its own, drainWait ahead (drain), past which a spinning read returns
// by itself: the spin lasts drainWait at most, whatever the scheduler
// does. The deadlines of all drains fall on the same instants (multiples
// of drainWait), so that their timers fire together: a third less CPU
// than each its own.
type refusals struct {
	sess *yamux.Session // set before the session's first drain (yamuxServer)
	auth *peerAuth
	pc   *peerCount

	mu       sync.Mutex // guards the following
	draining map[*yamux.Stream]struct{}
	ended    bool // the session ended: no more drains
}

// drainsConn is the connection under a server-side yamux session; a
// read or a write that fails, and Close, end the session's drains first
// (refusals).
type drainsConn struct {
	net.Conn
	drains *refusals
}

func (c *drainsConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.drains.end()
	}
	return n, err
}

func (c *drainsConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil {
		c.drains.end()
	}
	return n, err
}

// testHookDrainsConnClose, if set, runs first in drainsConn.Close.
var testHookDrainsConnClose atomic.Pointer[func()]

func (c *drainsConn) Close() error {
	if h := testHookDrainsConnClose.Load(); h != nil {
		(*h)()
	}
	c.drains.end()
	return c.Conn.Close()
}

// yamuxServer starts the server side of a yamux session over conn, and
// the refusals of its streams (auth's and pc's).
func (s *Server) yamuxServer(conn net.Conn, auth *peerAuth, pc *peerCount) (*yamux.Session, *refusals, error) {
	r := &refusals{auth: auth, pc: pc}
	auth.drains = r
	sess, err := yamux.Server(&drainsConn{conn, r}, yamuxConfig(s.cfg.StreamWindow))
	r.sess = sess // before any drain: the caller starts them
	return sess, r, err
}

// maxDrainsPerPeer bounds the drains of one peer's refused streams over
// its sessions: past it, the session with the most is cut as over the
// buffer budget (cutMostDrains). Without a budget nothing else bounds
// them but StreamCloseTimeout (a goroutine each, and a wake-up every
// drainWait); with one, bufferCutAt does too. A burst of streams of one
// session explains twice yamux's accept backlog (bufferCutAt): the opens
// unanswered, and the refused streams whose close is on its way. This
// allows as many again.
var maxDrainsPerPeer = 4 * yamuxAcceptBacklog

// drainWait bounds each wait of a drain's read (refusals): the longest
// its read spins after an end of the session that yamux decided alone.
const drainWait = 100 * time.Millisecond

// add takes st among the streams being drained; false if the session has
// ended.
func (r *refusals) add(st *yamux.Stream) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended {
		return false
	}
	if r.draining == nil {
		r.draining = make(map[*yamux.Stream]struct{})
	}
	r.draining[st] = struct{}{}
	return true
}

// wait sets st's read deadline drainWait ahead, unless the session has
// ended (false): then end has set it in the past, or will.
func (r *refusals) wait(st *yamux.Stream) bool {
	st.SetReadDeadline(time.Now().Truncate(drainWait).Add(drainWait))
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.ended
}

// count returns the drains, none once the session has ended (they are
// ending).
func (r *refusals) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended {
		return 0
	}
	return len(r.draining)
}

func (r *refusals) done(st *yamux.Stream) {
	r.mu.Lock()
	delete(r.draining, st)
	r.mu.Unlock()
}

// end ends the drains' reads, and starts no more; r may be nil.
func (r *refusals) end() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ended = true
	for st := range r.draining {
		st.SetReadDeadline(pastDeadline)
	}
}

// drainRefused starts the drain of c, a yamux stream that the server
// refused and closed. The server's wait group holds it: Close closes the
// sessions first, which ends it.
func (s *Server) drainRefused(c *streamConn) {
	r := c.refuse
	if r == nil || !r.add(c.Stream) {
		return
	}
	if n := r.pc.yamux.drains.Add(1); n > int64(maxDrainsPerPeer) {
		s.cutMostDrains(r.pc)
	}
	// If r's session was the one cut, its drains (this one included)
	// have ended: this one's ends at its first wait.
	s.wg.Add(1) // the counter is > 0: the caller holds one
	go s.drain(c.Stream, r)
}

// cutMostDrains cuts the session of pc's peer with the most drains if its
// live sessions have more than maxDrainsPerPeer. The peer's count (over
// it, for the caller to be here) also holds the drains of sessions just
// cut until each ends: by it alone, a refusal on another session in that
// moment cut that one too.
func (s *Server) cutMostDrains(pc *peerCount) {
	x, k, n := pc.yamux.takeMostDrains(maxDrainsPerPeer)
	if x.sess == nil { // under the cap once counted, or another refusal's cut took it
		return
	}
	err := fmt.Errorf("%w: left %d of its streams refused here open (this session %d), at most %d refused streams per peer",
		ErrPeerBuffer, n, k, maxDrainsPerPeer)
	s.cutOverBuffer(x, pc, err)
}

// testHookDrainExit, if set, runs in drain once its stream has left its
// session's drains, before the peer's count of drains lets it go.
var testHookDrainExit atomic.Pointer[func()]

// drain reads and drops what the peer sends on st until the stream ends,
// freeing its buffer as it goes, and cuts its session past one window.
func (s *Server) drain(st *yamux.Stream, r *refusals) {
	defer s.wg.Done()
	defer func() {
		if h := testHookDrainExit.Load(); h != nil {
			(*h)()
		}
		r.pc.yamux.drains.Add(-1)
	}()
	defer r.done(st)
	window := s.cfg.StreamWindow
	n := 0
	for {
		// A read into no buffer waits for the stream's next bytes (or its
		// end) without holding one, and takes none of them.
		if !r.wait(st) {
			return
		}
		if _, err := st.Read(nil); errors.Is(err, yamux.ErrTimeout) {
			if r.sess.IsClosed() {
				return
			}
			continue
		} else if err != nil {
			return // the peer's FIN or RST, StreamCloseTimeout, the session's end
		}
		b := drainBufs.Get().(*[drainChunk]byte)
		k, err := st.Read(b[:])
		drainBufs.Put(b)
		st.Shrink()
		n += k
		if n > window {
			s.cutRefusalIgnored(r, n)
			return
		}
		if err != nil {
			return
		}
	}
}

// cutRefusalIgnored cuts r's session, whose peer sent n bytes, more than
// its first window, on a stream this server had refused.
func (s *Server) cutRefusalIgnored(r *refusals, n int) {
	// Taken out as takeHeaviest does, so that no other check counts or
	// cuts it: only the drain (or takeHeaviest) that took it cuts it, once.
	if !r.pc.yamux.remove(r.sess) || r.sess.IsClosed() {
		return
	}
	err := fmt.Errorf("%w: sent %d bytes on a stream refused here, past the window of %d it had before the refusal",
		ErrPeerBuffer, n, s.cfg.StreamWindow)
	s.cutOverBuffer(peerSession{r.sess, r.auth, r}, r.pc, err)
}
