package memnet

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// pipe is one direction of a connection: a bounded byte buffer.
type pipe struct {
	mu      sync.Mutex // guards the following
	buf     []byte
	eof     bool // the writing end half-closed or closed: reads drain buf, then EOF
	gone    bool // the reading end closed: writes fail with EPIPE
	reset   bool // reset: both ends fail with ECONNRESET
	changed chan struct{}
}

func newPipe() *pipe { return &pipe{changed: make(chan struct{})} }

// signalLocked wakes every Read and Write waiting on p.
func (p *pipe) signalLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *pipe) update(f func()) {
	p.mu.Lock()
	f()
	p.signalLocked()
	p.mu.Unlock()
}

func (p *pipe) fail()       { p.update(func() { p.reset, p.buf = true, nil }) }
func (p *pipe) closeWrite() { p.update(func() { p.eof = true }) }
func (p *pipe) closeRead()  { p.update(func() { p.gone, p.buf = true, nil }) }

// conn is one end of a link.
type conn struct {
	link          *link
	local, remote Addr
	rd, wr        *pipe
	rdl, wdl      deadline
	closed        atomic.Bool
}

var _ interface{ CloseWrite() error } = (*conn)(nil)

func (c *conn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "memnet", Source: c.local, Addr: c.remote, Err: err}
}

func (c *conn) LocalAddr() net.Addr  { return c.local }
func (c *conn) RemoteAddr() net.Addr { return c.remote }

// Read reads what the peer wrote; io.EOF once the peer half-closed and all
// was read.
func (c *conn) Read(b []byte) (int, error) {
	p := c.rd
	for {
		if c.closed.Load() {
			return 0, c.opErr("read", net.ErrClosed)
		}
		dl := c.rdl.wait()
		if isClosed(dl) {
			return 0, c.opErr("read", os.ErrDeadlineExceeded)
		}
		p.mu.Lock()
		switch {
		case p.reset:
			p.mu.Unlock()
			return 0, c.opErr("read", os.NewSyscallError("read", syscall.ECONNRESET))
		case p.gone:
			p.mu.Unlock()
			return 0, c.opErr("read", net.ErrClosed)
		case len(b) == 0:
			p.mu.Unlock()
			return 0, nil
		case len(p.buf) > 0:
			n := copy(b, p.buf)
			p.buf = p.buf[:copy(p.buf, p.buf[n:])]
			p.signalLocked()
			p.mu.Unlock()
			return n, nil
		case p.eof:
			p.mu.Unlock()
			return 0, io.EOF
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-dl:
		}
	}
}

// Write writes all of b unless the peer closed, the conn was reset or
// closed, or the write deadline passed; it blocks while the buffer is full.
func (c *conn) Write(b []byte) (int, error) {
	p := c.wr
	n := 0
	for {
		if c.closed.Load() {
			return n, c.opErr("write", net.ErrClosed)
		}
		dl := c.wdl.wait()
		if isClosed(dl) {
			return n, c.opErr("write", os.ErrDeadlineExceeded)
		}
		p.mu.Lock()
		switch {
		case p.reset:
			p.mu.Unlock()
			return n, c.opErr("write", os.NewSyscallError("write", syscall.ECONNRESET))
		case p.eof, p.gone: // we half-closed, or the peer closed
			p.mu.Unlock()
			return n, c.opErr("write", os.NewSyscallError("write", syscall.EPIPE))
		case len(b) == 0:
			p.mu.Unlock()
			return n, nil
		}
		if room := bufSize - len(p.buf); room > 0 {
			k := min(room, len(b))
			p.buf = append(p.buf, b[:k]...)
			b, n = b[k:], n+k
			p.signalLocked()
			p.mu.Unlock()
			if len(b) == 0 {
				// All written: a peer that reads it and closes before
				// this Write returns must not turn it into EPIPE.
				return n, nil
			}
			continue
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-dl:
		}
	}
}

// CloseWrite half-closes the conn: the peer reads EOF once it has read what
// was written, and can still write to us.
func (c *conn) CloseWrite() error {
	if c.closed.Load() {
		return c.opErr("close", net.ErrClosed)
	}
	c.wr.closeWrite()
	return nil
}

// Close closes both directions: our blocked Read and Write return
// net.ErrClosed, the peer reads EOF and its writes fail with EPIPE.
func (c *conn) Close() error {
	if c.closed.Swap(true) {
		return c.opErr("close", net.ErrClosed)
	}
	c.wr.closeWrite()
	c.rd.closeRead()
	c.link.endClosed()
	return nil
}

func (c *conn) SetDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.opErr("set deadline", net.ErrClosed)
	}
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

func (c *conn) SetReadDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.opErr("set deadline", net.ErrClosed)
	}
	c.rdl.set(t)
	return nil
}

func (c *conn) SetWriteDeadline(t time.Time) error {
	if c.closed.Load() {
		return c.opErr("set deadline", net.ErrClosed)
	}
	c.wdl.set(t)
	return nil
}

// deadline is a settable point in time whose channel is closed once it
// passes (the scheme of net.Pipe's pipeDeadline).
type deadline struct {
	mu     sync.Mutex // guards the following
	timer  *time.Timer
	cancel chan struct{} // closed when the deadline has passed
}

func (d *deadline) init() { d.cancel = make(chan struct{}) }

// set moves the deadline to t; the zero time means none.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the timer fired: wait for it to close cancel
	}
	d.timer = nil
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		cancel := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(cancel) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

// wait returns a channel closed once the deadline has passed.
func (d *deadline) wait() chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
