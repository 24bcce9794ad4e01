package httpproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds on what a client may hold of the proxy while its request is in
// flight: a request body may not keep an upstream connection waiting for
// ever (TimedBody), nor a slow reader an HTTP/2 stream (SendTimedWriter).

// DefaultBodyTimeout is the longest wait for the next bytes of a request
// body when the service sets no timeouts.requestBody (nginx's
// client_body_timeout).
const DefaultBodyTimeout = 60 * time.Second

// ErrClientBody marks a failure reading the request body from the client:
// the client's doing, never held against the endpoint.
var ErrClientBody = errors.New("client's request body")

// ErrBodyTimeout: the client sent nothing of its request body for the body
// timeout, or not all of it within the request timeout. Answered 408.
var ErrBodyTimeout = fmt.Errorf("%w: timeout", ErrClientBody)

// TimedBody bounds reading a request body: every read waits at most gap
// (at least 15/16 of it) for bytes, and none ends later than the request
// timeout, until the response header arrives (see Stop). The bound is the
// client connection's read deadline (fast path) or the request's
// (http.ResponseController: HTTP/1.1 and h2c), so a blocked read fails at
// once and the upstream connection it held is closed.
type TimedBody struct {
	r  io.ReadCloser
	dl ReadDeadliner

	mu       sync.Mutex    // guards the following
	gap      time.Duration // longest wait for the next bytes
	deadline time.Time     // the request timeout's end; zero: none
	set      time.Time     // the read deadline last set
	off      bool          // no more deadlines: response header arrived or body ended
	expired  bool          // a read ran out of time
	onEnd    func()        // OnEnd's
	ended    bool          // a read returned io.EOF
	finished bool          // Finish: the proxy answered, the rest is drained
	duplex   bool          // Answered made net/http's HTTP/1 server full duplex

	h1     http.ResponseWriter // InitH1: net/http's HTTP/1 writer (nil: another server)
	rc     *http.ResponseController
	length int64 // InitH1: the request's Content-Length (-1: unknown)
	// closing (InitH1): the server closes the connection after this
	// request's answer whatever its body does (Connection: close, or a
	// 100-continue the answer came before), so endDuplex reads none of it.
	closing bool

	consumed atomic.Int64 // bytes read
}

// Consumed returns how many bytes of the body have been read.
func (b *TimedBody) Consumed() int64 { return b.consumed.Load() }

// Ended reports whether a read returned the body's end (io.EOF).
func (b *TimedBody) Ended() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ended
}

// NewTimedBody bounds reads of r through setDeadline (a connection's or
// http.ResponseController's SetReadDeadline), DefaultBodyTimeout between
// reads until Arm says otherwise.
func NewTimedBody(r io.ReadCloser, setDeadline func(time.Time) error) *TimedBody {
	b := new(TimedBody)
	b.Init(r, DeadlineFunc(setDeadline))
	return b
}

// Init sets up a zero TimedBody as NewTimedBody does, with its deadlines
// set through dl: a connection, or a server's response writer (h2srv's),
// whose method needs no closure made per request, and a TimedBody kept in
// its caller's allocation.
func (b *TimedBody) Init(r io.ReadCloser, dl ReadDeadliner) {
	b.r, b.dl, b.gap = r, dl, DefaultBodyTimeout
}

// InitH1 is Init for a request of net/http's HTTP/1 server, read through
// http.ResponseController: Answered makes the server full duplex, and
// Unanswered, as the handler returns, reads what is left of such a body
// itself.
func (b *TimedBody) InitH1(w http.ResponseWriter, r *http.Request) {
	b.rc = http.NewResponseController(w)
	b.Init(r.Body, b.rc)
	b.h1, b.length = w, r.ContentLength
	b.closing = r.Close || expectsContinue(r)
}

// expectsContinue reports whether r asks for "100 Continue" before its
// body (Expect: 100-continue, in any case, among other expectations): if
// the answer comes before its body was asked for, net/http's server sends
// no 100 and closes the connection after the answer. A value that only
// looks like it makes no more than a drain skipped on a connection that
// closes.
func expectsContinue(r *http.Request) bool {
	for _, v := range r.Header["Expect"] {
		if len(v) >= len("100-continue") && strings.Contains(strings.ToLower(v), "100-continue") {
			return true
		}
	}
	return false
}

// OnEnd has f called once, when a read returns the body's end (the fast
// path then watches its client while the response head is awaited); nil
// takes it back.
func (b *TimedBody) OnEnd(f func()) {
	b.mu.Lock()
	b.onEnd = f
	b.mu.Unlock()
}

// Arm applies a service's bounds: gap between reads (0: the default) and
// the request timeout (0: none), counted from now.
func (b *TimedBody) Arm(gap, timeout time.Duration) {
	b.mu.Lock()
	if gap > 0 {
		b.gap = gap
	}
	if timeout > 0 {
		b.deadline = time.Now().Add(timeout)
	}
	b.mu.Unlock()
}

// Stop lifts the bounds: once the response header has arrived, the rest of
// the body (a full-duplex stream, gRPC bidi) is the endpoint's to wait for.
func (b *TimedBody) Stop() {
	b.mu.Lock()
	if !b.off {
		b.off = true
		b.dl.SetReadDeadline(time.Time{})
	}
	b.mu.Unlock()
}

// Answered is Stop for an endpoint's response header, called on the
// handler's goroutine before the header is written: besides lifting the
// bounds, it lets net/http's HTTP/1 server go on reading the body while the
// response is written (InitH1; http.ResponseController's EnableFullDuplex;
// HTTP/2 always does). That server otherwise takes what is left of an
// unread body before it writes a header (up to 256 KiB; more, and it
// answers "Connection: close"): the endpoint, still reading the body
// through the proxy, would miss that part, and the proxy would cut the
// response once its read of the closed body failed. A proxy's own answer
// (an error, a deny: Finish) keeps that drain. The handler must call
// Unanswered as it returns (not deferred: after a panic the server closes
// the connection).
func (b *TimedBody) Answered() {
	b.Stop()
	if b.rc == nil { // set once by InitH1, before any use: not net/http's HTTP/1 server (the fast path's, HTTP/2's)
		return
	}
	b.mu.Lock()
	duplex := b.rc != nil && !b.finished && !b.duplex
	b.mu.Unlock()
	if duplex && b.rc.EnableFullDuplex() == nil {
		b.mu.Lock()
		b.duplex = true
		b.mu.Unlock()
	}
}

// AnsweredBy is Answered for the endpoint's response resp, which net/http's
// HTTP/1 server is about to write (InitH1): if the endpoint closes its
// connection after it (resp.Close: net/http's server says so when it
// answered without reading a large body) and more of a Content-Length body
// is left than a drain takes, the agent's connection will close after the
// answer too (endDuplex), and the answer says so ("Connection: close", as
// net/http's server says it when it leaves a body unread), so the client
// does not send its next request on a connection about to close. An
// endpoint that keeps its connection may read the rest as it answers (an
// echo): its answer says nothing, and if the rest is left unread after
// all, the connection closes unannounced once the answer is written; so
// does one whose chunked body's rest cannot be drained.
func (b *TimedBody) AnsweredBy(resp *http.Response) {
	if resp.Close && b.h1 != nil && b.length >= 0 && b.length-b.Consumed() > MaxDrain {
		closeAfterAnswer(b.h1) // before the header: net/http's server adds "Connection: close"
	}
	b.Answered()
}

// Finish bounds what is left of the body once no endpoint will read it:
// the response is written (fast path), or the proxy answered the request
// itself (a deny, a fault, an error). The rest is read only to be thrown
// away so that the connection can carry the next request (as net/http's
// server does before it writes its answer), and must come within one gap
// from now, whatever Stop or a watch of the client set before.
func (b *TimedBody) Finish() {
	b.mu.Lock()
	b.off, b.finished = true, true
	b.dl.SetReadDeadline(time.Now().Add(b.gap))
	b.mu.Unlock()
}

// Unanswered is Finish for the net/http server path, run as its handler
// returns: if no endpoint's answer lifted the bounds (the proxy answered:
// an error, a fault; a deny has finished the body already), the server
// drains the rest of the body before it writes the answer, with the read
// deadline this sets. A body read to its end, or answered by an endpoint
// over HTTP/2, is left alone: the server may be reading on in the
// background, where a deadline would cancel the connection. A body of
// HTTP/1 made full duplex (Answered) that has not ended is read here
// (endDuplex).
func (b *TimedBody) Unanswered() {
	b.mu.Lock()
	off, duplex, ended := b.off, b.duplex, b.ended
	b.mu.Unlock()
	switch {
	case !off:
		b.Finish()
	case duplex && !ended:
		b.endDuplex()
	}
}

// endDuplex sees to the rest of a body that net/http's HTTP/1 server was
// told to leave alone (full duplex) as its handler returns, the endpoint
// having answered whole before the body ended (an early 413, a redirect).
// The server itself would then cut the upstream transport's read of the
// body still in flight (a deadline in the past, meant for its own read in
// the background), ignore the error of its drain of the rest, and read the
// next request from what follows: the rest of a chunked body, on a
// connection whose context that error cancelled; and it would wait for a
// stalled body for ever. So the answer is flushed (the client may wait for
// it before it sends the rest), the rest is read here as the server would
// have before the header (up to MaxDrain, all of it within one gap from
// now), and a body that does not end so closes the connection once the
// answer is written. On a connection the server closes after the answer
// anyway (closing) nothing is read: a client that waits for "100
// Continue" is never sent one after a final answer, and would be waited
// for one gap for a body it never sends.
func (b *TimedBody) endDuplex() {
	b.rc.Flush()
	if !b.closing && (b.length < 0 || b.length-b.Consumed() <= MaxDrain) {
		b.Finish()
		_, err := io.CopyN(io.Discard, b, MaxDrain+1)
		if err == io.EOF {
			b.dl.SetReadDeadline(time.Time{}) // the server reads on in the background
			return
		}
	}
	// The server reads what is left of the body once more as the handler
	// returns (up to 256 KiB, body.Close), for a connection it is to
	// close: that read must end at once, not wait for the client.
	b.dl.SetReadDeadline(aLongTimeAgo)
	closeAfterAnswer(b.h1)
}

// closeAfterAnswer has net/http's HTTP/1 server close the connection once
// the response is written, even after its header went out: what
// http.MaxBytesReader does past its limit ("it tells the ResponseWriter to
// close the connection"), asked of the server's own writer behind w's
// wrappers.
func closeAfterAnswer(w http.ResponseWriter) {
	for {
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		w = u.Unwrap()
	}
	http.MaxBytesReader(w, io.NopCloser(strings.NewReader("x")), 0).Read(make([]byte, 1))
}

// Expire ends the body when the request timeout fires first: true if the
// body was still being waited for (the client's delay, answered 408).
func (b *TimedBody) Expire() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.off {
		return false
	}
	b.expired = true
	b.dl.SetReadDeadline(aLongTimeAgo) // a read still waiting fails now
	return true
}

// TimedOut reports whether a read ran out of time.
func (b *TimedBody) TimedOut() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.expired
}

func (b *TimedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.expired {
		b.mu.Unlock()
		return 0, ErrBodyTimeout // and no new wait (the fast path drains after an error)
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
			b.dl.SetReadDeadline(d)
			b.set = d
		}
	}
	b.mu.Unlock()
	n, err := b.r.Read(p)
	b.consumed.Add(int64(n))
	switch {
	case err == io.EOF:
		// Clear the deadline: net/http's server reads on in the background
		// after the body (to notice the client leaving), and a timeout
		// there would cancel the response.
		b.Stop()
		b.mu.Lock()
		f := b.onEnd
		b.onEnd, b.ended = nil, true
		b.mu.Unlock()
		if f != nil {
			f()
		}
	case err != nil && IsTimeout(err):
		b.mu.Lock()
		expired := !b.off // else Stop cleared the deadline as it passed
		b.expired = b.expired || expired
		b.mu.Unlock()
		if expired {
			return n, ErrBodyTimeout
		}
		fallthrough
	case err != nil:
		err = fmt.Errorf("%w: %w", ErrClientBody, err)
	}
	return n, err
}

func (b *TimedBody) Close() error { return b.r.Close() }

// ReadReady reports whether a Read returns without waiting (ReadReady).
func (b *TimedBody) ReadReady() bool {
	b.mu.Lock()
	expired := b.expired
	b.mu.Unlock()
	return expired || ReadReady(b.r)
}

// ReadReady reports whether a Read of r returns without waiting, as r
// says (a ReadReady method: h2srv's request body and the wrappers of it).
// The rule for a ReadReady method: when it says true, the next Read never
// blocks, on the network or on anything else (a flow-control update it
// would write, a lock held over I/O): h2up reads a ready body while it
// holds the upstream connection's write lock;
// false if it cannot tell. h2up sends a body that is ready on the
// caller's goroutine.
func ReadReady(r io.Reader) bool {
	rr, ok := r.(interface{ ReadReady() bool })
	return ok && rr.ReadReady()
}

// IsTimeout: a deadline passed (os.ErrDeadlineExceeded on TCP and HTTP/2
// streams; yamux's own timeout error on mesh streams).
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// BodyTimedOut reports whether the request's body ran out of time.
func BodyTimedOut(r *http.Request) bool {
	tb := TimedBodyOf(r)
	return tb != nil && tb.TimedOut()
}

// TimedBodyOf returns the TimedBody req reads, if the entry point gave it
// one: its body (fast path) or in its context (server path).
func TimedBodyOf(req *http.Request) *TimedBody {
	b := req.Body
	if cb, ok := b.(ClientBody); ok {
		b = cb.R
	}
	if tb, ok := b.(*TimedBody); ok {
		return tb
	}
	tb, _ := req.Context().Value(TimedBodyKey{}).(*TimedBody)
	return tb
}

// TimedBodyKey carries the server path's TimedBody in the request context
// (ReverseProxy hides the body it forwards behind its own wrapper): a
// context that answers it itself returns a *TimedBody.
type TimedBodyKey struct{}

// WithTimedBody returns ctx carrying tb, for TimedBodyOf to find behind a
// body wrapped by ReverseProxy.
func WithTimedBody(ctx context.Context, tb *TimedBody) context.Context {
	return context.WithValue(ctx, TimedBodyKey{}, tb)
}

// ArmBody applies body bounds (TimedBody.Arm) to req's TimedBody, if the
// entry point gave it one.
func ArmBody(req *http.Request, gap, timeout time.Duration) *TimedBody {
	if BodyNone(req.Body) {
		return nil
	}
	tb := TimedBodyOf(req)
	if tb != nil {
		tb.Arm(gap, timeout)
	}
	return tb
}

// SendTimedWriter bounds each write of an HTTP/2 response by its stream's
// write deadline (moved only when it would move by more than send/16).
type SendTimedWriter struct {
	http.ResponseWriter
	dl   WriteDeadliner
	send time.Duration
	set  time.Time
}

// NewSendTimedWriter bounds each write to w by send.
func NewSendTimedWriter(w http.ResponseWriter, send time.Duration) *SendTimedWriter {
	return &SendTimedWriter{ResponseWriter: w, dl: http.NewResponseController(w), send: send}
}

// Init sets up a zero SendTimedWriter as NewSendTimedWriter does, its
// deadlines set through dl (what a ResponseController of w reaches: the
// server's writer behind w's wrappers), for one kept in its caller's
// allocation.
func (w *SendTimedWriter) Init(rw http.ResponseWriter, dl WriteDeadliner, send time.Duration) {
	w.ResponseWriter, w.dl, w.send = rw, dl, send
}

func (w *SendTimedWriter) Write(p []byte) (int, error) {
	if d := time.Now().Add(w.send); d.Sub(w.set) > w.send/16 {
		w.dl.SetWriteDeadline(d)
		w.set = d
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController (ReverseProxy's flushes) reach the
// server's writer.
func (w *SendTimedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
