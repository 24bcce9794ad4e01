package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// RelayIdle is Relay with an idle timeout: once no byte moved in either
// direction for d, it closes both connections and returns ErrIdle (d <= 0:
// no timeout, plain Relay).
//
// When a and b are both *net.TCPConn (or TCPWrapper) on Linux, the
// connections stay bare, so splice(2) keeps moving the bytes, and nothing
// is done per read: a timer per pair asks the kernel (TCP_INFO: time since
// the last data received and sent, per socket) how long the pair has been
// idle, about once per d. Otherwise the connections are wrapped (WithIdleTimeout), which
// costs a read deadline per read and the splice fast path.
func RelayIdle(ctx context.Context, a, b net.Conn, d time.Duration) (aToB, bToA int64, err error) {
	if d <= 0 {
		return Relay(ctx, a, b)
	}
	a, b, w := idleConns(a, b, d)
	return relayWatched(ctx, a, b, w)
}

// TCPWrapper is a connection whose reads and writes are those of the TCP
// connection TCP returns, unchanged (it may do something on Close): a mesh
// stream with its own socket, say. RelayIdle reads idle times from the
// socket, as for a bare *net.TCPConn.
type TCPWrapper interface {
	net.Conn
	TCP() *net.TCPConn
}

// asTCP returns the TCP connection c is or wraps (TCPWrapper).
func asTCP(c net.Conn) (*net.TCPConn, bool) {
	switch t := c.(type) {
	case *net.TCPConn:
		return t, true
	case TCPWrapper:
		return t.TCP(), true
	}
	return nil, false
}

// RelayIdleTCP is RelayIdle over a and b, which wrap the TCP connections ta
// and tb (a wrapper that counts or hooks writes, say), with the idle time
// read from ta and tb: bytes the kernel moves on ta and tb without passing
// through a and b (a BPF redirect) count as activity too. Where the kernel
// does not report idle times, it falls back to RelayIdle's wrappers.
func RelayIdleTCP(ctx context.Context, a, b net.Conn, ta, tb *net.TCPConn, d time.Duration) (aToB, bToA int64, err error) {
	if d <= 0 {
		return Relay(ctx, a, b)
	}
	if _, err := tcpIdle(ta); err != nil {
		return RelayIdle(ctx, a, b, d)
	}
	return relayWatched(ctx, a, b, &idleWatch{conns: [2]*net.TCPConn{ta, tb}, d: d})
}

// relayWatched is Relay with w (nil: none) ending an idle pair.
func relayWatched(ctx context.Context, a, b net.Conn, w *idleWatch) (aToB, bToA int64, err error) {
	if w == nil {
		return Relay(ctx, a, b)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	w.start(func() { cancel(ErrIdle) })
	defer w.stop()
	return Relay(ctx, a, b)
}

// idleConns returns the connections RelayIdle relays: a and b themselves
// and a watch over them when the kernel can tell their idle time, else
// WithIdleTimeout's wrappers and no watch.
func idleConns(a, b net.Conn, d time.Duration) (net.Conn, net.Conn, *idleWatch) {
	ta, okA := asTCP(a)
	tb, okB := asTCP(b)
	if okA && okB {
		if _, err := tcpIdle(ta); err == nil {
			return a, b, &idleWatch{conns: [2]*net.TCPConn{ta, tb}, d: d}
		}
	}
	wa, wb := WithIdleTimeout(a, b, d)
	return wa, wb, nil
}

// idleWatch ends a pair of TCP connections that moved no data for d,
// checking the kernel's idle times about once per d.
type idleWatch struct {
	conns [2]*net.TCPConn
	d     time.Duration

	mu      sync.Mutex // guards the following
	t       *time.Timer
	stopped bool
}

// start arms the watch; fire runs (once) when the pair has been idle for d.
func (w *idleWatch) start(fire func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t = time.AfterFunc(w.d, func() { w.check(fire) })
}

// check is the timer's body: fire, or wait for the rest of d.
func (w *idleWatch) check(fire func()) {
	idle := w.d
	for _, c := range w.conns {
		i, err := tcpIdle(c)
		if err != nil {
			return // closed under us: Relay is ending anyway
		}
		idle = min(idle, i)
	}
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return
	}
	if idle < w.d {
		w.t.Reset(w.d - idle)
		w.mu.Unlock()
		return
	}
	w.stopped = true
	w.mu.Unlock()
	fire()
}

// stop disarms the watch.
func (w *idleWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.t.Stop()
}

// errNoTCPInfo is tcpIdle's answer where the kernel does not say.
var errNoTCPInfo = errors.New("no TCP_INFO idle times on this system")
