package agent

import (
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// The fast path's watches of its client while a request is in flight: a
// slow response head's (watchHead), a streaming response's (watch).

// headWatchAfter is how long a request's response head may take before
// the fast path watches its client (a goroutine's cost, not paid by a
// prompt response).
var headWatchAfter = time.Second

// headWatchState is an h1ClientConn's watch of a slow response head.
//
// Its timer is not set and stopped per request (a runtime timer's add
// and delete, about 0.3 µs a request): it stays set across requests, and
// its callback (headWatch) watches the client only if a request has been
// waiting for its head headWatchAfter by then; for one that waits less,
// it sets itself again for the rest of that wait; with no request
// waiting, it lapses until the next request's watchHead. A busy
// connection's timer fires about once per headWatchAfter, not once per
// request.
type headWatchState struct {
	watchHeadFn func() // cs.watchHead: one func value per connection
	headTimer   stoppableTimer
	// afterFunc makes headTimer: time.AfterFunc when nil (a test's own
	// timer otherwise, to run its callback late at will); clock reads the
	// time (monoTime when nil; a test's clock otherwise).
	afterFunc func(time.Duration, func()) stoppableTimer
	clock     func() time.Time

	headMu      sync.Mutex    // guards the following
	headWaiting bool          // a request waits for its head: from watchHead to stopHead
	headSince   time.Time     // since when (clock)
	headPending bool          // headTimer is set and its callback has not run yet
	headDone    chan struct{} // the watch reading the client (nil: none), closed when it ends
}

// stoppableTimer is what watchHead needs of its timer (*time.Timer).
type stoppableTimer interface {
	Reset(time.Duration) bool
	Stop() bool
}

func (cs *h1ClientConn) now() time.Time {
	if cs.clock != nil {
		return cs.clock()
	}
	return monoTime()
}

// watchHead arms a watch of the client while the request's response head
// is awaited (its body, if any, read to the end: the watch reads the
// client's connection): once the client closes its connection, the
// request is cancelled and the upstream connection closed
// (httpproxy.CancelHeadWait), as net/http's server cancels a request whose
// client went away. An endpoint that never answers would otherwise keep
// the request, its goroutine and both connections for good: services have
// no request timeout by default. stopHead ends the watch.
func (cs *h1ClientConn) watchHead() {
	now := cs.now()
	cs.headMu.Lock()
	cs.headWaiting, cs.headSince, cs.headDone = true, now, nil
	if !cs.headPending {
		cs.headPending = true
		cs.setHeadTimerLocked(headWatchAfter)
	}
	cs.headMu.Unlock()
}

func (cs *h1ClientConn) setHeadTimerLocked(d time.Duration) {
	switch {
	case cs.headTimer != nil:
		cs.headTimer.Reset(d)
	case cs.afterFunc != nil:
		cs.headTimer = cs.afterFunc(d, cs.headWatch)
	default:
		cs.headTimer = time.AfterFunc(d, cs.headWatch)
	}
}

// headWatch is the timer's callback: it watches the client if a request
// has waited headWatchAfter for its head (a callback that runs late, past
// the request it was set for, finds the next one's wait, or none).
func (cs *h1ClientConn) headWatch() {
	cs.headMu.Lock()
	cs.headPending = false
	if !cs.headWaiting || cs.headDone != nil {
		cs.headMu.Unlock()
		return
	}
	if left := headWatchAfter - cs.now().Sub(cs.headSince); left > 0 {
		cs.headPending = true
		cs.setHeadTimerLocked(left)
		cs.headMu.Unlock()
		return
	}
	done := make(chan struct{})
	cs.headDone = done
	cs.conn.SetReadDeadline(time.Time{})
	cs.headMu.Unlock()
	defer close(done)
	defer cs.recoverWatch(true)
	if _, err := cs.br.Peek(1); err != nil && !httpproxy.IsTimeout(err) {
		cs.gone() // EOF, reset or shutdown: the request's context ends first
		httpproxy.CancelHeadWait(cs.ctx)
	}
}

// stopHead ends watchHead's watch: the head came, or the request failed.
// The connection's read deadline is the next request's to set. The timer
// is left set (headWatchState).
func (cs *h1ClientConn) stopHead() {
	cs.headMu.Lock()
	cs.headWaiting = false
	done := cs.headDone
	if done != nil {
		cs.conn.SetReadDeadline(aLongTimeAgo)
		cs.deadlineMoved()
	}
	cs.headMu.Unlock()
	if done != nil {
		<-done
	}
}

// deadlineMoved tells the wire (if any: tests make connections without)
// that the client's read deadline is no longer the one it set (h1Wire.moved).
func (cs *h1ClientConn) deadlineMoved() {
	if cs.wire != nil {
		cs.wire.moved()
	}
}

// endHead stops the timer as the connection ends (no request waits): it
// would keep the connection's state for up to headWatchAfter.
func (cs *h1ClientConn) endHead() {
	cs.headMu.Lock()
	if cs.headPending && cs.headTimer != nil {
		cs.headTimer.Stop()
	}
	cs.headMu.Unlock()
}

// watch notices the client closing its connection while a response
// streams (the fast path reads nothing from the client meanwhile) and then
// cancels the request: a silent stream does not keep its upstream
// connection and its request slots (l7body.go) for a client that is gone.
// stop ends the watch; the connection's read deadline is reset by the
// next request's.
func (cs *h1ClientConn) watch() (stop func()) {
	if cs.br.Buffered() > 0 {
		return func() {} // the client has sent more (pipelining): it is there
	}
	cs.conn.SetReadDeadline(time.Time{})
	cs.deadlineMoved()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer cs.recoverWatch(false)
		if _, err := cs.br.Peek(1); err != nil && !httpproxy.IsTimeout(err) {
			cs.gone() // EOF, reset or shutdown
		}
	}()
	return func() {
		cs.conn.SetReadDeadline(aLongTimeAgo)
		<-done
	}
}

// recoverWatch, deferred by a watch of the client (a goroutine of its
// own), recovers a panic in it (a bug, in the read of the client's
// connection): logged and counted (gopanic.go), the client's connection
// closed (its reader is suspect: the request is answered by nothing, as
// after any panic of a connection's, recoverConn) and the request
// cancelled as if the client had gone (head: its wait for the response
// head too), rather than the agent's process ending. It takes no lock a
// watch can hold when it panics: headWatch defers it after releasing
// headMu, watch holds none, and what it calls takes none of theirs (the
// socket's close, the context's cancel, CancelHeadWait's atomic swap and
// the upstream connection's deadline).
func (cs *h1ClientConn) recoverWatch(head bool) {
	if p := recover(); p != nil {
		if cs.a != nil {
			cs.a.panicked("watching a client's connection", p)
		}
		cs.conn.Close()
		cs.gone()
		if head {
			httpproxy.CancelHeadWait(cs.ctx)
		}
	}
}
