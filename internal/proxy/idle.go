package proxy

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ErrIdle is the error a read returns on a connection wrapped by
// WithIdleTimeout once neither connection moved a byte for the timeout;
// Relay then closes both and returns it.
var ErrIdle = errors.New("idle timeout")

// WithIdleTimeout wraps a and b for Relay so that the pair is torn down
// once no byte moved in either direction for d. Activity on either side
// keeps both alive: a stream that only flows one way is not idle. The
// wrapped connections lose the kernel splice fast path, so wrap only when
// an idle timeout is configured (d <= 0 returns a and b themselves).
func WithIdleTimeout(a, b net.Conn, d time.Duration) (net.Conn, net.Conn) {
	if d <= 0 {
		return a, b // no timeout
	}
	act := &activity{}
	act.touch()
	return wrapIdle(a, act, d), wrapIdle(b, act, d)
}

// activity is the time of the last byte moved by either side (Unix ns).
type activity struct{ last atomic.Int64 }

func (a *activity) touch() { a.last.Store(time.Now().UnixNano()) }

func (a *activity) since() time.Duration { return time.Duration(time.Now().UnixNano() - a.last.Load()) }

func wrapIdle(c net.Conn, act *activity, d time.Duration) net.Conn {
	ic := &idleConn{Conn: c, act: act, d: d}
	if _, ok := c.(closeWriter); ok {
		return &idleHalfConn{ic}
	}
	return ic
}

// idleConn times out reads after d of shared inactivity, and at the read
// deadline its user sets (the MQTT relay's keep alive limit), whichever
// comes first.
type idleConn struct {
	net.Conn
	act *activity
	d   time.Duration

	mu  sync.Mutex // orders setReadDeadline's calls: a read's never overwrites a newer user deadline
	rdl time.Time  // the user's read deadline (zero: none)
}

// setReadDeadline sets the conn's read deadline to the pair's idle limit,
// or the user's deadline if earlier.
func (c *idleConn) setReadDeadline() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	dl := time.Now().Add(c.d - c.act.since())
	if !c.rdl.IsZero() && c.rdl.Before(dl) {
		dl = c.rdl
	}
	return c.Conn.SetReadDeadline(dl)
}

func (c *idleConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl = t
	c.mu.Unlock()
	return c.setReadDeadline() // a read in progress waits for the new one
}

func (c *idleConn) Read(p []byte) (int, error) {
	for {
		c.setReadDeadline()
		n, err := c.Conn.Read(p)
		if n > 0 {
			c.act.touch()
		}
		if err != nil && n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
			c.mu.Lock()
			user := c.rdl // as it is now: the user may have moved it while the read waited
			c.mu.Unlock()
			if !user.IsZero() && !time.Now().Before(user) {
				return 0, err // the user's deadline
			}
			if c.act.since() < c.d {
				continue // the other direction moved bytes meanwhile
			}
			return 0, ErrIdle
		}
		return n, err
	}
}

func (c *idleConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.act.touch()
	}
	return n, err
}

// idleHalfConn is an idleConn whose connection supports half-close.
type idleHalfConn struct{ *idleConn }

func (c *idleHalfConn) CloseWrite() error { return c.Conn.(closeWriter).CloseWrite() }
