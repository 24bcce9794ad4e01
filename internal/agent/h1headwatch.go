package agent

import (
	"sync"
	"sync/atomic"
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
//
// A prompt request takes no lock (issue 14: two mutexes a request were
// ~0.1 µs): watchHead stores the wait's start and finds the timer set,
// stopHead clears it and finds no watch reading the client. The callback
// publishes a watch (headWatching) before it reads the start a second
// time, and stopHead clears the start before it looks for a watch, so
// one of the two always sees the other (sequentially consistent atomics):
// a watch begun as its request's head came is stopped (stopHead takes the
// lock and waits for it) or never begins (the callback finds the start
// gone). Likewise watchHead stores the start before it looks at
// headPending, and the callback clears headPending before it reads the
// start: a wait that begins as the timer lapses is seen by the callback,
// or sets the timer again.
type headWatchState struct {
	watchHeadFn func() // cs.watchHead: one func value per connection
	headTimer   stoppableTimer
	// afterFunc makes headTimer: time.AfterFunc when nil (a test's own
	// timer otherwise, to run its callback late at will); clock reads the
	// time (monoNow when nil; a test's clock otherwise).
	afterFunc func(time.Duration, func()) stoppableTimer
	clock     func() time.Time

	// headSince: since when (headNow) a request waits for its head, from
	// watchHead to stopHead; 0: none waits.
	headSince atomic.Int64
	// headPending: headTimer is set and its callback has not run yet
	// (set under headMu; cleared by the callback under it).
	headPending atomic.Bool
	// headWatching: headDone is not nil (changed under headMu), for
	// stopHead to see without the lock.
	headWatching atomic.Bool

	headMu   sync.Mutex    // guards headDone and headTimer's setting
	headDone chan struct{} // the watch reading the client (nil: none), closed when it ends
}

// stoppableTimer is what watchHead needs of its timer (*time.Timer).
type stoppableTimer interface {
	Reset(time.Duration) bool
	Stop() bool
}

// headNow reads the head watch's clock: nanoseconds, at least 1
// (monoNow; a test's clock otherwise).
func (cs *h1ClientConn) headNow() int64 {
	if cs.clock != nil {
		return cs.clock().UnixNano()
	}
	return monoNow()
}

// watchHead arms a watch of the client while the request's response head
// is awaited (its body, if any, read to the end: the watch reads the
// client's connection): once the client closes its connection, the
// request is cancelled and the upstream connection closed
// (httpproxy.CancelHeadWait), as net/http's server cancels a request whose
// client went away. An endpoint that never answers would otherwise keep
// the request, its goroutine and both connections for good: services have
// no request timeout by default. stopHead ends the watch.
func (cs *h1ClientConn) watchHead() { cs.watchHeadAt() }

// watchHeadAt is watchHead; it returns its reading of the clock (monoNow;
// 0 with a test's clock), which the request's attempt may share
// (reqShare.head).
func (cs *h1ClientConn) watchHeadAt() int64 {
	now := cs.headNow()
	cs.headSince.Store(now)
	if !cs.headPending.Load() {
		cs.headMu.Lock()
		if !cs.headPending.Load() {
			cs.headPending.Store(true)
			cs.setHeadTimerLocked(headWatchAfter)
		}
		cs.headMu.Unlock()
	}
	// else the timer's callback, still to run, sees this wait
	if cs.clock != nil {
		return 0
	}
	return now
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
	cs.headPending.Store(false)
	since := cs.headSince.Load()
	if since == 0 || cs.headDone != nil {
		cs.headMu.Unlock()
		return
	}
	if left := headWatchAfter - time.Duration(cs.headNow()-since); left > 0 {
		cs.headPending.Store(true)
		cs.setHeadTimerLocked(left)
		cs.headMu.Unlock()
		return
	}
	done := make(chan struct{})
	cs.headDone = done
	cs.headWatching.Store(true)
	if cs.headSince.Load() != since {
		// The head came meanwhile (stopHead, which may not have seen the
		// watch), or another wait began (its watchHead found headPending
		// cleared, and sets the timer once this unlocks): nothing to
		// watch now.
		cs.headDone = nil
		cs.headWatching.Store(false)
		cs.headMu.Unlock()
		return
	}
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
	cs.headSince.Store(0)
	if !cs.headWatching.Load() {
		return // no watch reads the client, and none begins (headWatchState)
	}
	cs.headMu.Lock()
	done := cs.headDone
	if done != nil {
		cs.conn.SetReadDeadline(aLongTimeAgo)
		cs.deadlineMoved()
	}
	cs.headMu.Unlock()
	if done == nil {
		return
	}
	<-done
	cs.headMu.Lock()
	if cs.headDone == done {
		cs.headDone = nil
		cs.headWatching.Store(false)
	}
	cs.headMu.Unlock()
}

// headBusy: a request waits for its head, or a watch of it reads the
// client (or has, and no stopHead has ended it yet).
func (cs *h1ClientConn) headBusy() bool {
	return cs.headSince.Load() != 0 || cs.headWatching.Load()
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
	if cs.headPending.Load() && cs.headTimer != nil {
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
