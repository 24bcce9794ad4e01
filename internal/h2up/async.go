package h2up

// Asynchronous completion (issue 14): Start sends a request and returns;
// its response goes to a callback, run on the connection's read loop when
// the whole response came together (a unary call's headers, message and
// trailers, read in one read), so that no goroutine waits parked per
// request for it.

import (
	"fmt"
	"net/http"
	"syscall"
	"unsafe"
)

// Completion gets a request's response (or error) sent by Start. rl is
// non-nil when it runs on the connection's read loop: then it must not
// wait for anything (the read loop's other streams wait with it); the
// response has ended, its body and trailers buffered, and reads of the
// body return without waiting. Writes it leaves buffered elsewhere are
// flushed by rl before the read loop waits (AtWait). rl nil: a goroutine
// of its own, which may wait (a response whose body is still coming, or
// an error).
type Completion interface {
	Complete(resp *http.Response, err error, rl *ReadLoop)
}

// CompletionFunc is a function as a Completion.
type CompletionFunc func(resp *http.Response, err error, rl *ReadLoop)

// Complete calls f.
func (f CompletionFunc) Complete(resp *http.Response, err error, rl *ReadLoop) { f(resp, err, rl) }

// Flusher flushes writes a Completion left buffered (an HTTP/2 server
// connection's responses). Values are comparable: one per connection.
type Flusher interface{ FlushPending() }

// ReadLoop is a connection's read loop, as a Completion sees it.
type ReadLoop struct {
	c        *conn
	flushers []Flusher
}

// AtWait has f flushed before the read loop waits for more frames (once,
// however often it is asked for before then): the responses completed
// from one read leave in one write.
func (rl *ReadLoop) AtWait(f Flusher) {
	for _, g := range rl.flushers {
		if g == f {
			return
		}
	}
	rl.flushers = append(rl.flushers, f)
}

func (rl *ReadLoop) pending() bool { return len(rl.flushers) > 0 || len(rl.c.doneLater) > 0 }

// Start sends req as RoundTrip does, but does not wait for the response:
// done gets it, once. An error returned (nothing sent, or the request's
// write failed) is done's instead: done is not called then. (A write that
// failed as the connection closed, failing the stream first, is done's:
// nil is returned.) The request's
// context ending before the response resets the stream (done gets the
// error).
func (p *Pool) Start(req *http.Request, done Completion) error {
	s, err := p.open(req, done, false)
	if err != nil {
		return err
	}
	s.watch()
	return nil
}

// StartLater is Start leaving the request's frames in the connection's
// buffer: the Flusher returned flushes them, and the caller must have it
// do so before it waits (requests sent in a row share a write).
func (p *Pool) StartLater(req *http.Request, done Completion) (Flusher, error) {
	s, err := p.open(req, done, true)
	if err != nil {
		return nil, err
	}
	s.watch()
	return s.c, nil
}

// FlushPending flushes what StartLater left buffered; if the writer is
// busy, or the write could wait (the endpoint's socket may be full:
// mayWrite), a goroutine of its own makes it. It never waits: it runs on
// the agent's HTTP/2 server's read loop (h2srv.AtWait), which an endpoint
// that stopped reading must not hold up.
func (c *conn) FlushPending() {
	if !c.wmu.TryLock() {
		go c.flush()
		return
	}
	if c.werr == nil && !c.mayWrite(c.bw.Buffered()+flushMargin) {
		c.wmu.Unlock()
		go c.flush()
		return
	}
	c.flushLocked()
	c.wmu.Unlock()
}

// flushLocked is writeLocked's flush (the read loop's control frames
// first) without its yield: that lets the lock go and waits to take it
// back, behind any writer that took it meanwhile, which FlushPending must
// not. Under wmu.
func (c *conn) flushLocked() {
	if c.werr != nil {
		return
	}
	var err error
	if c.ctlPending.Load() {
		_, err = c.writeQueued(-1)
	}
	if err == nil {
		err = c.bw.Flush()
		c.owed = false
		if c.ctlArmed {
			c.ctlArmed = false
			c.ctlTimer.Stop()
		}
	}
	if err != nil {
		c.werr = fmt.Errorf("h2up: write: %w", err)
		c.nc.Close() // the read loop fails the streams
	}
}

// passOwed, for a StartLater write that another writer left its flush
// to (owed): the flush goes to a goroutine of its own if it could wait
// (mayWrite), as FlushPending's does; StartLater's caller must not wait.
// Under wmu.
func (c *conn) passOwed() {
	if !c.mayWrite(c.bw.Buffered() + flushMargin) {
		c.owed = false
		go c.flush()
	}
}

// flushMargin is room for the control frames a flush writes before what
// is buffered (writeLocked: a few acknowledgements and WINDOW_UPDATEs).
const flushMargin = 1024

// mayWrite reports whether writing n more bytes to the socket cannot
// wait (under wmu), as h2srv's: the socket held nothing the endpoint had
// not acknowledged (SIOCOUTQ) when last asked, and what was written since,
// n included, is at most a quarter of its send buffer (SO_SNDBUF, read
// once: it only grows). Asking the socket costs a system call, so it is
// asked only once that quarter has gone. false when unknown (no
// descriptor: a mesh stream).
func (c *conn) mayWrite(n int) bool {
	if c.rc == nil {
		return false
	}
	if c.outqFn == nil {
		c.outqFn = func(fd uintptr) {
			var v int32
			if _, _, e := syscall.RawSyscall(syscall.SYS_IOCTL, fd, syscall.TIOCOUTQ, uintptr(unsafe.Pointer(&v))); e == 0 {
				c.outq = int(v)
			}
			if c.sndbuf == 0 {
				c.sndbuf = -1
				if b, err := syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF); err == nil && b > 0 {
					c.sndbuf = b
				}
			}
		}
	}
	if c.sndbuf > 0 && c.wrote+int64(n) <= int64(c.sndbuf/4) {
		return true
	}
	c.outq = -1
	if c.rc.Control(c.outqFn) != nil || c.outq != 0 {
		return false
	}
	c.wrote = 0
	return true
}

// completeLater: s's response headers came (read loop): its completion
// runs when the response ends, or before the read loop waits (on a
// goroutine of its own: a body that streams).
func (c *conn) completeLater(s *stream) {
	s.later = true
	c.doneLater = append(c.doneLater, s)
}

// complete runs s's completion with its response (read loop).
func (s *stream) complete(rl *ReadLoop) {
	s.later = false
	if rl == nil {
		go s.done.Complete(s.resp, nil, nil)
		return
	}
	s.done.Complete(s.resp, nil, rl)
}

// beforeWait, before the read loop may wait: completions of responses
// not ended go to goroutines, and what completions left buffered is
// flushed.
func (c *conn) beforeWait() {
	for i, s := range c.doneLater {
		if s.later {
			s.complete(nil)
		}
		c.doneLater[i] = nil
	}
	c.doneLater = c.doneLater[:0]
	for i, f := range c.rl.flushers {
		f.FlushPending()
		c.rl.flushers[i] = nil
	}
	c.rl.flushers = c.rl.flushers[:0]
}

// orphaned, after a panic on the read loop (recoverRead), gives what
// beforeWait would have to goroutines of their own: the completions of
// responses whose headers came (their bodies' reads fail with the
// connection's close: the streams' fail leaves them to these, whose
// response was set) and the flushes completions asked for (AtWait).
// Without it their callers waited for good.
func (c *conn) orphaned() {
	for i, s := range c.doneLater {
		if s != nil && s.later { // nil: beforeWait's, which panicked, had it
			s.later = false
			go s.done.Complete(s.resp, nil, nil)
		}
		c.doneLater[i] = nil
	}
	c.doneLater = nil
	fs := c.rl.flushers
	c.rl.flushers = nil
	if len(fs) == 0 {
		return
	}
	go func() {
		for _, f := range fs {
			c.flushGuarded(f)
		}
	}()
}

// flushGuarded runs f's flush; a panic in it goes to Config.OnPanic.
func (c *conn) flushGuarded(f Flusher) {
	defer func() {
		if p := recover(); p != nil {
			c.p.panicked(p)
		}
	}()
	f.FlushPending()
}
