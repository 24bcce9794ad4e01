package h2srv

// Every stream's handler on the read loop (Server.InlineAll): for
// handlers that return at once (Detach), the streams a read brings are
// run in turn when the read loop would wait, as a lone stream's is
// (inline.go), instead of a worker's wake each; writes they leave for
// later (AtWait) are flushed after the last. A handler that waits long is
// taken over from as a lone one is: the streams still queued go to
// workers.

import (
	"net/http"
	"syscall"
)

// queueStream holds t for the read loop; false: run it as before.
func (sc *conn) queueStream(t streamTask) bool {
	if !sc.s.InlineAll || !sc.inlineOn || !sc.in.raw {
		return false
	}
	if sc.inlineSkip > 0 { // after a take-over (inline.go)
		sc.inlineSkip--
		sc.dispatchPending()
		sc.s.dispatch(t)
		return true
	}
	sc.dispatchPending()
	sc.queue = append(sc.queue, t)
	return true
}

// dispatchQueue hands the queued streams to workers.
func (sc *conn) dispatchQueue() {
	for i, t := range sc.queue {
		sc.s.dispatch(t)
		sc.queue[i] = streamTask{}
	}
	sc.queue = sc.queue[:0]
}

// runQueue runs q's handlers on this goroutine (the read loop's): false
// when the read loop was taken over meanwhile (the streams behind the
// handler then running went to workers with the take-over: takeOver).
func (sc *conn) runQueue(rc syscall.RawConn, q []streamTask) bool {
	defer sc.runAtWait()
	for i, t := range q {
		q[i] = streamTask{}
		sc.mu.Lock()
		ready := t.st.recvDone && !t.st.removed && !sc.closed
		sc.mu.Unlock()
		if !ready {
			sc.s.dispatch(t)
			continue
		}
		t.st.inlined = true
		// Before runInline's state store: whoever takes the read loop
		// over (the CAS from inlineRun) owns it.
		sc.runRest = q[i+1:]
		sc.inlineSt.Store(t.st)
		if !sc.runInline(rc, t) {
			return false
		}
	}
	sc.runRest = nil
	sc.inlineSt.Store(nil)
	return true
}

// handOff is a take-over's (its CAS from inlineRun won): the streams
// queued behind the handler that holds the read loop go to workers, and
// the flushes the batch's handlers left (AtWait) are made now, not when
// that handler returns.
func (sc *conn) handOff() {
	rest := sc.runRest
	sc.runRest = nil
	sc.inlineSt.Store(nil) // a later lone stream's run is not this handler's
	for i, t := range rest {
		sc.s.dispatch(t)
		rest[i] = streamTask{}
	}
	sc.runAtWait()
}

// runAtWait runs the flushes inline handlers left (AtWait). Any
// goroutine: a take-over's makes them (handOff) while the handler that
// held the read loop may still add its own.
func (sc *conn) runAtWait() {
	sc.atMu.Lock()
	fs := sc.atWait
	sc.atWait = nil
	sc.atMu.Unlock()
	for i, f := range fs {
		f.FlushPending()
		fs[i] = nil
	}
	sc.atMu.Lock()
	if sc.atWait == nil {
		sc.atWait = fs[:0] // its storage again
	}
	sc.atMu.Unlock()
}

// WillWait tells the server that the handler of w (a ResponseWriter of
// this server's, or a wrapper whose Unwrap leads to one) is about to wait
// for something other than its own connection: an upstream, a queue, a
// timer. If that handler runs on its connection's read loop
// (Server.InlineAll) beside other open streams, the read loop goes to
// another goroutine at once, the streams queued behind the handler to
// workers and the batch's flushes (AtWait) out, instead of after
// inlineLimit (the take-over's timer). A lone stream keeps the read loop
// (inline.go: its wait is bounded so); the batch's flushes are made.
// Elsewhere it costs a field check. Call it before any such wait, from
// the handler's goroutine, or the finisher's after Detach.
func WillWait(w http.ResponseWriter) {
	for {
		switch x := w.(type) {
		case *responseWriter:
			x.st.sc.willWait(x.st)
			return
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			return
		}
	}
}

// willWait is WillWait for st.
func (sc *conn) willWait(st *stream) {
	if !st.inlined || sc.inline.Load() != inlineRun || sc.inlineSt.Load() != st {
		return
	}
	sc.mu.Lock()
	others := sc.othersOpenLocked(st)
	sc.mu.Unlock()
	if others {
		sc.takeOver(true)
		return
	}
	sc.runAtWait() // what the batch left must not wait with it
}

// AtWait has f flushed once the handler of w, running on its connection's
// read loop (Server.InlineAll), and the others run there with it have
// returned: false (nothing done) if it does not run there.
func AtWait(w http.ResponseWriter, f Flusher) bool {
	for {
		switch x := w.(type) {
		case *responseWriter:
			if !x.st.inlined {
				return false
			}
			x.st.sc.addAtWait(f)
			return true
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			return false
		}
	}
}

// addAtWait adds f to the flushes to make, once (no defer: AtWait's is in
// a loop, where a defer allocates).
func (sc *conn) addAtWait(f Flusher) {
	sc.atMu.Lock()
	for _, g := range sc.atWait {
		if g == f {
			sc.atMu.Unlock()
			return
		}
	}
	sc.atWait = append(sc.atWait, f)
	sc.atMu.Unlock()
}

// takeQueue hands the queued streams to loop, to run (rawRead).
func (sc *conn) takeQueue() {
	sc.rawQueue, sc.queue = sc.queue, nil
	sc.rawOut.queued = true
}
