package agent

import (
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/h2srv"
	"github.com/fogmesh/fogmesh/internal/h2up"
)

// Asynchronous completion of HTTP/2 requests (issue 14). A request of
// the agent's HTTP/2 server to an h2c or gRPC endpoint is sent (its
// route, admission, balancing and first attempt, on the handler's
// goroutine) and its handler returns with the stream open (h2srv.Detach);
// the endpoint's response is taken on the upstream connection's read loop
// (h2up.Pool.Start), which, when the whole response came at once and is
// the answer (not retried), runs the response side there: the attempt's
// metrics, balancer and outlier bookkeeping, the request's holds, the
// header copy and the client's response, left in the client connection's
// buffer and flushed once per upstream read. No goroutine waits parked
// per request. Anything else (a response whose body streams, a retry, an
// error, a response larger than asyncInlineMax, a client's window or
// writer that would make the read loop wait) goes on on a goroutine, as
// the handler would have.

// asyncH2 switches the asynchronous path on (the default), with h2srv's
// InlineAll (the handlers of a client read's streams on its connection's
// read loop, their upstream frames flushed once after them), read when
// the agent starts. Measured in session 35 (BENCHMARKS.md) it raised the
// h2c rate and lowered the agent's CPU and system calls per request. A
// handler that waits before it detaches hands the read loop and the
// streams queued behind it on first (l7h2wait.go, session 36). Tests may
// switch it off to compare.
var asyncH2 atomic.Bool

func init() { asyncH2.Store(true) }

// asyncInline counts responses finished on an upstream's read loop
// (tests).
var asyncInline atomic.Int64

// asyncInlineMax is the largest response body completed on the upstream's
// read loop: it must fit h2srv's write buffer (one DATA frame).
const asyncInlineMax = 8 << 10

// completion is a request's answer's continuation: rl non-nil on the
// upstream's read loop (it must not wait), nil on a goroutine that may.
type completion interface {
	complete(resp *http.Response, err error, rl *h2up.ReadLoop)
}

// h2Fwd is an asynchronous forward's state, in one allocation: its
// stream, its request, serve's state and its first attempt's.
type h2Fwd struct {
	s       *l7
	as      *h2srv.Async
	rw      http.ResponseWriter
	in, out *http.Request
	call    *h2Call
	nc      *noopCloseBody
	sg      serving
	at      attempt
	done    doneBody // the response body's wrapper (serving.hold)
}

// startH2 forwards out asynchronously if it can: false, nothing done.
func (s *l7) startH2(rw http.ResponseWriter, in, out *http.Request, transport http.RoundTripper, call *h2Call, nc *noopCloseBody) bool {
	lt, ok := transport.(*lbTransport)
	if !ok || lt.h1 || call == nil || s.a.obs != nil || !asyncH2.Load() {
		return false
	}
	// A lone stream (a gRPC client's one call in flight) runs on its
	// connection's read loop (h2srv), free to wait for the answer: on the
	// upstream's read loop, the responses to many such clients would be
	// written one after the other by one goroutine.
	if h2srv.OpenStreams(rw) < 2 {
		return false
	}
	as := h2srv.Detach(rw)
	if as == nil {
		return false
	}
	call.detached = true
	f := &h2Fwd{s: s, as: as, rw: rw, in: in, out: out, call: call, nc: nc}
	f.at.later = f
	f.sg.done = &f.done
	lt.startAsync(&f.sg, &f.at, out, f)
	return true
}

// flushLater has fl flushed after the handlers its connection's read
// loop runs with this one (h2srv.AtWait): false if this one does not run
// there.
func (f *h2Fwd) flushLater(fl h2up.Flusher) bool { return h2srv.AtWait(f.rw, fl) }

// complete is forwardH2's rest for a detached stream.
func (f *h2Fwd) complete(res *http.Response, err error, rl *h2up.ReadLoop) {
	if rl != nil && err != nil {
		go f.complete(res, err, nil) // not expected: rl's responses have ended
		return
	}
	s, as := f.s, f.as
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				s.a.panicked("completing an HTTP/2 response", p)
			}
			if res != nil {
				abandonResponse(res.Body, p, false)
			}
			as.Abort()
		}
	}()
	cut := s.respondH2(f.rw, f.in, f.out, res, err)
	if f.nc != nil {
		f.nc.Close()
	}
	if tb := f.call.ctx.tb; tb != nil {
		tb.Unanswered()
	}
	switch {
	case cut:
		as.Abort()
	case rl == nil:
		as.Finish()
	default:
		if fl, ok := as.TryFinish(); ok {
			rl.AtWait(fl)
			asyncInline.Add(1)
		} else {
			go as.Finish() // the client's window, or its writer, would make the read loop wait
		}
	}
}

// h2Detached reports whether the request of ctx (newL7's handler's) was
// forwarded asynchronously: its handler's end does not end its body.
func h2Detached(ctx any) bool {
	c, ok := ctx.(*h2CallCtx)
	return ok && c.call != nil && c.call.detached
}

// startAsync is serve for a request whose answer goes to k rather than
// being returned (k may run before startAsync returns); sg and at are
// the caller's, for the request's life. A panic in prepare (a bug) is
// k's answer, an error, as attempts.startAsync's: the caller detached
// its stream, which only k's answer ends (h2srv keeps it till then).
func (lt *lbTransport) startAsync(sg *serving, at *attempt, req *http.Request, k completion) {
	handed := false
	defer func() {
		if handed {
			return
		}
		p := recover()
		sg.hold(nil, nil, nil) // what the request holds goes back
		lt.l7.a.panicked("preparing an HTTP/2 request", p)
		k.complete(nil, fmt.Errorf("%w: %v", errAsyncPanicked, p), nil)
	}()
	resp, err, ok := lt.prepare(sg, req, nil, nil, nil)
	handed = true
	if !ok {
		sg.hold(resp, err, nil)
		k.complete(resp, err, nil)
		return
	}
	sg.k = k
	sg.l.startAsync(at, sg)
}

// complete is serve's rest (finish, hold) for startAsync's request.
// A panic in finish or hold (a bug) is logged and the request answered
// with errAsyncPanicked all the same (its callers do not answer again).
func (sg *serving) complete(resp *http.Response, err error, rl *h2up.ReadLoop) {
	finished, held := false, false
	defer func() {
		if held {
			return
		}
		if p := recover(); p != nil {
			sg.lt.l7.a.panicked("finishing an HTTP/2 response", p)
			if resp != nil {
				abandonResponse(resp.Body, p, false)
			}
			if !finished { // finish panicked: hold did not run
				sg.hold(nil, nil, nil)
			}
			sg.k.complete(nil, fmt.Errorf("%w: %v", errAsyncPanicked, p), rl)
		}
	}()
	resp, err = sg.finish(resp, err)
	finished = true
	sg.hold(resp, err, sg.done)
	held = true
	sg.k.complete(resp, err, rl)
}

// errAsyncPanicked: the asynchronous path panicked (a bug) before the
// request had its answer; the request fails.
var errAsyncPanicked = errors.New("agent: the asynchronous HTTP/2 path panicked")

// startAsync runs the loop's first attempt (at) without waiting for its
// response where its endpoint's pool can (h2up), else the loop as run
// does; k gets the answer. A panic in it (a bug) is k's answer, an
// error, unless k had one or h2up's completion has the attempt: what the
// request holds goes back either way (lbTransport.startAsync handed it).
func (l *attempts) startAsync(at *attempt, k completion) {
	began, owned := false, false
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		l.a.panicked("starting an HTTP/2 request", p)
		if owned {
			return
		}
		if began { // as attemptAt's
			at.active.Add(-1)
			at.release()
		}
		l.ended()
		k.complete(nil, fmt.Errorf("%w: %v", errAsyncPanicked, p), nil)
	}()
	if resp := l.begin(at); resp != nil {
		l.ended()
		owned = true
		k.complete(resp, nil, nil)
		return
	}
	p, ok := at.rt.(h2Pool)
	if !ok || len(l.sv.svc.Spec.Egress) > 0 {
		h2WillWait(l.req.Context())                                                                  // l7h2wait.go
		resp, end, err := l.a.attemptAt(at.rt, l.sv, at.ev, at.req, at.start, at.active, at.release) // releases at on its own panic
		owned = true
		l.resume(at, resp, end, err, false, k)
		return
	}
	at.l, at.k = l, k
	began = true
	var err error
	if at.later != nil { // its frames go with the next requests' (h2srv.AtWait)
		var fl h2up.Flusher
		fl, err = p.StartLater(at.req, at)
		if err == nil {
			owned = true // h2up's completion has it, whatever the flush does
			if !at.later.flushLater(fl) {
				fl.FlushPending()
			}
		}
	} else {
		err = p.Start(at.req, at)
	}
	owned = true
	if err != nil {
		at.active.Add(-1)
		h2WillWait(l.req.Context()) // a retry's back-off, the next attempts (l7h2wait.go)
		l.resume(at, nil, time.Time{}, err, false, k)
	}
}

// Complete is the h2up.Completion of startAsync's attempt.
func (at *attempt) Complete(resp *http.Response, err error, rl *h2up.ReadLoop) {
	l, k := at.l, at.k
	at.active.Add(-1)
	if rl == nil {
		l.resume(at, resp, time.Time{}, err, false, k)
		return
	}
	answered := false
	defer func() {
		if p := recover(); p != nil {
			l.a.panicked("settling an HTTP/2 response", p)
			if resp != nil && !answered {
				abandonResponse(resp.Body, p, false)
			}
			if !answered { // else k's own (serving.complete) answered
				go l.failAsync(k, p)
			}
		}
	}()
	if bufferedUpstream(resp.Body) > asyncInlineMax {
		go l.resume(at, resp, time.Time{}, nil, false, k)
		return
	}
	resp, err = l.checkRefused(at, resp)
	if err == nil && l.settle(at, resp, time.Time{}) {
		l.ended()
		answered = true
		k.complete(resp, nil, rl)
		return
	}
	go l.resume(at, resp, time.Time{}, err, true, k)
}

// resume settles an attempt (it may wait: a retry's back-off), runs the
// loop on if that was not the answer, and gives k the answer. checked:
// checkRefused and settle ran already (resp: not the answer; err:
// checkRefused's, the attempt released). It runs on a goroutine of its
// own too: a panic in it (a bug) is logged, and k's answer if k had none.
func (l *attempts) resume(at *attempt, resp *http.Response, end time.Time, err error, checked bool, k completion) {
	answered := false
	defer func() {
		if p := recover(); p != nil {
			l.a.panicked("settling an HTTP/2 response", p)
			l.ended() // a pending answer given up (run's guard)
			if !answered {
				k.complete(nil, fmt.Errorf("%w: %v", errAsyncPanicked, p), nil)
			}
		}
	}()
	var done bool
	switch {
	case !checked:
		l.pending = resp
		resp, err, done = l.after(at, resp, end, err)
	case err != nil:
		resp, err, done = l.afterError(at, err)
	default:
		resp, err, done = l.retryResponse(at, resp)
	}
	if !done {
		resp, err = l.run()
	}
	l.ended()
	answered = true
	k.complete(resp, err, nil)
}

// failAsync gives k a panic's error on a goroutine of its own (not the
// upstream's read loop); a panic in k is logged.
func (l *attempts) failAsync(k completion, p any) {
	defer l.a.recoverGo("answering an HTTP/2 request")
	k.complete(nil, fmt.Errorf("%w: %v", errAsyncPanicked, p), nil)
}
