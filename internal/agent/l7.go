package agent

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/h2srv"
	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// The L7 path: connections to a service port declared http, http2 or grpc
// are served per request: HTTP/2 with prior knowledge by the agent's own
// HTTP/2 server (package h2srv), HTTP/1.1 by the fast path (h1fast.go)
// or net/http's server, all with one handler (newL7), and
// every request is balanced on its own over pooled upstream connections. A
// long-lived HTTP/2 or gRPC connection therefore spreads its requests over
// all healthy endpoints of the nearest tier instead of pinning to one, which
// is what per-connection balancing (EdgeMesh) does.
//
// This file holds the server, its listener and upstream transports, and
// the error answers. A request's way to an endpoint: l7request.go; route
// matching: l7route.go; attempts and retries: l7retry.go; metrics:
// l7metrics.go.

// isL7 reports whether a service port protocol is proxied per request.
func isL7(proto string) bool { return proto == "http" || proto == "http2" || proto == "grpc" }

// l7 is the agent's HTTP server and upstream pools.
type l7 struct {
	a   *Agent
	ln  *connListener
	srv *http.Server
	h2  *h2srv.Server // HTTP/2 (prior knowledge): h2c and gRPC ports, and http ports' HTTP/2 clients

	h1 *h1Path // the HTTP/1.1 fast path (h1fast.go)

	mu         sync.Mutex // guards transports
	transports map[string]upstreamPool

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

	// buffered: reads go through br (HTTP/1.1 on an h2c or gRPC port,
	// served by net/http, which would read such a connection with small
	// reads).
	buffered bool
	br       *bufio.Reader

	// raw, while the HTTP/1.1 fast path or the HTTP/2 server serves the
	// connection, writes to Conn without the scheduler's system call state
	// (httpproxy.RawIO); for the HTTP/2 server it reads too (Read).
	raw *httpproxy.RawIO

	send     time.Duration    // bound on each write to the client (sendTimeout); 0: none
	sendSet  atomic.Int64     // when the write deadline was last set (monoNow); 0: never
	timeouts *metrics.Counter // writes cut off by send
}

// Write bounds each write to the client by the service's send timeout: a
// client that reads nothing (a slow reader) cannot keep the response's
// upstream connection and request slots for ever. The deadline moves only
// when it would move by more than send/16. (Only then is the wall clock
// read: a write reads the monotonic clock, one vDSO call, not time.Now's
// two.)
func (c *taggedConn) Write(p []byte) (int, error) {
	if c.send > 0 {
		if now, set := monoNow(), c.sendSet.Load(); set == 0 || now-set > int64(c.send/16) {
			c.Conn.SetWriteDeadline(time.Now().Add(c.send))
			c.sendSet.Store(now)
		}
	}
	var n int
	var err error
	if c.raw != nil {
		n, err = c.raw.Write(p)
	} else {
		n, err = c.Conn.Write(p)
	}
	if err != nil && c.timeouts != nil && httpproxy.IsTimeout(err) {
		c.timeouts.Inc()
	}
	return n, err
}

// monoNow and monoTime: the monotonic clock alone (one vDSO call, not
// time.Now's two), as nanoseconds (at least 1) since httpproxy's epoch, or
// as a time for a deadline (httpproxy.MonoTime).
func monoNow() int64 { return int64(httpproxy.MonoSince()) + 1 }

func monoTime() time.Time { return httpproxy.MonoTime() }

func (c *taggedConn) Read(p []byte) (int, error) {
	if !c.buffered {
		if c.raw != nil {
			return c.raw.Read(p)
		}
		return c.Conn.Read(p)
	}
	if c.br == nil {
		c.br = bufio.NewReaderSize(c.Conn, 8<<10)
	}
	return c.br.Read(p)
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
	s := &l7{a: a, ln: &connListener{ch: make(chan net.Conn), closed: make(chan struct{})}, transports: map[string]upstreamPool{}}
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
	// HTTP/2 requests of h2c and gRPC ports skip ReverseProxy's copies (l7h2fwd.go).
	proxy := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 {
			if t, ok := r.Context().Value(targetKey{}).(listenTarget); ok && forwardH2Eligible(r, t) {
				s.forwardH2(w, r, t, rp.Transport)
				return
			}
			h2srv.WillWait(w) // ReverseProxy waits for the round trip (l7h2wait.go)
		}
		rp.ServeHTTP(w, r)
	})
	norm := a.normalizingHandler(proxy) // one normalised path for routing, authorization and upstream
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer a.recoverHandler() // logged and counted (gopanic.go)
		// One copy of the request for both context values below (a gRPC
		// call has both).
		ctx := r.Context()
		var tb *httpproxy.TimedBody
		hasBody := r.Body != nil && r.Body != http.NoBody
		// The body is read under httpproxy.TimedBody's bounds, set on the
		// request's own read deadline (HTTP/1.1: the connection's; h2c:
		// the stream's). A copy of the request carries it, so the server
		// still sees its own body and closes a connection whose body was
		// not read to the end. ReverseProxy wraps the body it forwards:
		// the context carries it to lbTransport. It also carries where
		// lbTransport leaves the response body (upstreamBody): a panic in
		// the handler gives it up (endCall), else what the request holds
		// would stay taken.
		var up *upstreamBody
		if r.ProtoMajor == 2 {
			w, ctx, tb, up = s.wrapH2(w, r, hasBody) // and the upstream body's, in one allocation
		} else {
			c := &h1Call{}
			c.ctx.Context, c.ctx.up, up = ctx, &c.up, &c.up
			if hasBody {
				tb = new(httpproxy.TimedBody)
				tb.InitH1(w, r) // deadlines, and full duplex once an endpoint answers
				c.ctx.tb = tb
			}
			ctx = &c.ctx
		}
		defer endCall(up)
		if ctx != r.Context() {
			r = r.WithContext(ctx) // the copy; the server's request keeps its body
		}
		if tb != nil {
			r.Body = tb
		}
		norm.ServeHTTP(w, r)
		if tb != nil && !h2Detached(ctx) {
			tb.Unanswered() // the rest of the body, bounded (httpproxy.TimedBody); after a panic the connection closes
		}
	})
	s.h2 = &h2srv.Server{Handler: handler, ErrorLog: a.log.Debug, OnPanic: a.h2srvPanicked, InlineAll: asyncH2.Load()}
	s.srv = &http.Server{
		Handler:           handler,
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
		ErrorLog: a.serverErrorLog(), // net/http's panics at error level, counted (gopanic.go)
	}
	return s
}

// serveH2 serves an HTTP/2 client connection (prior knowledge) until it
// ends; it owns tc. The connection's context carries what net/http's
// ConnContext gave its requests: the port and the client's identity. The
// agent's shutdown drains it (l7.close), as it did the net/http server's.
func (s *l7) serveH2(tc *taggedConn, prefaceRead bool) {
	defer tc.Close()
	ctx := withConnIdentity(context.WithValue(context.Background(), targetKey{}, tc.target), tc.clientID)
	// Like a fast-path HTTP/1.1 connection, it keeps its client's place in
	// the per-client limiter while open: its streams count there
	// (clientLimiter.acquireFor), not by a place made and dropped per call.
	if place := s.clients.holdConn(tc.RemoteAddr().String(), s.a.cfg.MaxRequestsPerClient); place != nil {
		defer s.clients.dropConn(place)
		ctx = context.WithValue(ctx, clientPlaceKey{}, place)
	}
	// The server reads on one goroutine and serialises its writes.
	tc.raw = httpproxy.NewRawIO(tc.Conn)
	s.h2.ServeConn(tc, h2srv.ConnOptions{Context: ctx, IdleTimeout: s.h1IdleTimeout(tc.target), Preface: prefaceRead})
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
	s.h2.Shutdown(ctx)
	s.srv.Shutdown(ctx)
	s.srv.Close()
	s.ln.Close()
	s.h1.closeAll()
	s.mu.Lock()
	for _, t := range s.transports {
		t.close()
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
			t.close()
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

// errorStatus is the status errorHandler answers err with (gRPC
// requests: grpcCode in a 200).
func errorStatus(r *http.Request, err error) (code int) {
	code, _ = errorCodes(r, err)
	return code
}

func errorCodes(r *http.Request, err error) (code int, grpcCode string) {
	code, grpcCode = http.StatusBadGateway, "14"
	switch {
	case errors.Is(err, errNoEndpoint), errors.Is(err, errShed), errors.Is(err, errOverflow):
		code = http.StatusServiceUnavailable
	case errors.Is(err, errNoRoute):
		code, grpcCode = http.StatusNotFound, "12" // UNIMPLEMENTED, as gRPC maps HTTP 404
	case errors.Is(err, context.DeadlineExceeded):
		code = http.StatusGatewayTimeout
	case errors.Is(err, errClientLimit):
		code = http.StatusTooManyRequests
	}
	if grpcDeadline(r, err) {
		grpcCode = "4"
	}
	if errors.Is(err, httpproxy.ErrBodyTimeout) || httpproxy.BodyTimedOut(r) {
		// The client was too slow with its body, whatever the upstream
		// error that caused: 408. An HTTP/1.1 connection is closed (its
		// body was not read to the end).
		code = http.StatusRequestTimeout
	}
	return code, grpcCode
}

func (s *l7) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	code, grpcCode := errorCodes(r, err)
	switch {
	case errors.Is(err, errShed):
		w.Header().Set("X-Fogmesh-Shed", "true")
	case errors.Is(err, errOverflow):
		w.Header().Set("X-Fogmesh-Overflow", "true")
	}
	if code == http.StatusRequestTimeout {
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
func (s *l7) transportFor(sv *serviceView, ev *endpointView, port, proto string) http.RoundTripper {
	ck := transportCacheKey{ev, port, proto}
	if t, ok := sv.transports.Load(ck); ok {
		return t.(http.RoundTripper)
	}
	t := s.transportForSlow(sv, ev, port, proto)
	sv.transports.Store(ck, t)
	return t
}

type transportCacheKey struct {
	ev          *endpointView
	port, proto string
}

// upstreamPool is an endpoint's pool of upstream connections: an
// http.Transport (HTTP/1.1 endpoints of requests the net/http server
// read) or an h2up.Pool (h2c and gRPC endpoints).
type upstreamPool interface {
	http.RoundTripper
	close() // no new requests; idle connections closed, the rest when done
}

type h1Transport struct{ *http.Transport }

func (t h1Transport) close() { t.CloseIdleConnections() }

type h2Pool struct{ *h2up.Pool }

func (p h2Pool) close() { p.Close() }

func (s *l7) transportForSlow(sv *serviceView, ev *endpointView, port, proto string) http.RoundTripper {
	// Everything the dial closes over is in the key, so a moved endpoint
	// or a changed timeout gets a fresh pool (pruneTransports drops the old).
	key := poolKey(sv, ev, port, proto)
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.transports[key]; t != nil {
		return t
	}
	a := s.a
	if proto != "http" {
		// h2c and gRPC endpoints: the lean HTTP/2 client (package h2up);
		// maxRequestsPerConnection caps the streams of a connection.
		var pool *h2up.Pool // Waiting: a dial (l7h2wait.go)
		pool = h2up.New(h2up.Config{
			Waiting: h2WillWait,
			Dial: func(ctx context.Context) (net.Conn, error) {
				c, err := a.dialEndpoint(ctx, sv, ev, port)
				if err != nil {
					return nil, err
				}
				// HTTP/2 connections are long-lived: one over a mesh
				// session the path manager retires (a punched path
				// replaced the relay) is drained, so that new requests
				// take the new path. The pool reads on one goroutine and
				// serialises its writes.
				return httpproxy.DrainOnRetire(httpproxy.RawTCP(c), pool.CloseIdleConnections), nil
			},
			DialError:   func(err error) error { return &dialError{err} },
			IdleTimeout: l7IdleTimeout(sv),
			MaxStreams:  sv.svc.Spec.CircuitBreaker.MaxRequestsPerConnection,
			OnPanic:     a.h2upPanicked,
		})
		p := h2Pool{pool}
		s.transports[key] = p
		return p
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	t := &http.Transport{
		Proxy:               nil,
		Protocols:           &protos,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     l7IdleTimeout(sv),
		// maxRequestsPerConnection 1: no keep-alive. Larger values are
		// counted on the HTTP/1.1 fast path's pools only (httpproxy.Pool).
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
	s.transports[key] = h1Transport{t}
	return t
}
