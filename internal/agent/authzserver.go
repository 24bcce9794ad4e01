package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/authz"
	"github.com/fogmesh/fogmesh/internal/h2srv"
	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/httpproxy"
	"github.com/fogmesh/fogmesh/internal/transport"
	"golang.org/x/net/http2"
)

// The destination side's per-request HTTP server (authzServer): it serves
// the mesh streams of HTTP, HTTP/2 and gRPC ports, vouches for each
// request's source identity, authorizes each request and proxies it to the
// workload.

// authzServer serves the mesh streams of HTTP ports whose requests must be
// authorized one by one, stream by stream: HTTP/2 (what the source agent's
// h2up writes on h2c and gRPC ports) by the agent's own HTTP/2 server
// (package h2srv), anything else by one net/http server (HTTP/1.1, and h2c
// on http ports), both with the same normalising, authorizing handler.
type authzServer struct {
	a   *Agent
	ln  *connListener
	srv *http.Server
	h2  *h2srv.Server
	rp  *httputil.ReverseProxy

	h2Streams atomic.Int64 // mesh streams served by h2, for tests
}

type meshStreamKey struct{}

// meshStream is one stream served by authzServer.
type meshStream struct {
	h                    transport.Header
	sourceID, sourceNode string
	proto                string
	local                *meshConn
	// streamCtx is the mesh stream's context (its TLS peer), for vouching
	// per request.
	streamCtx context.Context
	// perConn: the stream was authorized when it opened (an auto port, as
	// a TCP connection); its requests are vouched for, not decided again.
	perConn bool
	// agentWritten: the stream is L7 (transport.Header.L7), its requests
	// written by the source agent. Otherwise the bytes are a client's,
	// and no identity or forwarding header in them is believed.
	agentWritten bool

	mu     sync.Mutex // guards t, closeT
	t      http.RoundTripper
	closeT func() // ends t's idle upstream connections; nil before t
}

// transport returns the stream's upstream pool: its first connection is
// the one DialLocal opened, further ones are dialed. h2c and gRPC ports
// get the agent's lean HTTP/2 client (package h2up), as at the source.
func (ms *meshStream) transport(a *Agent) http.RoundTripper {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.t == nil {
		var first atomic.Pointer[meshConn]
		first.Store(ms.local)
		dial := func(ctx context.Context) (net.Conn, error) {
			if c := first.Swap(nil); c != nil {
				return c, nil
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", ms.local.addr)
		}
		if ms.proto == "http" {
			var protos http.Protocols
			protos.SetHTTP1(true)
			t := &http.Transport{Protocols: &protos, MaxIdleConnsPerHost: 8, IdleConnTimeout: 90 * time.Second,
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) }}
			ms.t, ms.closeT = t, t.CloseIdleConnections
		} else {
			// Close: no new requests (the stream has ended), idle
			// connections now, the rest when their requests are done.
			p := h2up.New(h2up.Config{Dial: dial, IdleTimeout: 90 * time.Second, OnPanic: a.h2upPanicked})
			ms.t, ms.closeT = p, p.Close
		}
	}
	return ms.t
}

// closeIdle closes the stream's idle upstream connections.
func (ms *meshStream) closeIdle() {
	ms.mu.Lock()
	closeT := ms.closeT
	ms.mu.Unlock()
	if closeT != nil {
		closeT()
	}
}

// servedConn marks the end of a stream handed to the HTTP server.
type servedConn struct {
	net.Conn
	ms     *meshStream
	closed chan struct{}
	once   sync.Once
}

func (c *servedConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func newAuthzServer(a *Agent) *authzServer {
	s := &authzServer{a: a, ln: &connListener{ch: make(chan net.Conn), closed: make(chan struct{})}}
	s.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			httpproxy.ScrubProxyRequest(pr)
			// The source agent set the forwarding headers, and handle the
			// identity this agent vouched for: they pass on.
			for _, k := range sourceAgentHeaders {
				if v := pr.In.Header[k]; v != nil {
					pr.Out.Header[k] = v
				}
			}
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = pr.In.Host
			if pr.Out.URL.Host == "" {
				pr.Out.URL.Host = "workload"
			}
			pr.Out.Host = pr.In.Host
		},
		Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			ms := r.Context().Value(meshStreamKey{}).(*meshStream)
			resp, err := ms.transport(a).RoundTrip(r)
			if tb := httpproxy.TimedBodyOf(r); tb != nil && err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
				tb.Stop() // the connection is the workload's from here on (ReverseProxy hijacks it)
			} else if tb != nil && err == nil {
				tb.AnsweredBy(resp) // response header: the body bound ends, the workload reads the rest as the response goes out (httpproxy.TimedBody)
			}
			return resp, err
		}),
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Del(hdrWorkloadRefused) // only this agent says so, never the workload
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			a.log.Debug("agent: authorized request failed", "host", r.Host, "err", err)
			code := http.StatusBadGateway
			if httpproxy.BodyTimedOut(r) {
				code = http.StatusRequestTimeout
			} else if isDialFailure(err) {
				peerRefusedResponse(w)
				return
			} else if grpcUpstreamError(w, r, err) {
				return
			}
			w.WriteHeader(code)
		},
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	handler := a.normalizingHandler(http.HandlerFunc(s.handle))
	s.h2 = &h2srv.Server{Handler: handler, ErrorLog: a.log.Debug, OnPanic: a.h2srvPanicked}
	s.srv = &http.Server{
		Handler:           handler,
		Protocols:         &protos,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       authzIdle,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if sc, ok := c.(*servedConn); ok {
				return context.WithValue(ctx, meshStreamKey{}, sc.ms)
			}
			return ctx
		},
		ErrorLog: a.serverErrorLog(), // net/http's panics at error level, counted (gopanic.go)
	}
	return s
}

// authzIdle closes a mesh stream served per request after this long
// without a request.
const authzIdle = 5 * time.Minute

// sourceAgentHeaders are the headers of a remote request that the source
// agent set (or, for SourceIDHeader, authzServer.handle after vouching).
var sourceAgentHeaders = []string{SourceIDHeader, "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (s *authzServer) run() error {
	s.srv.Serve(s.ln)
	return nil
}

func (s *authzServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.h2.Shutdown(ctx)
	s.srv.Shutdown(ctx)
	s.srv.Close()
	s.ln.Close()
}

// serve serves the stream until it is done: HTTP/2 with prior knowledge on
// an h2c or gRPC port by the HTTP/2 server, anything else by net/http's.
func (s *authzServer) serve(ctx context.Context, stream net.Conn, ms *meshStream) {
	defer ms.closeIdle()
	if ms.proto != "http" {
		h2, read, err := sniffPreface(stream)
		if h2 {
			s.h2Streams.Add(1)
			// The stream's context is the requests' (its end closes the
			// connection), with the stream for handle.
			s.h2.ServeConn(stream, h2srv.ConnOptions{Context: context.WithValue(ctx, meshStreamKey{}, ms),
				IdleTimeout: authzIdle, Preface: true})
			return
		}
		if err != nil && len(read) == 0 {
			stream.Close()
			return
		}
		stream = &prefixConn{Conn: stream, r: io.MultiReader(bytes.NewReader(read), stream)}
	}
	sc := &servedConn{Conn: stream, ms: ms, closed: make(chan struct{})}
	if !s.ln.push(sc) {
		return
	}
	select {
	case <-sc.closed:
	case <-ctx.Done():
		sc.Close()
	}
}

func (s *authzServer) handle(w http.ResponseWriter, r *http.Request) {
	defer s.a.recoverHandler() // logged and counted (gopanic.go)
	ms, _ := r.Context().Value(meshStreamKey{}).(*meshStream)
	if ms == nil {
		http.Error(w, "fogmesh: no stream", http.StatusInternalServerError)
		return
	}
	v := s.a.view.Load()
	sv := v.services[ms.h.Namespace+"/"+ms.h.Service]
	if sv == nil {
		http.Error(w, "fogmesh: unknown service", http.StatusServiceUnavailable)
		return
	}
	svc := ms.h.Namespace + "/" + ms.h.Service
	src := ms.sourceID
	// The destination side's golden metrics: what arrives at this node
	// from other nodes, whatever their agents report.
	sw := &statusWriter{ResponseWriter: w, start: time.Now()}
	w = sw
	var rec *reqObs
	begun := false // the record was begun (o.begin called)
	defer func() {
		// A panic (a bug): counted and recorded as a 500 with the panic,
		// whatever status was written (l7panic.go), and goes on. One
		// before the record began (vouching, the identity headers) begins
		// it here, to end it so.
		p := recover()
		status := sw.status
		if p != nil && p != http.ErrAbortHandler {
			status = http.StatusInternalServerError
			if o := s.a.obs; o != nil && !begun {
				if rec = o.begin(sideServer, r, r.Header, sv, svc); rec != nil {
					rec.src, rec.srcNode, rec.endpoint = src, ms.sourceNode, ms.h.Endpoint
				}
			}
		}
		s.a.serverMetrics(src, svc, ms.sourceNode, status, sw.headerAfter())
		switch {
		case rec == nil:
		case p == nil || p == http.ErrAbortHandler:
			rec.end(sw.status, "", nil)
		default:
			rec.endPanicked(p)
		}
		if p != nil {
			panic(p)
		}
	}()
	if !ms.agentWritten {
		// A client's bytes relayed raw by its agent: the stream's vouched
		// identity is the only one, and no X-Forwarded-* is the agent's.
		httpproxy.DropForwardedHeaders(r.Header)
	} else if claimed := r.Header.Get(SourceIDHeader); claimed != "" {
		src, _ = s.a.vouch(ms.streamCtx, ms.h, claimed)
	}
	// The workload sees the identity this agent accepted, never a claim
	// it refused, in no spelling.
	httpproxy.DropIdentityHeaders(r.Header)
	if src != "" {
		r.Header.Set(SourceIDHeader, src)
	}
	if o := s.a.obs; o != nil {
		// This hop's span (a child of the source agent's) and access-log
		// line; r's header goes on to the workload with its trace context.
		begun = true
		if rec = o.begin(sideServer, r, r.Header, sv, svc); rec != nil {
			rec.src, rec.srcNode, rec.endpoint = src, ms.sourceNode, ms.h.Endpoint
		}
	}
	if ms.perConn { // decided when the stream opened
		s.rp.ServeHTTP(w, r)
		return
	}

	num, _ := portOf(sv, ms.h.Port)
	req := authz.Request{SourceID: src, SourceNode: ms.sourceNode, Namespace: ms.h.Namespace, Service: ms.h.Service,
		Port: ms.h.Port, PortNumber: num, Proto: authz.HTTP, Method: r.Method, Path: authzPath(r), Host: r.Host, Header: r.Header}
	var tb *httpproxy.TimedBody
	if r.Body != nil && r.Body != http.NoBody {
		// The source agent bounds its client's body; this bounds a peer's
		// (timeouts.requestBody between reads, not the request timeout,
		// which a route or class may raise where the request entered).
		tb = new(httpproxy.TimedBody)
		if r.ProtoMajor == 1 {
			tb.InitH1(w, r) // deadlines, and full duplex once the workload answers
		} else {
			tb.Init(r.Body, http.NewResponseController(w))
		}
		tb.Arm(time.Duration(sv.svc.Spec.Timeouts.RequestBody), 0)
		r = r.WithContext(httpproxy.WithTimedBody(r.Context(), tb))
		r.Body = tb
	}
	if d := s.a.decide(r.Context(), v.authz, &req); !d.Allow {
		if tb != nil {
			tb.Finish() // what is left of the body is only drained, within one timeouts.requestBody
		}
		writeDenied(w, r.Header)
		return
	}
	s.rp.ServeHTTP(w, r)
	if tb != nil {
		tb.Unanswered() // the rest of the body, bounded (httpproxy.TimedBody); after a panic the connection closes
	}
}

// hdrWorkloadRefused marks the answer of a destination agent that could not
// connect to its workload for a request of a stream it serves per request
// (the stream's first connection was made when it opened; later ones per
// request): the client's agent then fails over to another endpoint as after
// a refused connect, for any method, since nothing of the request was sent.
// The destination agent removes it from workload responses.
const hdrWorkloadRefused = "X-Fogmesh-Workload-Refused"

var errWorkloadRefused = errors.New("the endpoint's agent could not connect to its workload")

func peerRefusedResponse(w http.ResponseWriter) {
	w.Header().Set(hdrWorkloadRefused, "1")
	w.WriteHeader(http.StatusServiceUnavailable)
}

// isDialFailure reports whether err is a failure to connect (nothing sent).
func isDialFailure(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// grpcDeadline reports whether a failed gRPC request ran out of its
// deadline: a grpc-go server resets a stream with CANCEL when the call's
// grpc-timeout runs out, which is DEADLINE_EXCEEDED to the caller (as
// UNAVAILABLE it reached a client whose own deadline was a moment away).
func grpcDeadline(r *http.Request, err error) bool {
	var se *h2up.StreamError
	return errors.As(err, &se) && se.Code == http2.ErrCodeCancel && r.Header.Get("Grpc-Timeout") != ""
}

// grpcUpstreamError answers a failed gRPC request as gRPC does, trailers
// only, rather than with a bare 502 a gRPC client cannot read:
// DEADLINE_EXCEEDED when the call ran out of its deadline (grpcDeadline),
// any other failure UNAVAILABLE.
func grpcUpstreamError(w http.ResponseWriter, r *http.Request, err error) bool {
	if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return false
	}
	code := "14"
	if grpcDeadline(r, err) {
		code = "4"
	}
	w.Header().Set("Content-Type", "application/grpc")
	w.Header().Set("Grpc-Status", code)
	w.Header().Set("Grpc-Message", "fogmesh: "+err.Error())
	w.WriteHeader(http.StatusOK)
	return true
}
