package agent

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// What a client may hold of the agent while its request is in flight: a
// request body may not keep an upstream connection waiting for ever
// (httpproxy.TimedBody, bounded by the service's timeouts), and one client
// may not hold more than a share of the agent's requests, each possibly an
// upstream connection (clientLimiter).

// defaultSendTimeout bounds each wait to write response bytes to a client
// when the service sets no timeouts.send (nginx's send_timeout).
const defaultSendTimeout = 60 * time.Second

// sendTimeout is the service's bound on each write to a client.
func (s *l7) sendTimeout(t listenTarget) time.Duration {
	if sv := s.a.view.Load().services[t.svc]; sv != nil && sv.svc.Spec.Timeouts.Send > 0 {
		return time.Duration(sv.svc.Spec.Timeouts.Send)
	}
	return defaultSendTimeout
}

// defaultMaxPerClient is how many L7 requests one client (source address)
// may have in flight through the agent when the config sets no
// maxRequestsPerClient: a quarter of the default maxRequests.
const defaultMaxPerClient = 256

// errClientLimit: the client has maxRequestsPerClient requests in flight.
// Answered 429: it is this client's excess, not the service's overload.
var errClientLimit = errors.New("too many requests in flight from this client")

// reqHold is what a request holds until its response body is done.
type reqHold struct {
	clients  *clientLimiter // the client's place
	client   *clientPlace
	inflight *atomic.Int64 // the agent's slot (admit)
	slot     func()        // the circuit breaker's slot (limitRequest)
	timeout  func()        // the request timeout's timer and context
}

func (h *reqHold) release() {
	if h.timeout != nil {
		h.timeout()
	}
	if h.slot != nil {
		h.slot()
	}
	if h.inflight != nil {
		h.inflight.Add(-1)
	}
	if h.clients != nil {
		h.clients.release(h.client)
	}
	*h = reqHold{}
}

// onDone makes resp's body release h when it is done.
func (h *reqHold) onDone(resp *http.Response) { h.onDoneIn(resp, nil) }

// onDoneIn is onDone with done (nil: a new one) as the body's wrapper,
// when it takes one: its last body, if any, was done (closed) before.
func (h *reqHold) onDoneIn(resp *http.Response, done *doneBody) {
	if rwc, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &doneConn{ReadWriteCloser: rwc, h: *h}
		return
	}
	if resp.Body == nil {
		h.release()
		return
	}
	if g, ok := resp.Body.(*grpcStatusBody); ok && !g.doneUsed {
		g.doneUsed = true // the gRPC response's wrappers: one allocation
		g.done.ReadCloser, g.done.h = g, *h
		resp.Body = &g.done
		return
	}
	if done == nil {
		done = new(doneBody)
	}
	*done = doneBody{ReadCloser: resp.Body, h: *h}
	resp.Body = done
}

// doneBody releases what its request holds once the response body is
// done: read to its end, failed, or closed. It forwards BufferedUpstream,
// so the fast path still writes a buffered response in one go.
type doneBody struct {
	io.ReadCloser
	once sync.Once
	h    reqHold
	// closed: Close was called (on the request's goroutine, as abandon).
	// A body read to its end is released but not closed: its wrappers
	// below (releaseOnClose) still wait for the Close.
	closed bool
}

func (b *doneBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.once.Do(b.h.release)
	}
	return n, err
}

func (b *doneBody) Close() error {
	b.closed = true
	defer b.once.Do(b.h.release) // a Close that panics releases too
	return b.ReadCloser.Close()
}

// abandon is Close for a body its request's code never closed (a panic
// between the round trip and the close: the fast path's connection calls
// it as it ends, h1fast.go). It does nothing once the body was closed:
// the wrapper is lent again for each request, and the body it last
// wrapped, closed, may be a pooled response another connection reads by
// now. A body only read to its end is closed (its request's hold was
// released by the read). The hold is released even when the body's Close
// panics (a bug, during the panic that ended the connection, or a panic
// of its own).
func (b *doneBody) abandon() {
	if b.closed || b.ReadCloser == nil {
		b.once.Do(b.h.release)
		return
	}
	b.closed = true
	defer b.once.Do(b.h.release)
	b.ReadCloser.Close()
}

func (b *doneBody) BufferedUpstream() int {
	if ub, ok := b.ReadCloser.(httpproxy.UpstreamBuffered); ok {
		return ub.BufferedUpstream()
	}
	return 0
}

func (b *doneBody) UpstreamEnded() bool { return upstreamEnded(b.ReadCloser) }

// doneConn is doneBody for an upgraded connection (101): ReverseProxy
// needs the body to be an io.ReadWriteCloser, and the connection holds its
// places until it is closed.
type doneConn struct {
	io.ReadWriteCloser
	once sync.Once
	h    reqHold
}

func (c *doneConn) Close() error {
	defer c.once.Do(c.h.release) // a Close that panics releases too
	return c.ReadWriteCloser.Close()
}
