package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// One L7 request's way to an endpoint (lbTransport.RoundTrip): its route
// rule, traffic class and admission, fault, backend and subset, circuit
// breaker, mirror, hash and session order, and timeout; the attempts
// themselves are l7retry.go's.

// lbTransport picks an endpoint for every request, nearest tier first, and
// moves to the next one when connecting fails.
type lbTransport struct {
	l7 *l7
	h1 bool // requests of the HTTP/1.1 fast path: HTTP/1.1 endpoints over its pools
}

func (lt *lbTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return lt.roundTripAt(req, nil, nil, nil)
}

// roundTripAt is RoundTrip for a request whose client connection keeps its
// client's place in the per-client limit (place; nil: none, the request
// counts by its source address), and lends the response's body wrapper
// (done, reqHold.onDoneIn; nil: a new one): the caller closes the body
// before the next request that lends it. clk (nil: none) shares the
// connection's target and identity and the clock's readings with the
// caller (reqShare).
func (lt *lbTransport) roundTripAt(req *http.Request, place *clientPlace, done *doneBody, clk *reqShare) (*http.Response, error) {
	o := lt.l7.a.obs
	if o == nil {
		return lt.serve(req, nil, place, done, clk)
	}
	// The request's span and access-log line (observe.go): req's header
	// is the one sent on, so the trace context goes with it.
	t, _ := clk.targetOf(req)
	rec := o.begin(sideClient, req, req.Header, lt.l7.a.view.Load().services[t.svc], t.svc)
	if rec == nil {
		return lt.serve(req, nil, place, done, clk)
	}
	rec.src = clk.srcOf(req)
	defer rec.endIfPanicked() // a bug in the round trip: logged and traced as a 500 (l7panic.go)
	resp, err := lt.serve(req, rec, place, done, clk)
	if err != nil {
		rec.end(errorStatus(req, err), "", err)
		return nil, err
	}
	rec.endOnBody(resp)
	return resp, nil
}

// reqShare is what the fast path shares with lbTransport besides the
// request. conn (nil: none) is its client connection's listen target and
// client identity, which the request's context carries too: lbTransport
// takes them from here (the walk through the connection's context to
// them, five nodes and three, each a likely cache miss after the
// kernel's work between two requests, was ~70 ns a request in the agent
// under wrk; issue 14). The rest are clock readings: end is set, when a
// response is returned, to the reading (monoTime) its latency figures
// ended with (the pool's, as its head came; zero: none).
// head (monoNow; 0: none) is the caller's reading as it sent the request
// on (the fast path's watch of a bodyless request's head): the first
// attempt's start too (one reading a request fewer, issue 14), unless a
// step before that attempt may wait (a fault rule, the circuit breaker's
// queue, an authorization decision, which may log), whose wait would count
// as the endpoint's latency: then lbTransport reads the clock itself, as
// for every retry. (What it counts besides is the agent's work between the
// two, under a microsecond.)
type reqShare struct {
	conn *reqConn
	head int64
	end  time.Time
}

// reqConn is the fast path's client connection's listen target and client
// identity (reqShare).
type reqConn struct {
	target listenTarget
	src    string
}

// targetOf is req's listen target (false: it has none).
func (c *reqShare) targetOf(req *http.Request) (listenTarget, bool) {
	if c != nil && c.conn != nil {
		return c.conn.target, true
	}
	t, ok := req.Context().Value(targetKey{}).(listenTarget)
	return t, ok
}

// srcOf is req's client identity (connIdentityFrom).
func (c *reqShare) srcOf(req *http.Request) string {
	if c != nil && c.conn != nil {
		return c.conn.src
	}
	return connIdentityFrom(req.Context())
}

// mayQueue: the circuit breaker of sv may keep a request of a port of
// protocol proto waiting for a slot (limitRequest).
func mayQueue(sv *serviceView, proto string) bool {
	slots, _, _ := limits(sv.svc.Spec.CircuitBreaker, proto)
	return slots > 0
}

// serve is RoundTrip's work; rec (nil: none) learns the route, endpoint
// and attempts; place and done are roundTripAt's. Its steps (prepare,
// the attempts, finish, hold) are serving's.
func (lt *lbTransport) serve(req *http.Request, rec *reqObs, place *clientPlace, done *doneBody, clk *reqShare) (resp *http.Response, err error) {
	sg := servings.Get().(*serving) // its candidates' array in it: pooled, not one allocation per request
	defer func() {
		sg.hold(resp, err, done)
		*sg = serving{}
		servings.Put(sg)
	}()
	if resp, err, ok := lt.prepare(sg, req, rec, place, clk); !ok {
		return resp, err
	}
	resp, err = sg.l.run()
	return sg.finish(resp, err)
}

var servings = sync.Pool{New: func() any { return new(serving) }}

// serving is one request's state between serve's steps.
type serving struct {
	lt    *lbTransport
	req   *http.Request
	h     reqHold
	tb    *httpproxy.TimedBody
	timer *time.Timer
	l     attempts
	k     completion // startAsync's (l7h2async.go)
	done  *doneBody  // complete's wrapper of the response body (nil: a new one)
	// candBuf holds the candidates of a service of up to 4 endpoints: no
	// allocation.
	candBuf [4]*endpointView
}

// hold hands what the request holds to its response's body (released
// when the body is done), or releases it: no response (an error, a
// panic).
func (sg *serving) hold(resp *http.Response, err error, done *doneBody) {
	if err != nil || resp == nil {
		sg.h.release()
		return
	}
	sg.h.onDoneIn(resp, done)
	// Only the HTTP/2 handler sets one (newL7): a fast-path
	// request's context is not searched for it.
	if !sg.lt.h1 {
		if ub, ok := sg.req.Context().Value(upstreamBodyKey{}).(*upstreamBody); ok {
			ub.body.Store(&resp.Body)
		}
	}
}

// finish is serve's step after the attempts.
func (sg *serving) finish(resp *http.Response, err error) (*http.Response, error) {
	req, tb, timer := sg.req, sg.tb, sg.timer
	if err != nil {
		if timer != nil && context.Cause(req.Context()) == context.DeadlineExceeded {
			err = fmt.Errorf("request timeout: %w", context.DeadlineExceeded)
			if tb != nil && tb.Expire() {
				err = fmt.Errorf("%w: body not received within the request timeout", httpproxy.ErrBodyTimeout)
			}
		}
		return nil, err
	}
	if tb != nil && resp.StatusCode == http.StatusSwitchingProtocols {
		tb.Stop() // the connection is the endpoint's from here on (ReverseProxy hijacks it)
	} else if tb != nil {
		tb.AnsweredBy(resp) // the endpoint reads the rest as the response goes out
	}
	if timer != nil {
		timer.Stop()
		if resp.StatusCode == http.StatusSwitchingProtocols {
			sg.h.timeout = nil // the upgraded connection keeps the context
		}
	}
	return resp, nil
}

// prepare is serve's step before the attempts: ok, the attempts are set
// up in sg.l; else resp or err is the answer.
func (lt *lbTransport) prepare(sg *serving, req *http.Request, rec *reqObs, place *clientPlace, clk *reqShare) (resp *http.Response, err error, ok bool) {
	sg.lt, sg.req = lt, req
	a := lt.l7.a
	t, ok := clk.targetOf(req)
	if !ok {
		return nil, errors.New("request without a service"), false
	}
	sv := a.view.Load().services[t.svc]
	if sv == nil {
		return nil, errNoEndpoint, false
	}
	// The gap between body reads holds from here: an answer of the agent's
	// (a fault, an error) drains the body within it too (l7body.go).
	httpproxy.ArmBody(req, time.Duration(sv.svc.Spec.Timeouts.RequestBody), 0)
	// What the request takes below (its client's place, its agent and
	// circuit breaker slots, its timeout) it holds until its response body
	// is done (a stream or a download counts as long as it lasts), or
	// until now when there is no response (hold).
	h := &sg.h
	if !lt.l7.clients.acquireFor(req, place, a.cfg.MaxRequestsPerClient, h) {
		a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_agent_client_limit_rejections_total{service=%q}`, t.svc)).Inc()
		return nil, errClientLimit, false
	}
	// Traffic class: from the route rule, else the header, else the default.
	rule, noRoute := sv.routeRule(req)
	if noRoute {
		a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_agent_no_route_total{service=%q}`, t.svc)).Inc()
		return nil, errNoRoute, false
	}
	class := a.classOf(sv, rule, req)
	if !a.admit(sv, class) {
		a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_agent_shed_total{service=%q,class=%q}`, t.svc, className(class))).Inc()
		return nil, errShed, false
	}
	h.inflight = &a.l7Inflight
	if rule != nil && rule.Fault != nil {
		if resp, err := a.injectFault(req, t.svc, rule.Fault); resp != nil || err != nil {
			return resp, err, false
		}
	}
	retries, timeout := sv.svc.Spec.Retries, time.Duration(sv.svc.Spec.Timeouts.Request)
	if class != nil {
		if class.Timeout > 0 {
			timeout = time.Duration(class.Timeout)
		}
		if class.Retries != nil {
			retries = *class.Retries
		}
	}
	svcView := sv // the service's view; sv becomes the destination's
	var subset string
	var subsetLabels map[string]string
	if rule != nil {
		b := rule.Backends[weightedBackend(rule.Backends)]
		if b.Subset != "" {
			labels, ok := sv.subsets[b.Subset]
			if !ok {
				return nil, fmt.Errorf("%w: subset %q of %s is not defined by a DestinationPolicy", errNoEndpoint, b.Subset, t.svc), false
			}
			subset, subsetLabels = b.Subset, labels
		}
		if rule.Timeout > 0 {
			timeout = time.Duration(rule.Timeout)
		}
		if rule.Retries != nil {
			retries = *rule.Retries
		}
	}
	// The destination's traffic policy from here on: balancer, outlier
	// detection, circuit breaker, pools (policy.go).
	sv = effectivePolicy(sv, subset, t.port)
	cands := a.pickSubsetInto(sg.candBuf[:0], sv, t.port, subset, subsetLabels)
	if len(cands) == 0 {
		a.m.connNoEP.Inc()
		return nil, errNoEndpoint, false
	}
	// The circuit breaker: a slot, or a place in the queue for at most
	// the request timeout, which the wait then counts against.
	if clk != nil && clk.head != 0 && (rule != nil && rule.Fault != nil || mayQueue(sv, t.proto)) {
		clk.head = 0 // a wait here is not the endpoint's latency
	}
	timeout, releaseSlot, err := lt.l7.limitRequest(req.Context(), sv, t.proto, timeout)
	if err != nil {
		return nil, err, false
	}
	h.slot = releaseSlot
	// The request timeout covers reading the request body, and no read
	// of it waits longer than timeouts.requestBody, until the response
	// header arrives.
	sg.tb = httpproxy.ArmBody(req, time.Duration(sv.svc.Spec.Timeouts.RequestBody), timeout)
	if rule != nil && rule.Mirror != nil {
		req = lt.mirror(req, svcView, t, rule.Mirror, timeout)
	}
	if hashBalanced(sv) {
		if key := hashKeyOf(req, sv.svc.Spec.HashKey); key != "" {
			a.hashOrder(sv, cands, key)
		}
	}
	if sa := sv.svc.Spec.Session; sa != nil {
		if key := sessionKey(req, sa); key != "" {
			cands = a.applySession(sv, key, cands)
		}
	}
	// The request timeout bounds the time to response headers: a timer
	// cancels the request unless headers came first. The context lives on
	// with the response body and is released when the body is closed.
	if d := timeout; d > 0 {
		ctx, cancel := context.WithCancelCause(req.Context())
		timer := time.AfterFunc(d, func() { cancel(context.DeadlineExceeded) })
		req = req.WithContext(ctx)
		// Released with the rest if the round trip fails, or panics.
		h.timeout = func() { timer.Stop(); cancel(nil) }
		sg.timer = timer
	}
	if rec != nil {
		rec.route = routeName(rule)
	}
	sg.req = req
	lt.initAttempts(&sg.l, req, sv, t, cands, retries, routeName(rule), rec, clk)
	return nil, nil, true
}

// releaseOnClose runs release when the body is closed.
type releaseOnClose struct {
	io.ReadCloser
	once    sync.Once
	release func()
}

func (r *releaseOnClose) Close() error {
	err := r.ReadCloser.Close()
	r.once.Do(r.release)
	return err
}

func (r *releaseOnClose) UpstreamEnded() bool { return upstreamEnded(r.ReadCloser) }

func (r *releaseOnClose) BufferedUpstream() int {
	if ub, ok := r.ReadCloser.(httpproxy.UpstreamBuffered); ok {
		return ub.BufferedUpstream()
	}
	return 0
}

// classOf returns the request's traffic class, or nil if the service has
// none or the name is unknown.
func (a *Agent) classOf(sv *serviceView, rule *api.RouteRule, req *http.Request) *api.TrafficClass {
	if len(sv.svc.Spec.Classes) == 0 {
		return nil
	}
	name := ""
	if rule != nil {
		name = rule.Class
	}
	if name == "" {
		name = req.Header.Get("X-Fogmesh-Class")
	}
	if name == "" {
		name = sv.svc.Spec.DefaultClass
	}
	for i := range sv.svc.Spec.Classes {
		if sv.svc.Spec.Classes[i].Name == name {
			return &sv.svc.Spec.Classes[i]
		}
	}
	return nil
}

func className(c *api.TrafficClass) string {
	if c == nil {
		return ""
	}
	return c.Name
}

// admit takes an L7 request slot, or refuses it when the agent is
// overloaded for the request's class: a class ranked k below the service's
// top priority may fill only (1 − 0.2·k) of MaxRequests (at least 20%), so
// the lowest classes are shed first and the top one keeps headroom.
// Requests without a class count as the lowest rank.
func (a *Agent) admit(sv *serviceView, class *api.TrafficClass) bool {
	limit := float64(a.cfg.MaxRequests)
	rank := 0
	if cs := sv.svc.Spec.Classes; len(cs) > 0 {
		higher := map[int]bool{}
		for _, c := range cs {
			if class == nil || c.Priority > class.Priority {
				higher[c.Priority] = true
			}
		}
		rank = len(higher)
	}
	share := max(1-0.2*float64(rank), 0.2)
	if n := a.l7Inflight.Add(1); float64(n) > limit*share {
		a.l7Inflight.Add(-1)
		return false
	}
	return true
}
