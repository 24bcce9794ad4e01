package h2srv

// Asynchronous completion (issue 14): a handler may return with its
// stream open and have its response finished from another goroutine, a
// proxy's upstream read loop say, so that no goroutine waits parked per
// request for the upstream's answer.

import (
	"io"
	"net/http"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/net/http2"
)

// Async is a stream whose handler returned before its response ended
// (Detach). Exactly one of Finish or TryFinish (true) ends it; until then
// the ResponseWriter the handler had is the finisher's, to drive from one
// goroutine at a time, and the handler must not touch it after Detach.
type Async struct {
	w         *responseWriter
	refs      atomic.Int32 // the handler's return and the response's end: the last closes the stream
	responded atomic.Bool  // Finish or TryFinish ended the response
	panicked  atomic.Bool  // the handler panicked after Detach: the stream was reset
}

// tryFinishHeader is room TryFinish leaves for a response's header and
// trailer frames in the connection's buffer.
const tryFinishHeader = 1024

// mayWrite reports whether writing n more bytes to the connection's
// socket cannot wait (under wmu): the socket held nothing the client had
// not acknowledged (SIOCOUTQ) when last asked, and what was written since,
// n included, is at most a quarter of its send buffer (SO_SNDBUF, read
// once: it only grows). false when unknown (no descriptor).
func (sc *conn) mayWrite(n int) bool {
	if sc.rc == nil {
		return false
	}
	if sc.outqFn == nil {
		sc.outqFn = func(fd uintptr) {
			var v int32
			if _, _, e := syscall.RawSyscall(syscall.SYS_IOCTL, fd, syscall.TIOCOUTQ, uintptr(unsafe.Pointer(&v))); e == 0 {
				sc.outq = int(v)
			}
			if sc.sndbuf == 0 {
				sc.sndbuf = -1
				if b, err := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF); err == nil && b > 0 {
					sc.sndbuf = b
				}
			}
		}
	}
	if sc.sndbuf > 0 && sc.wrote.n+int64(n) <= int64(sc.sndbuf/4) {
		return true
	}
	sc.outq = -1
	if sc.rc.Control(sc.outqFn) != nil || sc.outq != 0 {
		return false
	}
	sc.wrote.n = 0
	return true
}

// countingWriter counts the bytes written through it (under wmu:
// mayWrite).
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Flusher flushes what TryFinish left in a connection's write buffer.
// Values are comparable: one per connection.
type Flusher interface{ FlushPending() }

// Detach keeps the stream of w, a ResponseWriter of this server's (or a
// wrapper whose Unwrap leads to one), open after its handler returns: its
// response ends with the Async's Finish or TryFinish, which may run
// before the handler returns. nil if w is not this server's, or was
// detached already. A handler that panics after Detach has its stream
// reset as any panicking handler's (INTERNAL_ERROR) unless the response
// ended already.
func Detach(w http.ResponseWriter) *Async {
	for {
		switch x := w.(type) {
		case *responseWriter:
			if x.detached || x.done {
				return nil
			}
			x.detached = true
			a := &x.async
			a.w = x
			a.refs.Store(2)
			return a
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			return nil
		}
	}
}

// ResponseWriter is the stream's writer: the finisher's from Detach on.
func (a *Async) ResponseWriter() http.ResponseWriter { return a.w }

// handlerReturned is run's end for a detached stream.
func (a *Async) handlerReturned(panicked bool) {
	if panicked {
		a.panicked.Store(true)
		if !a.responded.Load() {
			st := a.w.st
			st.sc.resetStream(st.id, http2.ErrCodeInternal)
		}
	}
	a.release(true)
}

// release drops a reference; the last closes the stream. mayWait: the
// caller may wait for the connection's writer (a reset the close sends);
// else such a close runs on a goroutine of its own.
func (a *Async) release(mayWait bool) {
	if a.refs.Add(-1) != 0 {
		return
	}
	w := a.w
	st := w.st
	failed := a.panicked.Load() || !a.responded.Load()
	if !mayWait {
		sc := st.sc
		sc.mu.Lock()
		quiet := st.recvDone || st.removed
		sc.mu.Unlock()
		if !quiet || failed || w.err != nil {
			go st.close(w, failed)
			return
		}
	}
	st.close(w, failed)
}

// Finish ends the response as the handler's return would: the header if
// not sent, what is buffered, the trailers. It may wait for the client's
// windows and the connection's writer.
func (a *Async) Finish() {
	w := a.w
	if !a.panicked.Load() && !w.streamGone() {
		w.st.answered.Store(true)
		w.finish()
	}
	a.responded.Store(true)
	a.release(true)
}

// streamGone reports whether the stream was reset or its connection
// closed: nothing more is written on it.
func (w *responseWriter) streamGone() bool {
	sc := w.st.sc
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return w.st.err != nil
}

// TryFinish is Finish when that needs no wait: the header has not been
// sent, what the handler wrote is buffered and fits one DATA frame within
// the client's windows, and the connection's writer is free. Its frames
// are left in the connection's buffer: the caller flushes them with the
// Flusher returned, at the latest before it waits itself (a proxy's read
// loop, after the upstream frames it has read: one write for many
// responses). false: nothing was done; Finish (on a goroutine that may
// wait) ends the response.
func (a *Async) TryFinish() (Flusher, bool) {
	w := a.w
	st, sc := w.st, w.st.sc
	if w.err != nil || w.sentHeader || a.panicked.Load() {
		return nil, false
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	data := w.buf
	n := int64(len(data))
	if !sc.wmu.TryLock() {
		return nil, false
	}
	if sc.bw.Available() < len(data)+tryFinishHeader && !sc.mayWrite(sc.bw.Buffered()) {
		// The frames would not all fit the buffer, whose write could
		// wait: the client's socket holds bytes it has not taken.
		sc.wmu.Unlock()
		return nil, false
	}
	sc.mu.Lock()
	ok := st.err == nil && sc.werr == nil && n <= int64(sc.peerFrame) && n <= st.sendWin && n <= sc.sendWin
	if ok {
		st.sendWin -= n
		sc.sendWin -= n
	}
	sc.mu.Unlock()
	if !ok {
		sc.wmu.Unlock()
		return nil, false
	}
	w.done = true
	w.sentHeader = true
	w.prepareHeader(true, len(data))
	trailers := w.trailerKeys()
	w.buf = w.buf[:0]
	st.answered.Store(true) // before the response's end can reach the client
	if err := w.frames(true, data, len(data), len(trailers) == 0, trailers); err != nil {
		sc.werr = err
		w.fail(err)
	} else {
		sc.dirty = true
	}
	sc.wmu.Unlock()
	a.responded.Store(true)
	a.release(false)
	return sc, true
}

// FlushPending flushes what TryFinish left buffered. If the writer is
// busy, its holder flushes, or a goroutine of its own does.
func (sc *conn) FlushPending() {
	if !sc.wmu.TryLock() {
		go sc.flushPending()
		return
	}
	if sc.dirty && sc.werr == nil && !sc.mayWrite(sc.bw.Buffered()) {
		// The client's socket holds bytes it has not taken: the write
		// could wait, which the caller must not.
		sc.wmu.Unlock()
		go sc.flushPending()
		return
	}
	if sc.dirty && sc.werr == nil {
		if err := sc.bw.Flush(); err != nil {
			sc.werr = err
		}
		sc.flushed()
	}
	sc.wmu.Unlock()
}

// Abort ends the stream with RST_STREAM (INTERNAL_ERROR), as a handler's
// panic does: the response did not end. It does not wait.
func (a *Async) Abort() {
	a.panicked.Store(true)
	st := a.w.st
	go func() {
		st.sc.resetStream(st.id, http2.ErrCodeInternal)
		a.release(true)
	}()
}

// OpenStreams is the number of streams open on the connection of w (a
// ResponseWriter of this server's, or a wrapper whose Unwrap leads to
// one), its own included; 0 if w is not this server's.
func OpenStreams(w http.ResponseWriter) int {
	for {
		switch x := w.(type) {
		case *responseWriter:
			return x.st.sc.openStreams()
		case interface{ Unwrap() http.ResponseWriter }:
			w = x.Unwrap()
		default:
			return 0
		}
	}
}
