package h2srv

// A stream's handler on the read loop's goroutine (issue 14). When the
// read loop has processed every byte it read (or is about to wait) with
// one stream open, whose request has ended, and no other handler running,
// it runs that stream's handler itself instead of waking a worker: one
// goroutine hand-off per request fewer (a gRPC client's unary call, one
// in flight per connection). It leaves rc.Read for that, and reads first
// when it enters again (serveRaw), as it would have before waiting.
//
// While the handler runs nobody reads the connection, so it must not wait
// long on anything only the read loop delivers. The read loop is handed to
// a new goroutine (takeOver) as soon as the handler waits for send window
// (the client's WINDOW_UPDATE) or for request body, and in any case once
// it has run for inlineLimit (a response that is slow to come: the
// client's RST_STREAM, PING, SETTINGS, GOAWAY and other streams are read
// again then). When the handler returns after a take-over, its goroutine
// (the connection's own, serve's) takes the read loop back at the other
// goroutine's next wait (handBack); the taking-over goroutine never runs a
// handler inline, so a connection has at most two.

import (
	"sync/atomic"
	"syscall"
	"time"
)

// inlineLimit bounds how long a handler runs on the read loop before the
// reading goes to another goroutine; nanoseconds (tests change it).
var inlineLimit atomic.Int64

func init() { inlineLimit.Store(int64(5 * time.Millisecond)) }

// SetInlineLimit sets how long a handler runs on the read loop before the
// reading goes to another goroutine (5 ms), and returns the old limit's
// restore: for tests of packages whose handlers hand the read loop on
// themselves (WillWait), which a long limit shows.
func SetInlineLimit(d time.Duration) (restore func()) {
	old := inlineLimit.Swap(int64(d))
	return func() { inlineLimit.Store(old) }
}

// Inline states (conn.inline).
const (
	inlineNone  = iota // no handler on the read loop's goroutine
	inlineRun          // a handler runs there; nobody reads
	inlineTaken        // a handler runs there; another goroutine reads
)

// skipAfterTakeOver: after a take-over the next this many lone streams go
// to workers. A connection whose handlers outlast inlineLimit (a slow
// upstream) would otherwise pay for a take-over and a hand back per
// request, where a worker costs one hand-off.
const skipAfterTakeOver = 16

// skipAfterMultiplex: after a stream opens beside another, the next this
// many lone streams go to workers. A client that multiplexes (h2load -m
// 10) has moments with one stream open; its next streams, sent as the
// responses come, would wait behind a handler on the read loop until its
// upstream answers.
const skipAfterMultiplex = 256

// takeOvers counts take-overs (tests).
var takeOvers atomic.Int64

// inlineReady: the read loop, about to wait, may run sc.pending itself
// (read loop only).
func (sc *conn) inlineReady() bool {
	st := sc.pending.st
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return st.recvDone && !st.removed && !sc.closed && !sc.othersBusyLocked(st)
}

// othersBusyLocked: a stream besides st is open (othersOpenLocked), or
// waits for send window, in one walk of the streams. One that waits for
// window may have been answered (it is not open then), but its worker
// called waitingOnReader before st could run inline, so only the read
// loop's goroutine, free, reads its WINDOW_UPDATE: st goes to a worker,
// or that stream would wait for st's handler (up to inlineLimit).
func (sc *conn) othersBusyLocked(st *stream) bool {
	for _, o := range sc.streams {
		if o != st && (o.waitingWin || !o.answered.Load()) {
			return true
		}
	}
	return false
}

// othersOpenLocked: a stream besides st is open whose response has not
// ended. A worker's stream whose response has ended is not: the client
// may send its next request before the worker has removed it.
func (sc *conn) othersOpenLocked(st *stream) bool {
	for _, o := range sc.streams {
		if o != st && !o.answered.Load() {
			return true
		}
	}
	return false
}

// dispatchPending hands a stream held for the read loop to a worker.
func (sc *conn) dispatchPending() {
	if t := sc.pending; t.st != nil {
		sc.pending = streamTask{}
		sc.s.dispatch(t)
	}
}

// runInline runs t's handler on this goroutine, the read loop's: false
// when the read loop was taken over meanwhile (it is not this
// goroutine's now).
func (sc *conn) runInline(rc syscall.RawConn, t streamTask) bool {
	// takeRC before inlineRun: a worker's waitingOnReader (an answered
	// stream waiting for window) may take over as soon as the state says
	// so, and its goroutine reads takeRC.
	sc.takeRC = rc
	sc.inline.Store(inlineRun)
	d := time.Duration(inlineLimit.Load())
	if sc.inlineTimer == nil {
		sc.inlineTimer = time.AfterFunc(d, func() { sc.takeOver(false) })
	} else {
		sc.inlineTimer.Reset(d)
	}
	t.st.run(t.h)
	if sc.inline.CompareAndSwap(inlineRun, inlineNone) {
		sc.inlineTimer.Stop()
		return true
	}
	return false
}

// takeOver hands the read loop to another goroutine if a handler holds
// it: this one (the timer's) or a new one (spawn: the handler's own,
// about to wait).
func (sc *conn) takeOver(spawn bool) {
	if !sc.inline.CompareAndSwap(inlineRun, inlineTaken) {
		return
	}
	takeOvers.Add(1)
	sc.handOff()
	if spawn {
		go sc.readFor()
		return
	}
	sc.readFor()
}

// waitingOnReader: the handler is about to wait for what only the read
// loop delivers; if it runs on the read loop's goroutine, the reading goes
// elsewhere first.
func (sc *conn) waitingOnReader() {
	if sc.inline.Load() == inlineRun {
		sc.takeOver(true)
	}
}

// readFor runs the read loop for a handler on serve's goroutine: until
// the connection ends (this goroutine ends it), or, that handler done,
// until the read loop would wait (then serve's goroutine reads again).
func (sc *conn) readFor() {
	owner := true // this goroutine closes done when the connection ends
	defer func() {
		if p := recover(); p != nil {
			// The read loop is this goroutine's: it ends the connection
			// (serve's goroutine waits on done).
			sc.loopPanicked(p)
			if owner {
				close(sc.done)
			}
		}
	}()
	switch sc.loop(sc.takeRC, false) {
	case loopEnded:
		sc.closeConn(errClosed)
		owner = false
		close(sc.done)
	case loopHandBack:
		sc.inline.Store(inlineNone)
		sc.handBack <- struct{}{}
	}
}

// endServe ends the connection where serve's goroutine ends the read loop.
// A handler running inline may have ended that goroutine (runtime.Goexit,
// as t.FailNow in a test's handler): its take-over timer must not start a
// reader on the ended connection (which closed done again: a panic), and
// a reader started already owns the end (it closes done once the close
// here wakes it). panicked: the read loop panicked here, and loopPanicked
// closes the connection (closeConn would wait for a lock the panic may
// have left held).
func (sc *conn) endServe(panicked bool) {
	taken := false
	if sc.inline.CompareAndSwap(inlineRun, inlineNone) {
		sc.inlineTimer.Stop()
	} else {
		taken = sc.inline.Load() == inlineTaken
	}
	if !panicked {
		sc.closeConn(errClosed)
	}
	if taken {
		<-sc.done
		return
	}
	close(sc.done)
}
