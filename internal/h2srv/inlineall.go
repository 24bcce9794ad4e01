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
// when the read loop was taken over meanwhile (the rest went to workers).
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
		if !sc.runInline(rc, t) {
			for j, u := range q[i+1:] {
				sc.s.dispatch(u)
				q[i+1+j] = streamTask{}
			}
			return false
		}
	}
	return true
}

// runAtWait runs the flushes inline handlers left (AtWait).
func (sc *conn) runAtWait() {
	for i, f := range sc.atWait {
		f.FlushPending()
		sc.atWait[i] = nil
	}
	sc.atWait = sc.atWait[:0]
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
			sc := x.st.sc
			for _, g := range sc.atWait {
				if g == f {
					return true
				}
			}
			sc.atWait = append(sc.atWait, f)
			return true
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			return false
		}
	}
}

// takeQueue hands the queued streams to loop, to run (rawRead).
func (sc *conn) takeQueue() {
	sc.rawQueue, sc.queue = sc.queue, nil
	sc.rawOut.queued = true
}
