package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/httpproxy"
	"github.com/fogmesh/fogmesh/internal/retry"
)

// One request's attempt loop (lbTransport.roundTrip) as steps over its
// state: begin an attempt, make its round trip, settle its response or
// its error. The loop runs them in turn; the asynchronous HTTP/2 path
// (l7h2async.go) makes a first attempt's round trip without waiting and
// settles it in the upstream's read loop, going on with the loop's rest
// on a goroutine only when the answer is not final.

// attempts is the loop's state.
type attempts struct {
	lt       *lbTransport
	a        *Agent
	req      *http.Request
	sv       *serviceView
	t        listenTarget
	cands    []*endpointView
	pol      retry.Policy
	perTry   time.Duration
	route    string
	rec      *reqObs
	clk      *reqShare
	rb       *replayBody
	bodyless bool
	src      string
	last     *http.Response // the last upstream response not returned, body kept
	// pending is an attempt's answer from the pool's return until it is
	// returned, kept or closed: a panic in between (a bug) gives it up
	// (ended), as the caller's guards give up what they got (its upstream
	// connection was left open, out of the pool, and a body's rest sent
	// beside it held on).
	pending *http.Response

	i, retries, dials, poolClosed int
	next                          int // cands[next%len(cands)] is the next one to try
}

// attempt is one attempt's state.
type attempt struct {
	ev          *endpointView
	st          *epStats
	start       time.Time
	active      *atomic.Int64
	ctx         context.Context
	release     func()
	perTryTimer *time.Timer
	rt          http.RoundTripper
	req         *http.Request
	// The asynchronous path's (l7h2async.go): the loop and the answer's
	// continuation.
	l     *attempts
	k     completion
	later interface{ flushLater(h2up.Flusher) bool } // nil: the request's frames are flushed at once
}

func (lt *lbTransport) initAttempts(l *attempts, req *http.Request, sv *serviceView, t listenTarget, cands []*endpointView, policy api.RetryPolicy, route string, rec *reqObs, clk *reqShare) {
	a := lt.l7.a
	*l = attempts{lt: lt, a: a, sv: sv, t: t, cands: cands, pol: retryPolicyOf(policy), perTry: time.Duration(policy.PerTryTimeout),
		route: route, rec: rec, clk: clk}
	// http.Transport closes the request body even when it fails to
	// connect; shield it (the server closes the real body when the
	// handler returns), and keep what is sent of it for a retry.
	l.bodyless = httpproxy.BodyNone(req.Body)
	if !l.bodyless {
		out := *req
		if l.pol.Retries > 0 && req.ContentLength <= retryBodyLimit {
			l.rb = newReplayBody(req.Body, retryBodyLimit)
			l.rb.want = int(max(req.ContentLength, 0))
		} else {
			out.Body = noCloseBody{req.Body}
		}
		req = &out
	}
	l.req = req
	a.retryAccount(sv, t.svc).Deposit()
	l.src = l.clk.srcOf(req)
}

// replayable reports whether another attempt can send the whole body: a
// bodyless request, or one whose body is kept (replayBody) and fits. (A
// method: the method value rb.replayable kept in the loop's state, which
// outlives the call, was one allocation per request with a body; issue 14.)
func (l *attempts) replayable() bool {
	return l.bodyless || l.rb != nil && l.rb.replayable()
}

// ended is the loop's end, its answer given or a panic in it: an answer
// still pending is given up, and the replay buffer goes back to its pool
// if no attempt reads it any more (replayBody.release; no attempt
// follows). Once is enough; more are no-ops.
func (l *attempts) ended() {
	if p := l.pending; p != nil {
		l.pending = nil
		p.Body.Close()
	}
	if l.rb != nil {
		l.rb.release()
	}
}

// run runs the loop from its next attempt to its answer.
func (l *attempts) run() (*http.Response, error) {
	defer l.ended()
	for {
		var at attempt
		if resp := l.begin(&at); resp != nil {
			return resp, nil
		}
		resp, end, err := l.a.attemptAt(at.rt, l.sv, at.ev, at.req, at.start, at.active, at.release) // end: the pool's reading as the head came (zero: none)
		l.pending = resp
		if resp, err, done := l.after(&at, resp, end, err); done {
			return resp, err
		}
	}
}

// begin sets up the next attempt in at; a response: the agent's own
// answer (authorization refused), the loop's end.
func (l *attempts) begin(at *attempt) *http.Response {
	a, req, cands := l.a, l.req, l.cands
	if l.i > 0 {
		a.m.failovers.Inc()
		// cands were picked when the request started; skip those
		// whose node gossip declared dead since: a retry there is
		// cancelled at once (watchNode), spending an attempt another
		// endpoint could have answered. With none left alive the
		// order stays as it was. (Endpoints ejected meanwhile keep
		// their place: TestRetryConformance pins that order.)
		for k := range len(cands) {
			if c := cands[(l.next+k)%len(cands)]; c.local || !a.isGossipDead(c.ep.Spec.Node) {
				l.next += k
				break
			}
		}
	}
	ev := cands[l.next%len(cands)]
	l.next++
	if l.rec != nil {
		l.rec.ev, l.rec.attempts, l.rec.retries = ev, l.i+1, l.retries
	}
	head := int64(0) // the caller's reading, taken as this attempt's start (reqShare)
	if l.i == 0 && l.clk != nil {
		head = l.clk.head
	}
	l.i++
	if l.rb != nil {
		req.Body = l.rb.attempt()
	}
	if decidesHere(ev) { // a remote endpoint's agent authorizes there
		resp, decided := a.authorizeLocalRequest(req, l.t)
		if decided {
			head = 0 // the decision may have waited (its log)
		}
		if resp != nil {
			if tb := httpproxy.TimedBodyOf(req); tb != nil {
				tb.Finish() // the agent's answer: the rest of the body is only drained
			}
			return resp
		}
	}
	// The monotonic clock alone (monoTime: one vDSO call, not
	// time.Now's two): start and end are only ever subtracted and
	// compared with other readings that have it. The pool takes it as
	// its own (Pool.RoundTripAt).
	at.ev = ev
	if head != 0 {
		at.start = httpproxy.MonoAt(time.Duration(head - 1)) // monoNow's reading as a time
	} else {
		at.start = monoTime()
	}
	at.st = a.epStats(ev)
	at.active = &at.st.Active
	at.active.Add(1)
	at.ctx, at.release = a.watchNode(req.Context(), remoteNode(ev))
	if l.perTry > 0 {
		ctx, cancel := context.WithCancelCause(at.ctx)
		timer := time.AfterFunc(l.perTry, func() { cancel(errPerTryTimeout) })
		watchRelease := at.release
		at.release = func() { timer.Stop(); cancel(nil); watchRelease() }
		at.ctx, at.perTryTimer = ctx, timer
	}
	at.rt = l.lt.upstream(l.sv, ev, l.t)
	at.req = req
	if at.ctx != req.Context() { // a copy only for a context of the attempt's own
		at.req = req.WithContext(at.ctx)
	}
	return nil
}

// after settles an attempt's outcome: done, the loop's answer; else the
// next attempt is due (after its back-off).
func (l *attempts) after(at *attempt, resp *http.Response, end time.Time, err error) (*http.Response, error, bool) {
	if err != nil {
		err = at.failed(err)
	} else {
		resp, err = l.checkRefused(at, resp)
	}
	if err == nil {
		answer := l.settle(at, resp, end)
		l.pending = nil // returned, or kept (or closed) by retryResponse
		if answer {
			return resp, nil, true
		}
		return l.retryResponse(at, resp)
	}
	return l.afterError(at, err)
}

// checkRefused releases the attempt where its response ends it, and
// turns an endpoint agent's refusal to reach its workload into a failed
// connect.
func (l *attempts) checkRefused(at *attempt, resp *http.Response) (*http.Response, error) {
	a, ev := l.a, at.ev
	release := at.release
	switch {
	case ev.mesh != "" && httpproxy.ResponseField(resp, hdrWorkloadRefused) != "" && a.ident != nil &&
		resp.StatusCode == http.StatusServiceUnavailable && l.replayable():
		// The endpoint's agent (mTLS: no workload can speak for it;
		// it strips the field from workload answers) could not
		// connect to its workload: nothing of the request reached it,
		// and its body (if any) can be sent again, so fail over
		// as after a refused connect (peerRefusedResponse).
		release()
		l.pending = nil
		resp.Body.Close()
		return nil, &dialError{errWorkloadRefused}
	case at.perTryTimer != nil:
		at.perTryTimer.Stop() // headers came in time; the context lives on with the body
		if resp.StatusCode == http.StatusSwitchingProtocols {
			release()
		} else {
			resp.Body = &releaseOnClose{ReadCloser: resp.Body, release: release}
		}
	case a.gossip == nil || resp.StatusCode == http.StatusSwitchingProtocols:
		release() // no watch, or an upgraded connection that lives on its own
	default:
		resp.Body = &releaseOnClose{ReadCloser: resp.Body, release: release}
	}
	return resp, nil
}

// settle counts a response (metrics, balancer, outlier detection) and
// reports whether it is the answer (no retry). It does not wait.
func (l *attempts) settle(at *attempt, resp *http.Response, end time.Time) bool {
	a, ev, t := l.a, at.ev, l.t
	f := httpproxy.ResponseFields(resp)
	if f.Get(hdrWorkloadRefused) != "" {
		httpproxy.ResponseHeader(resp).Del(hdrWorkloadRefused) // not honoured (a body was sent): a plain 503
		f = httpproxy.ResponseFields(resp)
	}
	if end.IsZero() {
		end = monoTime() // the monotonic clock: one vDSO call, not time.Now's two
	}
	took := end.Sub(at.start)
	at.st.Observe(end, took)
	a.requestMetrics(l.src, t.svc, l.route, ev, resp.StatusCode, took)
	grpc := strings.HasPrefix(f.Get("Content-Type"), "application/grpc")
	if grpc && resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body = &grpcStatusBody{ReadCloser: resp.Body, resp: resp, a: a, svc: t.svc, endpoint: ev.ep.Meta.Name}
	}
	a.outcomeAt(l.sv, ev, resp.StatusCode, false, end)
	o := retry.Outcome{Status: resp.StatusCode, RateLimited: f.Get("X-Envoy-Ratelimited") != ""}
	if grpc {
		o.GRPCStatus = f.Get("Grpc-Status") // a trailers-only response
	}
	if resp.StatusCode == http.StatusSwitchingProtocols || !l.lt.mayRetry(t, l.pol, l.req.Method, l.replayable(), o, l.retries) {
		if l.clk != nil {
			l.clk.end = end
		}
		return true
	}
	return false
}

// retryResponse keeps a response settle did not take as the answer and
// waits the back-off before the next attempt.
func (l *attempts) retryResponse(at *attempt, resp *http.Response) (*http.Response, error, bool) {
	if kept := keepResponse(resp, keepResponseWait(l.perTry), l.lt.keptPanicked); kept != nil {
		l.last = kept
	}
	l.retries++
	l.a.log.Debug("agent: retrying", "service", l.t.svc, "endpoint", at.ev.key, "status", resp.StatusCode, "retry", l.retries)
	if !sleepBackoff(l.req.Context(), l.retries) {
		resp, err := l.lt.exhausted(l.last, l.req.Context().Err())
		return resp, err, true
	}
	return nil, nil, false
}

// failed releases an attempt whose round trip failed and names why.
func (at *attempt) failed(err error) error {
	at.release()
	switch context.Cause(at.ctx) {
	case errNodeDead:
		// The node died during the attempt: before the request
		// was sent (still dialing) it is a failed connect.
		var de *dialError
		if errors.As(err, &de) {
			return &dialError{errNodeDead}
		}
		return fmt.Errorf("endpoint's node died mid-request: %w", errNodeDead)
	case errPerTryTimeout:
		return errPerTryTimeout
	}
	return err
}

// afterError settles an attempt that got no response (released).
func (l *attempts) afterError(at *attempt, err error) (*http.Response, error, bool) {
	a, req, ev, t := l.a, l.req, at.ev, l.t
	done := func(resp *http.Response, err error) (*http.Response, error, bool) { return resp, err, true }
	if (errors.Is(err, httpproxy.ErrPoolClosed) || errors.Is(err, h2up.ErrPoolClosed)) && req.Context().Err() == nil {
		// The pool was closed under the attempt (a view swap pruned
		// it, or the agent is stopping): nothing was sent and the
		// endpoint is not to blame. No outlier detection; a free
		// attempt on a fresh pool (the next candidate, or this one
		// again).
		if p, ok := at.rt.(*httpproxy.Pool); ok {
			l.lt.l7.h1.forget(l.sv, ev, t.port, p)
		}
		if l.poolClosed < maxAttempts {
			l.poolClosed++
			return nil, nil, false
		}
		return done(l.lt.exhausted(l.last, err))
	}
	a.requestMetrics(l.src, t.svc, l.route, ev, 0, time.Since(at.start))
	if req.Context().Err() != nil {
		return nil, err, true // client gone or request timeout: no retry
	}
	var de *dialError
	o := retry.Outcome{Failure: retry.Reset}
	// An attempt gossip cancelled (its node declared dead) fails over
	// like any other, but is no failure of the endpoint: gossip keeps a
	// dead node out while it is dead, and a false suspicion (a node
	// not scheduled for half a second on a loaded machine) must not
	// eject it for the outlier detection's 10 s once it refuted it.
	nodeDead := errors.Is(err, errNodeDead)
	switch {
	case errors.As(err, &de):
		o.Failure = retry.ConnectFailure
		a.m.dialFailures.Inc()
	case errors.Is(err, errPerTryTimeout):
		o.Failure = retry.Timeout
		a.outcome(l.sv, ev, 0, true)
	case !upstreamFailure(err):
		return nil, err, true // about the request, not the endpoint: no ejection, no retry
	default:
		if refusedStream(err) {
			o.Failure = retry.RefusedStream
		}
		if !nodeDead {
			a.outcome(l.sv, ev, 0, true)
		}
	}
	if o.Failure == retry.ConnectFailure && !nodeDead {
		a.dialFailed(l.sv, ev, err) // resets and timeouts only count (outcome above)
	}
	a.log.Info("agent: endpoint failed", "service", t.svc, "endpoint", ev.key, "tier", ev.tier, "err", err)
	if o.Failure == retry.ConnectFailure && l.dials < maxAttempts-1 && l.next < len(l.cands) {
		l.dials++
		return nil, nil, false // nothing was sent: the next endpoint, free
	}
	if !l.lt.mayRetry(t, l.pol, req.Method, l.replayable(), o, l.retries) {
		return done(l.lt.exhausted(l.last, err))
	}
	l.retries++
	if !sleepBackoff(req.Context(), l.retries) {
		return done(l.lt.exhausted(l.last, err))
	}
	return nil, nil, false
}
