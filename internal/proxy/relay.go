// Package proxy moves bytes between two connections. It exists so that every
// L4 path in fogmesh (the agent's local listeners, the mesh port's streams)
// shares one relay with the same half-close, error and teardown rules, and so
// that TCP-to-TCP relaying keeps the kernel's splice fast path on Linux.
package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
)

// closeWriter is implemented by connections that support half-close
// (*net.TCPConn, *net.UnixConn, *tls.Conn, mesh streams).
type closeWriter interface {
	CloseWrite() error
}

// Relay copies bytes both ways between a and b until both directions finish,
// then closes both. It returns the bytes copied a->b and b->a.
//
// When one side's read ends with EOF, Relay half-closes the other side's
// write (CloseWrite) so request/response protocols that half-close keep
// working; the other direction goes on until it ends too. A connection
// without CloseWrite cannot signal EOF on its own, so in that case Relay
// closes both connections instead of leaving the peer waiting forever.
//
// When a direction fails with an error other than EOF (for example the peer
// reset the connection), Relay closes both connections so the other
// direction ends too, and returns that error. When ctx is done, Relay closes
// both connections and returns context.Cause(ctx) (ctx.Err() unless ctx was
// cancelled with a cause). Errors that are only the echo of
// Relay's own teardown (use of a closed connection) and errors from the
// second direction after the first one finished cleanly (the peer went away
// once its half of the exchange was over) are normal teardown: Relay
// returns nil for those.
//
// When a and b are both *net.TCPConn, each direction is io.Copy on the bare
// connections, so on Linux the kernel splices the bytes without copying them
// through user space. Do not wrap them if you want that. Connections that
// cannot copy by themselves (TLS, wrapped ones) are copied through a small
// buffer while idle and a pooled large one during bursts (copyConn), so an
// idle Relay holds about 4 KiB of buffers, not 64.
//
// Relay has no idle timeout; a direction that never ends keeps Relay
// running until ctx is done.
func Relay(ctx context.Context, a, b net.Conn) (aToB, bToA int64, err error) {
	r := &relay{a: a, b: b}
	stop := context.AfterFunc(ctx, func() { r.shutdown(context.Cause(ctx)) })
	defer stop()

	done := make(chan struct{})
	go func() {
		defer close(done)
		bToA = r.copyHalf(a, b)
	}()
	aToB = r.copyHalf(b, a)
	<-done
	stop()

	r.shutdown(nil)
	return aToB, bToA, r.err
}

// relay is the shared state of the two directions of one Relay call.
type relay struct {
	a, b net.Conn

	mu       sync.Mutex // guards the following
	closed   bool       // both conns closed by shutdown; later errors are its echo
	finished bool       // one direction already ended cleanly
	ended    int        // directions that returned, cleanly or not
	err      error      // first real error, returned by Relay
}

// copyHalf copies src to dst until src ends, then half-closes dst.
// It is the body of each direction's goroutine.
func (r *relay) copyHalf(dst, src net.Conn) int64 {
	n, err := copyConn(dst, src)
	r.mu.Lock()
	r.ended++
	r.mu.Unlock()
	if err != nil {
		r.fail(err)
		return n
	}

	r.mu.Lock()
	r.finished = true
	r.mu.Unlock()

	if cw, ok := dst.(closeWriter); ok {
		// An error here means dst is already gone; the other direction
		// will notice on its own.
		_ = cw.CloseWrite()
	} else {
		r.shutdown(nil)
	}
	return n
}

// fail records err unless it is a by-product of the teardown, then closes
// both conns so the other direction cannot hang on a vanished peer.
func (r *relay) fail(err error) {
	r.mu.Lock()
	switch {
	case r.closed, r.err != nil:
		// Echo of our own close, or a second error.
	case r.finished && isTeardown(err):
		// The other direction already ended cleanly; the peer hung up.
	default:
		r.err = err
	}
	r.mu.Unlock()
	r.shutdown(nil)
}

// shutdown closes both conns once. cause, if not nil, becomes Relay's error
// unless one was already recorded.
func (r *relay) shutdown(cause error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	if r.err == nil && cause != nil && r.ended < 2 {
		r.err = cause
	}
	r.mu.Unlock()
	r.a.Close()
	r.b.Close()
}

// isTeardown reports whether err is what a connection returns once its peer
// or our side has closed it.
func isTeardown(err error) bool {
	return errors.Is(err, net.ErrClosed) ||
		errors.Is(err, io.ErrClosedPipe) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNRESET)
}
