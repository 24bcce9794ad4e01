package agent

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// What a client may hold of the agent while its request is in flight: a
// request body may not keep an upstream connection waiting for ever
// (timedBody), and one client may not hold more than a share of the
// agent's requests, each possibly an upstream connection (clientLimiter).

// defaultBodyTimeout is the longest wait for the next bytes of a request
// body when the service sets no timeouts.requestBody (nginx's
// client_body_timeout).
const defaultBodyTimeout = 60 * time.Second

// errClientBody marks a failure reading the request body from the client:
// the client's doing, never held against the endpoint.
var errClientBody = errors.New("client's request body")

// errBodyTimeout: the client sent nothing of its request body for the body
// timeout, or not all of it within the request timeout. Answered 408.
var errBodyTimeout = fmt.Errorf("%w: timeout", errClientBody)

// timedBody bounds reading a request body: every read waits at most gap
// (at least 15/16 of it) for bytes, and none ends later than the request
// timeout, until the response header arrives (see stop). The bound is the
// client connection's read deadline (fast path) or the request's
// (http.ResponseController: HTTP/1.1 and h2c), so a blocked read fails at
// once and the upstream connection it held is closed.
type timedBody struct {
	r           io.ReadCloser
	setDeadline func(time.Time) error

	mu       sync.Mutex    // guards the following
	gap      time.Duration // longest wait for the next bytes
	deadline time.Time     // the request timeout's end; zero: none
	set      time.Time     // the read deadline last set
	off      bool          // no more deadlines: response header arrived or body ended
	expired  bool          // a read ran out of time
}

func newTimedBody(r io.ReadCloser, setDeadline func(time.Time) error) *timedBody {
	return &timedBody{r: r, setDeadline: setDeadline, gap: defaultBodyTimeout}
}

// arm applies a service's bounds: gap between reads (0: the default) and
// the request timeout (0: none), counted from now.
func (b *timedBody) arm(gap, timeout time.Duration) {
	b.mu.Lock()
	if gap > 0 {
		b.gap = gap
	}
	if timeout > 0 {
		b.deadline = time.Now().Add(timeout)
	}
	b.mu.Unlock()
}

// stop lifts the bounds: once the response header has arrived, the rest of
// the body (a full-duplex stream, gRPC bidi) is the endpoint's to wait for.
func (b *timedBody) stop() {
	b.mu.Lock()
	if !b.off {
		b.off = true
		b.setDeadline(time.Time{})
	}
	b.mu.Unlock()
}

// finish bounds what is left of the body once no endpoint will read it:
// the response is written (fast path), or the agent answered the request
// itself (a deny, a fault, an error). The rest is read only to be thrown
// away so that the connection can carry the next request (as net/http's
// server does before it writes its answer), and must come within one gap
// from now, whatever stop or the client watch set before.
func (b *timedBody) finish() {
	b.mu.Lock()
	b.off = true
	b.setDeadline(time.Now().Add(b.gap))
	b.mu.Unlock()
}

// unanswered is finish for the net/http server path, run as its handler
// returns: if no endpoint's answer lifted the bounds (the agent answered:
// an error, a fault; a deny has finished the body already), the server
// drains the rest of the body before it writes the answer, with the read
// deadline this sets. A body read to its end, or answered by an endpoint,
// is left alone: the server may be reading on in the background, where a
// deadline would cancel the connection.
func (b *timedBody) unanswered() {
	b.mu.Lock()
	off := b.off
	b.mu.Unlock()
	if !off {
		b.finish()
	}
}

// expire ends the body when the request timeout fires first: true if the
// body was still being waited for (the client's delay, answered 408).
func (b *timedBody) expire() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.off {
		return false
	}
	b.expired = true
	b.setDeadline(aLongTimeAgo) // a read still waiting fails now
	return true
}

func (b *timedBody) timedOut() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.expired
}

func (b *timedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.expired {
		b.mu.Unlock()
		return 0, errBodyTimeout // and no new wait (the fast path drains after an error)
	}
	if !b.off {
		d := time.Now().Add(b.gap)
		if !b.deadline.IsZero() && b.deadline.Before(d) {
			d = b.deadline
		}
		// Moved only when it would move by more than gap/16: setting an
		// HTTP/2 stream's deadline is a message to its connection's
		// goroutine, and a fast body is read in many small parts.
		if ahead := d.Sub(b.set); b.set.IsZero() || ahead < 0 || ahead > b.gap/16 {
			b.setDeadline(d)
			b.set = d
		}
	}
	b.mu.Unlock()
	n, err := b.r.Read(p)
	switch {
	case err == io.EOF:
		// Clear the deadline: net/http's server reads on in the background
		// after the body (to notice the client leaving), and a timeout
		// there would cancel the response.
		b.stop()
	case err != nil && isTimeout(err):
		b.mu.Lock()
		expired := !b.off // else stop cleared the deadline as it passed
		b.expired = b.expired || expired
		b.mu.Unlock()
		if expired {
			return n, errBodyTimeout
		}
		fallthrough
	case err != nil:
		err = fmt.Errorf("%w: %w", errClientBody, err)
	}
	return n, err
}

func (b *timedBody) Close() error { return b.r.Close() }

// isTimeout: a deadline passed (os.ErrDeadlineExceeded on TCP and HTTP/2
// streams; yamux's own timeout error on mesh streams).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// bodyTimedOut reports whether the request's body ran out of time.
func bodyTimedOut(r *http.Request) bool {
	tb := timedBodyOf(r)
	return tb != nil && tb.timedOut()
}

// timedBodyOf returns the timedBody req reads, if the entry point gave it
// one: its body (fast path) or in its context (server path).
func timedBodyOf(req *http.Request) *timedBody {
	b := req.Body
	if cb, ok := b.(clientBody); ok {
		b = cb.r
	}
	if tb, ok := b.(*timedBody); ok {
		return tb
	}
	tb, _ := req.Context().Value(timedBodyKey{}).(*timedBody)
	return tb
}

// timedBodyKey carries the server path's timedBody in the request context
// (ReverseProxy hides the body it forwards behind its own wrapper).
type timedBodyKey struct{}

// armBody applies the service's body bounds to req's timedBody, if the
// entry point gave it one.
func armBody(req *http.Request, gap, timeout time.Duration) *timedBody {
	if req.Body == nil || req.Body == http.NoBody {
		return nil
	}
	tb := timedBodyOf(req)
	if tb != nil {
		tb.arm(gap, timeout)
	}
	return tb
}

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

// sendTimedWriter bounds each write of an HTTP/2 response by its stream's
// write deadline (moved only when it would move by more than send/16).
type sendTimedWriter struct {
	http.ResponseWriter
	rc   *http.ResponseController
	send time.Duration
	set  time.Time
}

func (w *sendTimedWriter) Write(p []byte) (int, error) {
	if d := time.Now().Add(w.send); d.Sub(w.set) > w.send/16 {
		w.rc.SetWriteDeadline(d)
		w.set = d
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController (ReverseProxy's flushes) reach the
// server's writer.
func (w *sendTimedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// defaultMaxPerClient is how many L7 requests one client (source address)
// may have in flight through the agent when the config sets no
// maxRequestsPerClient: a quarter of the default maxRequests.
const defaultMaxPerClient = 256

// errClientLimit: the client has maxRequestsPerClient requests in flight.
// Answered 429: it is this client's excess, not the service's overload.
var errClientLimit = errors.New("too many requests in flight from this client")

// clientLimiter counts each client's requests in flight, from admission
// until the response body is done. Clients are keyed by source address
// (the identity of a local workload is its address).
type clientLimiter struct {
	mu sync.Mutex
	n  map[string]int
}

// acquire takes one of limit places for the client at remote (an
// "ip:port") into h; false when the client is at its limit. limit <= 0:
// no limit.
func (l *clientLimiter) acquire(remote string, limit int, h *reqHold) bool {
	if limit <= 0 {
		return true
	}
	key := remote
	if host, _, err := net.SplitHostPort(remote); err == nil {
		key = host
	}
	l.mu.Lock()
	if l.n == nil {
		l.n = map[string]int{}
	}
	if l.n[key] >= limit {
		l.mu.Unlock()
		return false
	}
	l.n[key]++
	l.mu.Unlock()
	h.clients, h.client = l, key
	return true
}

func (l *clientLimiter) release(key string) {
	l.mu.Lock()
	if l.n[key]--; l.n[key] <= 0 {
		delete(l.n, key) // no entry kept per client that ever came
	}
	l.mu.Unlock()
}

// reqHold is what a request holds until its response body is done.
type reqHold struct {
	clients  *clientLimiter // the client's place (key client)
	client   string
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
func (h *reqHold) onDone(resp *http.Response) {
	if rwc, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &doneConn{ReadWriteCloser: rwc, h: *h}
		return
	}
	if resp.Body == nil {
		h.release()
		return
	}
	resp.Body = &doneBody{ReadCloser: resp.Body, h: *h}
}

// doneBody releases what its request holds once the response body is
// done: read to its end, failed, or closed. It forwards bufferedUpstream,
// so the fast path still writes a buffered response in one go.
type doneBody struct {
	io.ReadCloser
	once sync.Once
	h    reqHold
}

func (b *doneBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.once.Do(b.h.release)
	}
	return n, err
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.h.release)
	return err
}

func (b *doneBody) bufferedUpstream() int {
	if ub, ok := b.ReadCloser.(upstreamBuffered); ok {
		return ub.bufferedUpstream()
	}
	return 0
}

// doneConn is doneBody for an upgraded connection (101): ReverseProxy
// needs the body to be an io.ReadWriteCloser, and the connection holds its
// places until it is closed.
type doneConn struct {
	io.ReadWriteCloser
	once sync.Once
	h    reqHold
}

func (c *doneConn) Close() error {
	err := c.ReadWriteCloser.Close()
	c.once.Do(c.h.release)
	return err
}
