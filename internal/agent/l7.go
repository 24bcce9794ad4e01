package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// The L7 path: connections to a service port declared http, http2 or grpc
// are served by one HTTP server per agent (HTTP/1.1 and cleartext HTTP/2 on
// the same port: the server tells them apart by the HTTP/2 preface), and
// every request is balanced on its own over pooled upstream connections. A
// long-lived HTTP/2 or gRPC connection therefore spreads its requests over
// all healthy endpoints of the nearest tier instead of pinning to one, which
// is what per-connection balancing (EdgeMesh) does.

// isL7 reports whether a service port protocol is proxied per request.
func isL7(proto string) bool { return proto == "http" || proto == "http2" || proto == "grpc" }

// l7 is the agent's HTTP server and upstream pools.
type l7 struct {
	a   *Agent
	ln  *connListener
	srv *http.Server

	h1 *h1Path // the HTTP/1.1 fast path (h1fast.go)

	mu         sync.Mutex // guards transports
	transports map[string]*http.Transport

	idleTimers sync.Map      // *taggedConn -> *time.Timer, see connState
	limiters   sync.Map      // service -> *reqLimiter (l7limit.go)
	clients    clientLimiter // requests in flight per client (l7body.go)
	mirrors    atomic.Int64  // copies in flight (l7mirror.go)
}

type targetKey struct{}

// taggedConn is a client connection handed from a VIP listener to the HTTP
// server, carrying which service port it was accepted on.
type taggedConn struct {
	net.Conn
	target   listenTarget
	clientID string // the client's identity, found at accept (clientIdentity)
	done     func()
	once     sync.Once

	send     time.Duration    // bound on each write to the client (sendTimeout); 0: none
	sendSet  atomic.Int64     // the write deadline last set, Unix ns
	timeouts *metrics.Counter // writes cut off by send
}

// Write bounds each write to the client by the service's send timeout: a
// client that reads nothing (a slow reader) cannot keep the response's
// upstream connection and request slots for ever. The deadline moves only
// when it would move by more than send/16.
func (c *taggedConn) Write(p []byte) (int, error) {
	if c.send > 0 {
		if d := time.Now().Add(c.send).UnixNano(); d-c.sendSet.Load() > int64(c.send/16) {
			c.Conn.SetWriteDeadline(time.Unix(0, d))
			c.sendSet.Store(d)
		}
	}
	n, err := c.Conn.Write(p)
	if err != nil && c.timeouts != nil && httpproxy.IsTimeout(err) {
		c.timeouts.Inc()
	}
	return n, err
}

func (c *taggedConn) Close() error {
	c.once.Do(c.done)
	return c.Conn.Close()
}

// connListener is a net.Listener fed by the VIP accept loops.
type connListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *connListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *connListener) Close() error   { l.once.Do(func() { close(l.closed) }); return nil }
func (l *connListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

func newL7(a *Agent) *l7 {
	s := &l7{a: a, ln: &connListener{ch: make(chan net.Conn), closed: make(chan struct{})}, transports: map[string]*http.Transport{}}
	s.h1 = newH1Path(s)
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			httpproxy.ScrubProxyRequest(pr)
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = pr.In.Host
			pr.Out.Host = pr.In.Host
			if pr.In.Host == "" { // HTTP/1.0 without Host: name the service instead
				if t, ok := pr.In.Context().Value(targetKey{}).(listenTarget); ok {
					pr.Out.URL.Host = t.svc[strings.IndexByte(t.svc, '/')+1:]
				}
			}
			httpproxy.SetXForwarded(pr.Out.Header, httpproxy.RemoteIP(pr.In.RemoteAddr), pr.In.Host)
			a.setSourceIdentity(pr.In.Context(), pr.Out)
		},
		Transport: &lbTransport{l7: s},
		// FlushInterval 0: a response of known length goes out in one
		// write; ReverseProxy still flushes every write of a streaming
		// one (no Content-Length: chunked, gRPC; text/event-stream).
		BufferPool:   httpproxy.CopyBuffers,
		ErrorHandler: s.errorHandler,
		ErrorLog:     slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	norm := a.normalizingHandler(rp) // one normalised path for routing, authorization and upstream
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Body != nil && r.Body != http.NoBody {
				// The body is read under httpproxy.TimedBody's bounds, set
				// on the request's own read deadline (HTTP/1.1: the
				// connection's; h2c: the stream's). A copy of the request
				// carries it, so the server still sees its own body and
				// closes a connection whose body was not read to the end.
				// ReverseProxy wraps the body it forwards: the context
				// carries it to lbTransport.
				tb := httpproxy.NewTimedBody(r.Body, http.NewResponseController(w).SetReadDeadline)
				r = r.WithContext(httpproxy.WithTimedBody(r.Context(), tb))
				r.Body = tb
				defer tb.Unanswered() // the server drains the rest after the handler: bounded (httpproxy.TimedBody)
			}
			if r.ProtoMajor == 2 {
				// A slow reader stalls its stream's flow control, not the
				// connection's writes (taggedConn.Write): bound the
				// stream's writes too.
				if t, ok := r.Context().Value(targetKey{}).(listenTarget); ok {
					if d := s.sendTimeout(t); d > 0 {
						w = httpproxy.NewSendTimedWriter(w, d)
					}
				}
			}
			norm.ServeHTTP(w, r)
		}),
		Protocols:         &protos,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       defaultL7Idle, // and a service's timeouts.idle, by connState
		ConnState:         s.connState,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*taggedConn); ok {
				return withConnIdentity(context.WithValue(ctx, targetKey{}, tc.target), tc.clientID)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	return s
}

func (s *l7) serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

func (s *l7) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.srv.Shutdown(ctx)
	s.srv.Close()
	s.ln.Close()
	s.h1.closeAll()
	s.mu.Lock()
	for _, t := range s.transports {
		t.CloseIdleConnections()
	}
	s.mu.Unlock()
}

// pruneTransports closes the pools of endpoints no longer in the view, or
// whose address, port or connect timeout changed.
func (s *l7) pruneTransports(v *view) {
	s.h1.prune(v)
	live := map[string]bool{}
	v.eachDestination(func(sv *serviceView) {
		for _, ev := range sv.endpoints {
			for _, p := range ev.ep.Spec.Ports {
				for _, proto := range []string{"http", "http2", "grpc"} {
					live[poolKey(sv, ev, p.Name, proto)] = true
				}
			}
		}
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, t := range s.transports {
		if !live[k] {
			t.CloseIdleConnections()
			delete(s.transports, k)
		}
	}
}

// errNoEndpoint is the L7 form of "no healthy endpoint".
var errNoEndpoint = errors.New("no healthy endpoint")

// errNoRoute: no rule of the service's route matches the request and the
// route rejects unmatched requests (Istio's "no route", 404).
var errNoRoute = errors.New("no route matches the request")

// errShed: the agent is overloaded and the request's class is shed.
var errShed = errors.New("overloaded: request shed by traffic class")

// errOverflow: the service's circuit breaker is open (too many requests).
var errOverflow = errors.New("circuit breaker open: too many requests in flight")

func (s *l7) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	code, grpcCode := http.StatusBadGateway, "14"
	switch {
	case errors.Is(err, errNoEndpoint):
		code = http.StatusServiceUnavailable
	case errors.Is(err, errNoRoute):
		code, grpcCode = http.StatusNotFound, "12" // UNIMPLEMENTED, as gRPC maps HTTP 404
	case errors.Is(err, errShed):
		code = http.StatusServiceUnavailable
		w.Header().Set("X-Fogmesh-Shed", "true")
	case errors.Is(err, errOverflow):
		code = http.StatusServiceUnavailable
		w.Header().Set("X-Fogmesh-Overflow", "true")
	case errors.Is(err, context.DeadlineExceeded):
		code = http.StatusGatewayTimeout
	case errors.Is(err, errClientLimit):
		code = http.StatusTooManyRequests
	}
	if errors.Is(err, httpproxy.ErrBodyTimeout) || httpproxy.BodyTimedOut(r) {
		// The client was too slow with its body, whatever the upstream
		// error that caused: 408. An HTTP/1.1 connection is closed (its
		// body was not read to the end).
		code = http.StatusRequestTimeout
		s.a.cfg.Metrics.GetOrCreateCounter(`fogmesh_agent_request_body_timeouts_total`).Inc()
	} else if errors.Is(err, context.Canceled) {
		// The client went away, or half-closed its side (net/http's
		// server cancels the request then): answer 502 all the same, for
		// a handler that returns having written nothing is sent as 200 OK.
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	s.a.log.Debug("agent: l7 request failed", "host", r.Host, "path", r.URL.Path, "err", err)
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		// Trailers-only gRPC error: UNAVAILABLE lets gRPC clients retry.
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", grpcCode)
		w.Header().Set("Grpc-Message", "fogmesh: "+err.Error())
		w.WriteHeader(http.StatusOK)
		return
	}
	http.Error(w, "fogmesh: "+err.Error(), code)
}

// dialError marks an upstream connect failure: nothing of the request was
// sent, so another endpoint may be tried whatever the method.
type dialError struct{ err error }

func (e *dialError) Error() string { return "connect: " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// transportFor returns the pooled upstream transport of one endpoint. The
// view caches it per endpoint view, so the common case costs one map lookup
// and no formatting.
func (s *l7) transportFor(sv *serviceView, ev *endpointView, port, proto string) *http.Transport {
	ck := transportCacheKey{ev, port, proto}
	if t, ok := sv.transports.Load(ck); ok {
		return t.(*http.Transport)
	}
	t := s.transportForSlow(sv, ev, port, proto)
	sv.transports.Store(ck, t)
	return t
}

type transportCacheKey struct {
	ev          *endpointView
	port, proto string
}

func (s *l7) transportForSlow(sv *serviceView, ev *endpointView, port, proto string) *http.Transport {
	// Everything the dial closes over is in the key, so a moved endpoint
	// or a changed timeout gets a fresh pool (pruneTransports drops the old).
	key := poolKey(sv, ev, port, proto)
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.transports[key]; t != nil {
		return t
	}
	var protos http.Protocols
	if proto == "http" {
		protos.SetHTTP1(true)
	} else {
		protos.SetUnencryptedHTTP2(true)
	}
	a := s.a
	t := &http.Transport{
		Proxy:               nil,
		Protocols:           &protos,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     l7IdleTimeout(sv),
		// maxRequestsPerConnection 1: no keep-alive. Larger values are
		// counted on the HTTP/1.1 fast path's pools only (h1Pool).
		DisableKeepAlives:  sv.svc.Spec.CircuitBreaker.MaxRequestsPerConnection == 1,
		DisableCompression: true, // pass Content-Encoding through, as nginx does
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := a.dialEndpoint(ctx, sv, ev, port)
			if err != nil {
				return nil, &dialError{err}
			}
			return c, nil
		},
	}
	s.transports[key] = t
	return t
}

// transportKey names everything an endpoint's transport depends on.
func transportKey(sv *serviceView, ev *endpointView, port, proto string, epPort int) string {
	return fmt.Sprintf("%s|%s|%s|%s|%s|%d|%d|%d|%t", ev.key, port, proto, ev.mesh, ev.ep.Spec.Address, epPort, sv.svc.Spec.Timeouts.Connect, l7IdleTimeout(sv),
		sv.svc.Spec.CircuitBreaker.MaxRequestsPerConnection == 1)
}

// lbTransport picks an endpoint for every request, nearest tier first, and
// moves to the next one when connecting fails.
type lbTransport struct {
	l7 *l7
	h1 bool // requests of the HTTP/1.1 fast path: HTTP/1.1 endpoints over its pools
}

func (lt *lbTransport) RoundTrip(req *http.Request) (resp *http.Response, err error) {
	a := lt.l7.a
	t, ok := req.Context().Value(targetKey{}).(listenTarget)
	if !ok {
		return nil, errors.New("request without a service")
	}
	sv := a.view.Load().services[t.svc]
	if sv == nil {
		return nil, errNoEndpoint
	}
	// The gap between body reads holds from here: an answer of the agent's
	// (a fault, an error) drains the body within it too (l7body.go).
	httpproxy.ArmBody(req, time.Duration(sv.svc.Spec.Timeouts.RequestBody), 0)
	// What the request takes below (its client's place, its agent and
	// circuit breaker slots, its timeout) it holds until its response body
	// is done (a stream or a download counts as long as it lasts), or
	// until now when there is no response.
	var h reqHold
	defer func() {
		if err != nil || resp == nil {
			h.release()
		} else {
			h.onDone(resp)
		}
	}()
	if !lt.l7.clients.acquire(req.RemoteAddr, a.cfg.MaxRequestsPerClient, &h) {
		a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_agent_client_limit_rejections_total{service=%q}`, t.svc)).Inc()
		return nil, errClientLimit
	}
	// Traffic class: from the route rule, else the header, else the default.
	rule, noRoute := sv.routeRule(req)
	if noRoute {
		a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_agent_no_route_total{service=%q}`, t.svc)).Inc()
		return nil, errNoRoute
	}
	class := a.classOf(sv, rule, req)
	if !a.admit(sv, class) {
		a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_agent_shed_total{service=%q,class=%q}`, t.svc, className(class))).Inc()
		return nil, errShed
	}
	h.inflight = &a.l7Inflight
	if rule != nil && rule.Fault != nil {
		if resp, err := a.injectFault(req, t.svc, rule.Fault); resp != nil || err != nil {
			return resp, err
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
				return nil, fmt.Errorf("%w: subset %q of %s is not defined by a DestinationPolicy", errNoEndpoint, b.Subset, t.svc)
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
	cands := a.pickSubset(sv, t.port, subset, subsetLabels)
	if len(cands) == 0 {
		a.m.connNoEP.Inc()
		return nil, errNoEndpoint
	}
	// The circuit breaker: a slot, or a place in the queue for at most
	// the request timeout, which the wait then counts against.
	timeout, releaseSlot, err := lt.l7.limitRequest(req.Context(), sv, t.proto, timeout)
	if err != nil {
		return nil, err
	}
	h.slot = releaseSlot
	// The request timeout covers reading the request body, and no read
	// of it waits longer than timeouts.requestBody, until the response
	// header arrives.
	tb := httpproxy.ArmBody(req, time.Duration(sv.svc.Spec.Timeouts.RequestBody), timeout)
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
	release := func() {}
	var timer *time.Timer
	if d := timeout; d > 0 {
		ctx, cancel := context.WithCancelCause(req.Context())
		timer = time.AfterFunc(d, func() { cancel(context.DeadlineExceeded) })
		req = req.WithContext(ctx)
		release = func() { timer.Stop(); cancel(nil) }
	}
	resp, err = lt.roundTrip(req, sv, t, cands, retries, routeName(rule))
	if err != nil {
		if timer != nil && context.Cause(req.Context()) == context.DeadlineExceeded {
			err = fmt.Errorf("request timeout: %w", context.DeadlineExceeded)
			if tb != nil && tb.Expire() {
				err = fmt.Errorf("%w: body not received within the request timeout", httpproxy.ErrBodyTimeout)
			}
		}
		release()
		return nil, err
	}
	if tb != nil {
		tb.Stop()
	}
	if timer != nil {
		timer.Stop()
		if resp.StatusCode != http.StatusSwitchingProtocols {
			h.timeout = release
		}
	}
	return resp, nil
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

// hashKeyOf returns the request's consistent-hash key ("" if none).
func hashKeyOf(req *http.Request, hk *api.HashKey) string {
	if hk.Header != "" {
		if v := req.Header.Get(hk.Header); v != "" {
			return v
		}
	}
	if hk.Cookie != "" {
		if c, err := req.Cookie(hk.Cookie); err == nil {
			return c.Value
		}
	}
	if hk.SourceIP {
		if host, _, err := net.SplitHostPort(req.RemoteAddr); err == nil {
			return host
		}
	}
	return ""
}

// matchRule returns the first rule of the service's route that matches req,
// or nil when the service has no route or no rule matches (then every
// endpoint serves, unless the route rejects unmatched requests: routeRule).
func (sv *serviceView) matchRule(req *http.Request) *api.RouteRule {
	rule, _ := sv.routeRule(req)
	return rule
}

// routeRule is matchRule, also reporting whether the request must be
// refused because no rule matched and the route rejects unmatched
// requests (Istio's "no route", 404).
func (sv *serviceView) routeRule(req *http.Request) (rule *api.RouteRule, noRoute bool) {
	if sv.route == nil {
		return nil, false
	}
	rule = sv.firstMatch(req)
	return rule, rule == nil && sv.route.Spec.Unmatched == api.UnmatchedReject
}

func (sv *serviceView) firstMatch(req *http.Request) *api.RouteRule {
	host := req.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	for i := range sv.route.Spec.Rules {
		rule := &sv.route.Spec.Rules[i]
		if len(rule.Match) == 0 {
			return rule
		}
		for _, m := range rule.Match {
			if matches(&m, req, host) && sv.sourceMatches(&m, req) {
				return rule
			}
		}
	}
	return nil
}

func matches(m *api.RouteMatch, req *http.Request, host string) bool {
	if m.Method != "" && m.Method != req.Method {
		return false
	}
	if !m.Path.Matches(req.URL.EscapedPath()) || !m.Host.Matches(host) { // normalised, as authorization sees it
		return false
	}
	for name, sm := range m.Headers {
		v, ok := req.Header[http.CanonicalHeaderKey(name)]
		if !ok || !sm.Matches(strings.Join(v, ",")) {
			return false
		}
	}
	for name, sm := range m.WithoutHeaders {
		if v, ok := req.Header[http.CanonicalHeaderKey(name)]; ok && sm.Matches(strings.Join(v, ",")) {
			return false
		}
	}
	if len(m.QueryParams) > 0 {
		// Decoded, the first value of a repeated parameter (as Envoy).
		q, _ := url.ParseQuery(req.URL.RawQuery)
		for name, sm := range m.QueryParams {
			v, ok := q[name]
			if !ok || !sm.Matches(v[0]) {
				return false
			}
		}
	}
	return true
}

// weightedBackend draws a backend index with probability ∝ weight (a
// weight of 0 is never drawn unless all are 0).
func weightedBackend(bs []api.RouteBackend) int {
	total := 0
	for _, b := range bs {
		total += b.Weight
	}
	if total <= 0 {
		return rand.IntN(len(bs))
	}
	r := rand.IntN(total)
	for i, b := range bs {
		if r -= b.Weight; r < 0 {
			return i
		}
	}
	return len(bs) - 1
}

// requestMetrics records one request. code 0 means no response. The
// series of an endpoint and route are looked up once and cached. Labels
// are bounded by endpoints × rule names: no paths, no status codes.
func (a *Agent) requestMetrics(svc, route string, ev *endpointView, code int, d time.Duration) {
	class := 0 // "error"
	if code >= 100 && code < 600 {
		class = code / 100
	}
	k := metricsKey{svc, route, ev.ep.Meta.Name, ev.ep.Spec.Node, ev.tier}
	v, ok := a.reqMetrics.Load(k)
	if !ok {
		labels := fmt.Sprintf(`service=%q,endpoint=%q,node=%q,site=%q,tier=%q,route=%q,source_node=%q,source_site=%q`,
			svc, ev.ep.Meta.Name, ev.ep.Spec.Node, ev.site, ev.tier, route, a.cfg.Node.Name, a.cfg.Node.Site)
		m := &endpointMetrics{duration: a.cfg.Metrics.GetOrCreateHistogram(`fogmesh_http_request_duration_seconds{` + labels + `}`)}
		for c := range m.byClass {
			name := "error"
			if c > 0 {
				name = fmt.Sprintf("%dxx", c)
			}
			m.byClass[c] = a.cfg.Metrics.GetOrCreateCounter(`fogmesh_http_requests_total{` + labels + `,code_class="` + name + `"}`)
		}
		v, _ = a.reqMetrics.LoadOrStore(k, m)
	}
	m := v.(*endpointMetrics)
	m.byClass[class].Inc()
	m.duration.Update(d.Seconds())
}

// routeName labels a rule's requests: its name ("" for an unnamed rule or
// a service without a route).
func routeName(rule *api.RouteRule) string {
	if rule == nil {
		return ""
	}
	return rule.Name
}

type metricsKey struct {
	svc, route, endpoint, node string
	tier                       Tier
}

// endpointMetrics are one endpoint's request series; byClass[0] counts
// requests without a response, byClass[n] status class nxx.
type endpointMetrics struct {
	byClass  [6]*metrics.Counter
	duration *metrics.Histogram
}

// grpcStatusBody records a gRPC response's status when its body ends: the
// grpc-status trailer, or the header of a trailers-only response.
type grpcStatusBody struct {
	io.ReadCloser
	resp   *http.Response
	record func(code string)
	once   sync.Once
}

func (b *grpcStatusBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.once.Do(func() {
			code := b.resp.Trailer.Get("Grpc-Status")
			if code == "" {
				code = b.resp.Header.Get("Grpc-Status")
			}
			if code == "" {
				code = "unknown"
			}
			b.record(code)
		})
	}
	return n, err
}
