package httpproxy

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// H2DrainConn wraps the connection of an HTTP/2 client (prior knowledge,
// as the agent's h2c and gRPC upstream transports speak) so that it can
// be drained from outside: after Drain, the client reads a GOAWAY frame
// (NO_ERROR, last stream 2^31-1) at the next boundary between the
// server's frames, as if the server were shutting down gracefully. The
// client takes no new request on it (net/http's HTTP/2 transport dials
// another connection for them), every stream it opened goes on to its
// end, and it closes the connection once the last one ended. The agent
// drains a connection whose mesh stream is on a session the path manager
// retired, so that long-lived HTTP/2 connections leave the old path too.
//
// One goroutine reads (the client's read loop); Drain may be called from
// any.
type H2DrainConn struct {
	net.Conn
	draining atomic.Bool
	kicked   atomic.Bool // Drain set a past read deadline to wake a Read
	goneAway atomic.Bool // the client read the whole GOAWAY
	onClose  func()
	closed   sync.Once

	// Read's own.
	fr       h2Frames
	pending  []byte // of the GOAWAY, not yet read
	injected bool
}

// NewH2DrainConn wraps c; onClose (may be nil) runs once c is closed.
func NewH2DrainConn(c net.Conn, onClose func()) *H2DrainConn {
	return &H2DrainConn{Conn: c, onClose: onClose}
}

// h2GoAway is a GOAWAY frame on stream 0: no error, every stream the
// client opened or will open until it reads this one goes on.
var h2GoAway = []byte{0, 0, 8, 7, 0, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0}

// drainPast is a time in the past: a read deadline that wakes a blocked
// Read at once.
var drainPast = time.Unix(1, 0)

// Drain makes the client read a GOAWAY at the next frame boundary; a Read
// blocked waiting for the server (a quiet long-lived stream) is woken for
// it. It is idempotent.
func (c *H2DrainConn) Drain() {
	if c.draining.Swap(true) {
		return
	}
	c.kicked.Store(true)
	c.Conn.SetReadDeadline(drainPast)
}

// Draining reports whether Drain was called.
func (c *H2DrainConn) Draining() bool { return c.draining.Load() }

// GoneAway reports whether the client has read the GOAWAY.
func (c *H2DrainConn) GoneAway() bool { return c.goneAway.Load() }

// Read reads the server's frames, with the GOAWAY between two of them
// once draining. While draining it reads no further than the end of the
// current frame, so that the GOAWAY goes in whole between frames.
func (c *H2DrainConn) Read(p []byte) (int, error) {
	for {
		if len(c.pending) > 0 {
			n := copy(p, c.pending)
			c.pending = c.pending[n:]
			if len(c.pending) == 0 {
				c.goneAway.Store(true)
			}
			return n, nil
		}
		if c.draining.Load() && !c.injected {
			if c.fr.frames > 0 && c.fr.atBoundary() { // after the server's SETTINGS
				c.injected = true
				c.pending = h2GoAway
				continue
			}
			p = p[:c.fr.untilBoundary(len(p))]
		}
		n, err := c.Conn.Read(p)
		c.fr.advance(p[:n])
		if err != nil && isTimeout(err) && c.kicked.Swap(false) {
			// Drain's deadline, not the client's (it sets none on reads).
			c.Conn.SetReadDeadline(time.Time{})
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

// Close closes the connection and runs onClose once.
func (c *H2DrainConn) Close() error {
	err := c.Conn.Close()
	c.closed.Do(func() {
		if c.onClose != nil {
			c.onClose()
		}
	})
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// h2Frames follows the frame boundaries of an HTTP/2 byte stream: a
// 9-byte header whose first three bytes are the payload's length, then
// the payload.
type h2Frames struct {
	hdr    [9]byte
	hdrN   int // header bytes seen of the current frame
	left   int // payload bytes left of the current frame
	frames int // whole frames seen
}

func (f *h2Frames) atBoundary() bool { return f.hdrN == 0 && f.left == 0 }

// untilBoundary bounds a read of up to n bytes to the current frame's end
// (the header's end, while in a header).
func (f *h2Frames) untilBoundary(n int) int {
	if f.left > 0 {
		return min(n, f.left)
	}
	return min(n, len(f.hdr)-f.hdrN)
}

// advance follows b, the next bytes of the stream.
func (f *h2Frames) advance(b []byte) {
	for len(b) > 0 {
		if f.left > 0 {
			k := min(f.left, len(b))
			f.left -= k
			b = b[k:]
			if f.left == 0 {
				f.frames++
			}
			continue
		}
		k := copy(f.hdr[f.hdrN:], b)
		f.hdrN += k
		b = b[k:]
		if f.hdrN == len(f.hdr) {
			f.hdrN = 0
			f.left = int(f.hdr[0])<<16 | int(f.hdr[1])<<8 | int(f.hdr[2])
			if f.left == 0 {
				f.frames++
			}
		}
	}
}

// retireNotifier is a connection that can say when the path under it was
// left for a better one (transport's mesh streams: AfterRetire).
type retireNotifier interface {
	AfterRetire(f func()) (stop func() bool)
}

// DrainOnRetire prepares c, a connection an HTTP/2 client is about to
// use, to be drained (H2DrainConn) when its mesh session is retired, so
// that the client's next requests take the new path while the ones in
// flight end on the old; closeIdle (the client transport's
// CloseIdleConnections; may be nil) runs first, for an idle client
// connection would otherwise outlive the drain until its idle timeout. A
// connection that cannot tell is returned as it is.
func DrainOnRetire(c net.Conn, closeIdle func()) net.Conn {
	rn, ok := c.(retireNotifier)
	if !ok {
		return c
	}
	var stop func() bool
	var mu sync.Mutex // orders stop's assignment before Close reads it
	dc := NewH2DrainConn(c, func() {
		mu.Lock()
		defer mu.Unlock()
		stop()
	})
	mu.Lock()
	stop = rn.AfterRetire(func() {
		if closeIdle != nil {
			closeIdle()
		}
		dc.Drain()
	})
	mu.Unlock()
	return dc
}
