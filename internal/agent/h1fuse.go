package agent

import (
	"bufio"
	"net"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// fuseRecheck bounds the wait of a read that wrote the last response
// (h1Wire.Read), to between it and twice it (h1Wire.next keeps the
// deadline it set while it is that far): past it the client's socket is
// read whatever the poller said. Bytes the client sent before that read began, not in answer to the
// response (a pipelined request, the FIN of a client that half-closed its
// side after its request), raised their readiness before the read cleared
// it (httpproxy.RawIO.WriteRead): without a read they would wait until the
// client sent more, up to the idle timeout. A client slower than this
// would cost a timer's wake besides the read that finds the socket empty,
// which the fusion saves on a busy connection: a response that comes more
// than this after the one before, or after one that came more than this
// after its own (a paced client's one early request), is written at once,
// not held (next).
const fuseRecheck = 5 * time.Millisecond

// pipelinedUnfused is how many responses of a client seen pipelining
// (h1Wire.unfused) are written at once before one is held again.
const pipelinedUnfused = 256

// fuseRecheckedHook, if set (tests), is called when a fused read's wait
// ran out at fuseRecheck.
var fuseRecheckedHook atomic.Pointer[func()]

// h1Wire is the client connection as the fast path's bufio reader and
// writer use it. It holds the last response of a kept connection that fit
// the writer (hold), and writes it inside the read of the next request
// (RawIO.WriteRead: no read at once after the write, which finds the
// socket empty before the client answered), unless the client's next
// request is buffered already (next). A held response is written before
// anything waits: the next read is the first thing the serving loop does.
type h1Wire struct {
	tc  *taggedConn
	c   net.Conn
	raw *httpproxy.RawIO // nil: no fusion, reads go to c
	// held is the last response, in bw's buffer (nothing writes to bw
	// before it is sent); holding: Write keeps what bw flushes.
	held    []byte
	holding bool
	// wrote: Write wrote to the client (not held) since forward cleared it
	// (the round trip's response came).
	wrote bool
	// until is the next request's read deadline (the idle timeout) while
	// the fused read's own is fuseRecheck's. rechecking: that one is
	// still set after the read that brought bytes; until is set again
	// only if the request's first bytes need another read (Read). Once
	// they are in, what reads the client next sets its own deadline
	// first (the head's, a body's, a watch's, the next request's):
	// headStarted drops it unset, one deadline set per request, not two.
	until      time.Time
	rechecking bool
	// dl is the fused read's deadline next set last; kept: nothing set
	// another since (moved), so a busy connection's next response keeps
	// it while it is at least fuseRecheck away: set about once per
	// fuseRecheck (a runtime timer's move), not once per request, and the
	// fused read's wait is bounded by fuseRecheck to twice that.
	dl   time.Time
	kept bool
	// unfused: the client sent a request before the last response; it
	// may again, and would then wait for fuseRecheck: so many responses
	// are written at once, not held (pipelinedUnfused, then the client is
	// looked at again: a recheck that runs late on a loaded machine can
	// find a request that came after the deadline there at once, as if it
	// was sent unasked; permanent, it left most connections of a busy
	// benchmark unfused for good).
	unfused int
	// last is when the previous response was readied, or the connection's
	// first request read (next), gap how long after the one before it.
	last time.Time
	gap  time.Duration
}

func (w *h1Wire) Write(p []byte) (int, error) {
	if w.holding {
		w.held = p
		return len(p), nil
	}
	n, err := w.tc.Write(p) // bounded (taggedConn.Write)
	w.wrote = true          // after the write: a panic in it sent nothing known (endConn)
	return n, err
}

// flush sends bw's bytes, or holds them for the next read if the
// connection is kept and that read can write them (hold).
func (w *h1Wire) flush(bw *bufio.Writer, hold bool) error {
	if !hold || w.raw == nil || w.unfused > 0 {
		if hold && w.unfused > 0 {
			w.unfused--
		}
		return bw.Flush()
	}
	w.holding = true
	err := bw.Flush()
	w.holding = false
	return err
}

// next readies the read of the next request, due by until (now: the
// monotonic clock's reading): a held response is sent now if the request
// is buffered already (no read, and no wait, follows), else left to the
// read. false: the write failed.
func (w *h1Wire) next(br *bufio.Reader, now, until time.Time) bool {
	if w.held == nil {
		w.c.SetReadDeadline(until)
		w.rechecking, w.kept = false, false
		w.last = now // the first request's too: a connection's first held responses fuse
		return true
	}
	prev, gap := w.gap, now.Sub(w.last)
	w.last, w.gap = now, gap
	if br.Buffered() > 0 {
		w.unfused = pipelinedUnfused
		return w.sendHeld(until) == nil
	}
	if gap > fuseRecheck || prev > fuseRecheck {
		// This request came more than fuseRecheck after the one before
		// (a client that pauses between requests, a slow endpoint), or
		// the one before did (a client paced slower than fuseRecheck
		// that sent this one early, catching up): the next one likely
		// comes after the recheck too, whose timer's wake would cost
		// more than the read the fusion saves (session 29: the recheck
		// fired in 2-8 % of the 8 ms gaps of fortio at 2,000 req/s over
		// 16 connections).
		return w.sendHeld(until) == nil
	}
	w.until = until
	if w.kept && w.dl.Sub(now) >= fuseRecheck && !w.dl.After(until) {
		return true // the fused read's deadline left set, far enough still
	}
	dl := now.Add(2 * fuseRecheck)
	if !dl.Before(until) {
		w.c.SetReadDeadline(until)
		w.kept = false
		return true
	}
	w.c.SetReadDeadline(dl)
	w.dl, w.kept = dl, true
	return true
}

// moved: the client's read deadline was set by another than next (a
// body's, a watch's, a head's still coming): next sets it again.
func (w *h1Wire) moved() { w.kept = false }

// sendHeld writes a held response the ordinary way, the read deadline
// set to until first.
func (w *h1Wire) sendHeld(until time.Time) error {
	held := w.held
	w.held = nil
	w.c.SetReadDeadline(until)
	w.rechecking, w.kept = false, false
	_, err := w.tc.Write(held)
	return err
}

// unrecheck sets the idle timeout's deadline again if fuseRecheck's is
// still set (rechecking).
func (w *h1Wire) unrecheck() {
	if w.rechecking {
		w.rechecking, w.kept = false, false
		w.c.SetReadDeadline(w.until)
	}
}

// headStarted: the request's first bytes are in (the serving loop's
// Peeks, before the head's), so fuseRecheck's deadline can stay: whatever reads the client
// next sets its own first (rechecking).
func (w *h1Wire) headStarted() { w.rechecking = false }

func (w *h1Wire) Read(p []byte) (int, error) {
	if w.raw == nil {
		return w.c.Read(p)
	}
	if w.held == nil {
		w.unrecheck()
		return w.raw.Read(p)
	}
	held := w.held
	w.held = nil
	wn, n, err := w.raw.WriteRead(held, p)
	if wn < len(held) {
		// Not all of it at once: the rest with the send timeout and the
		// write's wait, then the read.
		w.held = held[wn:]
		if err := w.sendHeld(w.until); err != nil {
			return 0, err
		}
		return w.raw.Read(p)
	}
	w.rechecking = true // until, again before any other read (unrecheck, headStarted)
	if err != nil && httpproxy.IsTimeout(err) && monoTime().Before(w.until) {
		w.unrecheck()
		if h := fuseRecheckedHook.Load(); h != nil {
			(*h)()
		}
		// fuseRecheck's: read what came before the write. Bytes there at
		// once were sent unasked (a request pipelined in a segment of its
		// own): such a client would wait fuseRecheck at every response.
		n, err = w.raw.Read(p)
		if n > 0 && !w.raw.Waited() {
			w.unfused = pipelinedUnfused
		}
	}
	return n, err
}
