package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"
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

	mu         sync.Mutex // guards transports
	transports map[string]*http.Transport
}

type targetKey struct{}

// taggedConn is a client connection handed from a VIP listener to the HTTP
// server, carrying which service port it was accepted on.
type taggedConn struct {
	net.Conn
	target listenTarget
	done   func()
	once   sync.Once
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
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = pr.In.Host
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport:     &lbTransport{l7: s},
		FlushInterval: -1, // stream: gRPC and server-sent events must not wait for a buffer
		ErrorHandler:  s.errorHandler,
		ErrorLog:      slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	s.srv = &http.Server{
		Handler:           rp,
		Protocols:         &protos,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       90 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*taggedConn); ok {
				return context.WithValue(ctx, targetKey{}, tc.target)
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
	s.mu.Lock()
	for _, t := range s.transports {
		t.CloseIdleConnections()
	}
	s.mu.Unlock()
}

// errNoEndpoint is the L7 form of "no healthy endpoint".
var errNoEndpoint = errors.New("no healthy endpoint")

func (s *l7) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusBadGateway
	if errors.Is(err, errNoEndpoint) {
		code = http.StatusServiceUnavailable
	}
	if errors.Is(err, context.Canceled) {
		return // the client went away
	}
	s.a.log.Debug("agent: l7 request failed", "host", r.Host, "path", r.URL.Path, "err", err)
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		// Trailers-only gRPC error: UNAVAILABLE lets gRPC clients retry.
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "14")
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

// transportFor returns the pooled upstream transport of one endpoint.
func (s *l7) transportFor(sv *serviceView, ev *endpointView, port, proto string) *http.Transport {
	key := ev.key + "|" + port + "|" + proto + "|" + ev.mesh
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
		IdleConnTimeout:     90 * time.Second,
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

// lbTransport picks an endpoint for every request, nearest tier first, and
// moves to the next one when connecting fails.
type lbTransport struct{ l7 *l7 }

func (lt *lbTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	a := lt.l7.a
	t, ok := req.Context().Value(targetKey{}).(listenTarget)
	if !ok {
		return nil, errors.New("request without a service")
	}
	sv := a.view.Load().services[t.svc]
	if sv == nil {
		return nil, errNoEndpoint
	}
	cands := a.pick(sv, t.port)
	if len(cands) == 0 {
		a.m.connNoEP.Inc()
		return nil, errNoEndpoint
	}
	// http.Transport closes the request body even when it fails to
	// connect; shield it so a retry on the next endpoint can still send
	// it. The server closes the real body when the handler returns.
	if req.Body != nil && req.Body != http.NoBody {
		out := *req
		out.Body = noCloseBody{req.Body}
		req = &out
	}
	var lastErr error
	for i, ev := range cands {
		if i == maxAttempts {
			break
		}
		if i > 0 {
			a.m.failovers.Inc()
		}
		start := time.Now()
		active := a.endpointActive(ev.key)
		active.Add(1)
		resp, err := lt.l7.transportFor(sv, ev, t.port, t.proto).RoundTrip(req)
		active.Add(-1)
		if err == nil {
			a.stats(ev.key).observe(time.Since(start))
			a.requestMetrics(t.svc, ev, resp.StatusCode, time.Since(start))
			return resp, nil
		}
		lastErr = err
		var de *dialError
		if !errors.As(err, &de) {
			a.requestMetrics(t.svc, ev, 0, time.Since(start))
			return nil, err
		}
		a.m.dialFailures.Inc()
		a.eject(ev)
		a.log.Info("agent: endpoint failed, trying next", "service", t.svc, "endpoint", ev.key, "tier", ev.tier, "err", err)
	}
	return nil, fmt.Errorf("all endpoints failed: %w", lastErr)
}

// requestMetrics records one request. code 0 means no response.
func (a *Agent) requestMetrics(svc string, ev *endpointView, code int, d time.Duration) {
	class := "error"
	if code > 0 {
		class = fmt.Sprintf("%dxx", code/100)
	}
	labels := fmt.Sprintf(`service=%q,endpoint=%q,node=%q,tier=%q`, svc, ev.ep.Meta.Name, ev.ep.Spec.Node, ev.tier)
	a.cfg.Metrics.GetOrCreateCounter(`fogmesh_http_requests_total{` + labels + `,code_class="` + class + `"}`).Inc()
	a.cfg.Metrics.GetOrCreateHistogram(`fogmesh_http_request_duration_seconds{` + labels + `}`).Update(d.Seconds())
}

// noCloseBody ignores Close; see lbTransport.RoundTrip.
type noCloseBody struct{ io.Reader }

func (noCloseBody) Close() error { return nil }
