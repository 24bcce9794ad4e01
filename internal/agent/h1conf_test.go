package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/paths"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// capturedReq is one request as a capturing backend read it.
type capturedReq struct {
	method, target, host string
	header, trailer      http.Header
	body                 []byte
	complete             bool // the body was read to its end
}

// captureBackend is an HTTP/1.1 endpoint that records every byte it
// receives and every request it can parse (leniently, with
// http.ReadRequest, as a tolerant workload would), and answers with
// respond (default: 200 "ok").
type captureBackend struct {
	ln      net.Listener
	respond func(r *http.Request) string

	mu   sync.Mutex // guards the following
	raw  bytes.Buffer
	reqs []capturedReq
	gen  int // take calls so far: a request read across one is dropped
	open int // connections open
}

func startCaptureBackend(t testing.TB, respond func(r *http.Request) string) *captureBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &captureBackend{ln: ln, respond: respond}
	var wg sync.WaitGroup
	var conns sync.Map
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, nil)
			b.mu.Lock()
			b.open++
			b.mu.Unlock()
			wg.Add(1)
			go func() { // captureConn
				defer wg.Done()
				defer func() {
					c.Close()
					conns.Delete(c)
					b.mu.Lock()
					b.open--
					b.mu.Unlock()
				}()
				b.serve(c)
			}()
		}
	}()
	return b
}

// serveH1 is an HTTP/1.1 endpoint on a loopback port (serveConns), for a
// test that answers by hand: it reads each connection's requests with
// http.ReadRequest and hands each to handle, which writes its answer to c
// and returns false to close the connection.
func serveH1(t testing.TB, handle func(c net.Conn, br *bufio.Reader, req *http.Request) (more bool)) *net.TCPAddr {
	t.Helper()
	return serveConns(t, func(c net.Conn) { // serveH1Conn
		defer c.Close()
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil || !handle(c, br, req) {
				return
			}
		}
	})
}

type recordingReader struct {
	r io.Reader
	b *captureBackend
}

func (r recordingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.b.mu.Lock()
	r.b.raw.Write(p[:n])
	r.b.mu.Unlock()
	return n, err
}

func (b *captureBackend) serve(c net.Conn) {
	br := bufio.NewReader(recordingReader{c, b})
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		b.mu.Lock()
		i, gen := len(b.reqs), b.gen
		b.reqs = append(b.reqs, capturedReq{method: req.Method, target: req.RequestURI, host: req.Host, header: req.Header.Clone()})
		b.mu.Unlock()
		body, err := io.ReadAll(req.Body)
		b.mu.Lock()
		if b.gen == gen {
			b.reqs[i].body, b.reqs[i].complete, b.reqs[i].trailer = body, err == nil, req.Trailer.Clone()
		}
		b.mu.Unlock()
		if err != nil {
			return
		}
		resp := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
		if req.Method == http.MethodHead {
			resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
		}
		if b.respond != nil {
			resp = b.respond(req)
		}
		if _, err := io.WriteString(c, resp); err != nil || req.Method == http.MethodConnect {
			return // a CONNECT's 2xx response would start a tunnel
		}
	}
}

func (b *captureBackend) port() int { return b.ln.Addr().(*net.TCPAddr).Port }

// take returns what the backend received so far and forgets it.
func (b *captureBackend) take() (raw string, reqs []capturedReq) {
	b.mu.Lock()
	defer b.mu.Unlock()
	raw, reqs = b.raw.String(), b.reqs
	b.raw.Reset()
	b.reqs = nil
	b.gen++
	return raw, reqs
}

func (b *captureBackend) openConns() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.open
}

// exchangeRaw writes raw to addr, half-closes, and returns everything the
// agent answered until it closed the connection.
func exchangeRaw(t testing.TB, addr, raw string) string {
	t.Helper()
	return exchangeH1(t, addr, raw, true)
}

// exchangeH1 is exchangeRaw, without the half-close if halfClose is false
// (net/http's server takes one as the client gone and cancels its
// request; raw must then end with a request that closes).
func exchangeH1(t testing.TB, addr, raw string, halfClose bool) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	if halfClose {
		c.(*net.TCPConn).CloseWrite()
	}
	out, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v (got %q)", raw, err, out)
	}
	return string(out)
}

// TestH1Conformance: the HTTP/1.1 fast path refuses what net/http's server
// refuses (issue 9, finding 1), closes after a request framed by both
// Content-Length and Transfer-Encoding, and forwards no identity or
// forwarding header of the client's in any spelling, nor any request
// trailer (finding 5), on the fast path and on the ReverseProxy path it hands
// other requests to.
func TestH1Conformance(t *testing.T) {
	be := startCaptureBackend(t, nil)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("conf", 19360, "http"))
	startAgent(t, agentOpts{name: "c", site: "s1", region: "r1", vipOctet: 236, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("conf", "conf-1", be.port())}})
	addr := "127.236.0.1:19360"
	waitListening(t, addr)
	if out := exchangeRaw(t, addr, "GET /warm HTTP/1.1\r\nHost: conf\r\nConnection: close\r\n\r\n"); !strings.HasPrefix(out, "HTTP/1.1 200") {
		t.Fatalf("warm-up: %q", out)
	}
	be.take()

	t.Run("refused", func(t *testing.T) {
		hidden := "0\r\n\r\nGET /hidden HTTP/1.1\r\nHost: conf\r\nX-Fogmesh-Source-Id: x\r\n\r\n"
		for _, raw := range []string{
			// RFC 9112 §5.1: no whitespace between name and colon. A
			// tolerant backend reads the body as chunked and the rest as
			// a second request.
			fmt.Sprintf("POST /a HTTP/1.1\r\nHost: conf\r\nTransfer-Encoding : chunked\r\nContent-Length: %d\r\n\r\n%s", len(hidden), hidden),
			"GET /a HTTP/1.1\r\nHost: conf\r\nX Y: z\r\n\r\n",
			"GET /a HTTP/1.1\r\nHost: a@evil.com\r\n\r\n",
			"GET /a HTTP/1.1\r\nHost: evil.com/x?y\r\n\r\n",
			"GET /a HTTP/1.1\r\nHost: evil.com\\x\r\n\r\n",
			"GET /a HTTP/1.1\r\nHost: conf\r\nX: a\x00b\r\n\r\n",
			"GET /a HTTP/1.1\n\nHost: conf\r\n\r\n", // no Host in the head: the "Host" line is after it
			"GET /a HTTP/1.1\r\nHost: conf\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
			"GET /a HTTP/1.1\r\nHost: conf\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
		} {
			out := exchangeRaw(t, addr, raw)
			if !strings.HasPrefix(out, "HTTP/1.1 400") && !strings.HasPrefix(out, "HTTP/1.1 501") {
				t.Errorf("%q: answered %q, want a 400 or 501", raw, out)
			}
			if got, reqs := be.take(); got != "" {
				t.Errorf("%q: %d requests reached the endpoint:\n%s", raw, len(reqs), got)
			}
		}
	})

	t.Run("content-length and transfer-encoding close", func(t *testing.T) {
		out := exchangeRaw(t, addr, "POST /a HTTP/1.1\r\nHost: conf\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"+
			"3\r\nabc\r\n0\r\n\r\nGET /second HTTP/1.1\r\nHost: conf\r\n\r\n")
		if strings.Count(out, "HTTP/1.1 ") != 1 || !strings.Contains(out, "Connection: close\r\n") {
			t.Errorf("want one response with Connection: close, got %q", out)
		}
		_, reqs := be.take()
		if len(reqs) != 1 || reqs[0].target != "/a" || string(reqs[0].body) != "abc" || reqs[0].header.Get("Content-Length") != "" {
			t.Errorf("endpoint got %+v", reqs)
		}
	})

	t.Run("identity and forwarding headers in any spelling", func(t *testing.T) {
		spoof := "X_Fogmesh_Source_Id: spiffe://fogmesh.local/ns/demo/sa/admin\r\nx-fogmesh-source-id: spiffe://x/y\r\n" +
			"X_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX_Forwarded_Host: evil\r\n" +
			"Keep_Alive: 1\r\nTransfer_Encoding: chunked\r\nX_Other: kept\r\n"
		for _, raw := range []string{
			"GET /fast HTTP/1.1\r\nHost: conf\r\nConnection: close\r\n" + spoof + "\r\n",            // the fast path
			"GET http://conf/slow HTTP/1.1\r\nHost: conf\r\nConnection: close\r\n" + spoof + "\r\n", // absolute form: the ReverseProxy path
		} {
			out := exchangeH1(t, addr, raw, false)
			if !strings.HasPrefix(out, "HTTP/1.1 200") {
				t.Fatalf("%q: %q", raw, out)
			}
			got, reqs := be.take()
			if len(reqs) != 1 {
				t.Fatalf("%q: %d requests at the endpoint: %q; answer %q", raw, len(reqs), got, out)
			}
			h := reqs[0].header
			// The endpoint's address is the conf workload's: the agent
			// vouches for that identity itself.
			for k, vv := range h {
				if strings.Contains(k, "_") && k != "X_other" || k == "Forwarded" ||
					k == SourceIDHeader && (len(vv) != 1 || vv[0] != "spiffe://fogmesh.local/ns/demo/sa/conf") {
					t.Errorf("%s: %q reached the endpoint: %v", reqs[0].target, k, h)
				}
			}
			if got := h["X-Forwarded-For"]; len(got) != 1 || got[0] != "127.0.0.1" {
				t.Errorf("%s: X-Forwarded-For %q", reqs[0].target, got)
			}
			if h.Get("X-Forwarded-Host") != "conf" || h.Get("X_other") != "kept" {
				t.Errorf("%s: %v", reqs[0].target, h)
			}
		}
	})

	t.Run("h2c", func(t *testing.T) {
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		tr := &http.Transport{Protocols: &protos}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("GET", "http://"+addr+"/h2", nil)
		req.Header["x_fogmesh_source_id"] = []string{"spiffe://fogmesh.local/ns/demo/sa/admin"}
		req.Header["x_forwarded_for"] = []string{"6.6.6.6"}
		req.Header["x-forwarded-for"] = []string{"6.6.6.6"}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
			t.Fatalf("%s %s", resp.Proto, resp.Status)
		}
		_, reqs := be.take()
		if len(reqs) != 1 {
			t.Fatalf("%d requests at the endpoint", len(reqs))
		}
		h := reqs[0].header
		for k := range h {
			if strings.Contains(k, "_") {
				t.Errorf("%q reached the endpoint: %v", k, h)
			}
		}
		if got := h["X-Forwarded-For"]; len(got) != 1 || got[0] != "127.0.0.1" {
			t.Errorf("X-Forwarded-For %q", got)
		}
	})

	// Request trailers are dropped, as ReverseProxy and the h2c path drop
	// their values: authorization never sees them, so a workload that
	// merges trailers into the header must not get one (X-Admin past a
	// header-based DENY).
	for _, target := range []string{"/t", "http://conf/t"} { // fast path; ReverseProxy
		t.Run("trailers "+target, func(t *testing.T) {
			// No half-close: net/http's server (the ReverseProxy path) takes
			// one as the client gone and cancels the request.
			out := exchangeH1(t, addr, "POST "+target+" HTTP/1.1\r\nHost: conf\r\nConnection: close\r\nTrailer: X-Fogmesh-Source-Id, X-Sum, X-Admin\r\nTransfer-Encoding: chunked\r\n\r\n"+
				"3\r\nabc\r\n0\r\nX-Fogmesh-Source-Id: spiffe://fogmesh.local/ns/demo/sa/admin\r\nX_Fogmesh_Source_Id: y\r\nHost: evil\r\n"+
				"Content-Length: 9\r\nX-Sum: 3\r\nX-Admin: 1\r\n\r\n", false)
			if !strings.HasPrefix(out, "HTTP/1.1 200") {
				t.Fatalf("%q", out)
			}
			raw, reqs := be.take()
			if len(reqs) != 1 || string(reqs[0].body) != "abc" {
				t.Fatalf("endpoint got %+v\nraw %q\nclient got %q", reqs, raw, out)
			}
			if strings.Contains(raw, "sa/admin") || strings.Contains(raw, "X_Fogmesh") || strings.Contains(raw, "evil") || strings.Contains(raw, "Content-Length: 9") {
				t.Errorf("a forbidden trailer reached the endpoint:\n%s", raw)
			}
			values := 0 // ReverseProxy declares the names it then sends no value for
			for _, vv := range reqs[0].trailer {
				values += len(vv)
			}
			if values != 0 || strings.Contains(raw, "X-Sum: 3") || strings.Contains(raw, "X-Admin: 1") {
				t.Errorf("request trailers reached the endpoint: %v\n%s", reqs[0].trailer, raw)
			}
		})
	}
}

// TestH1PoolUnreadBytes: a pooled upstream connection goes back to the pool
// only if its response was framed exactly (issue 9, finding 2): a body on a
// HEAD or 204 response, or bytes beyond Content-Length, must not become the
// next client's response.
func TestH1PoolUnreadBytes(t *testing.T) {
	const forged = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
	be := startCaptureBackend(t, func(r *http.Request) string {
		switch r.URL.Path {
		case "/head":
			return "HTTP/1.1 200 OK\r\nContent-Length: 46\r\n\r\n" + forged
		case "/nocontent":
			return "HTTP/1.1 204 No Content\r\n\r\n" + forged
		case "/extra":
			return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + forged
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal"
	})
	c := &http.Client{Timeout: 10 * time.Second}
	base := agentInFront(t, inFront{node: "p", octet: 237, svc: "pool", vipPort: 19361, port: be.port(), client: c}).base
	for _, first := range []string{"HEAD /head", "GET /nocontent", "GET /extra"} {
		method, path, _ := strings.Cut(first, " ")
		for i := range 3 {
			req, _ := http.NewRequest(method, base+path, nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", first, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			resp, err = c.Get(base + "/next")
			if err != nil {
				t.Fatalf("after %s (%d): %v", first, i, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "real" {
				t.Fatalf("after %s (%d): the next request got %s %q", first, i, resp.Status, b)
			}
		}
	}
}

// gatedBurst is a burst of n requests for /burst that its endpoint (a
// captureBackend answering with respond) holds until all n are in, so that
// the burst takes n upstream connections at once.
type gatedBurst struct {
	n        int
	gate     chan struct{}
	inflight sync.WaitGroup // the requests yet to reach the endpoint
	wg       sync.WaitGroup // the requests yet to be answered
	errs     chan error
}

func newGatedBurst(n int) *gatedBurst {
	g := &gatedBurst{n: n, gate: make(chan struct{}), errs: make(chan error, n)}
	g.inflight.Add(n)
	return g
}

// respond answers 200 "ok", a request for /burst once the whole burst is in.
func (g *gatedBurst) respond(r *http.Request) string {
	if r.URL.Path == "/burst" {
		g.inflight.Done()
		<-g.gate // hold every burst request until all are in: one connection each
	}
	return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
}

// start sends the burst, each request with get, and returns once all of
// them reached the endpoint; it fails the test after 10 s.
func (g *gatedBurst) start(t *testing.T, get func() error) {
	t.Helper()
	for range g.n {
		g.wg.Go(func() {
			if err := get(); err != nil {
				g.errs <- err
			}
		})
	}
	done := make(chan struct{})
	go func() { g.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		close(g.gate)
		t.Fatal("the burst did not reach the endpoint")
	}
}

// finish lets the endpoint answer the burst and fails the test on the
// errors of its requests.
func (g *gatedBurst) finish(t *testing.T) {
	t.Helper()
	close(g.gate)
	g.wg.Wait()
	close(g.errs)
	for err := range g.errs {
		t.Fatal(err)
	}
}

// TestH1PoolIdleClose: idle upstream connections of the fast path close
// after the service's timeouts.idle (issue 9, finding 14), also those the
// LIFO pool never reuses.
func TestH1PoolIdleClose(t *testing.T) {
	const burst = 6
	g := newGatedBurst(burst)
	be := startCaptureBackend(t, g.respond)
	tr := &http.Transport{MaxIdleConnsPerHost: burst}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	base := agentInFront(t, inFront{node: "i", octet: 238, svc: "idle", vipPort: 19362, port: be.port(), client: c,
		doc: `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"idle","namespace":"demo"},
	"spec":{"ports":[{"name":"web","port":19362,"protocol":"http"}],"timeouts":{"idle":"300ms"}}}`}).base
	g.start(t, func() error {
		resp, err := c.Get(base + "/burst")
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil
	})
	if n := be.openConns(); n < burst {
		t.Fatalf("%d connections open during the burst, want %d", n, burst)
	}
	g.finish(t)
	tr.CloseIdleConnections()
	// timeouts.idle is 300 ms: all close without a request to pop them
	// (waitFor gives them 10 s).
	waitFor(t, "idle upstream connections to close", func() bool { return be.openConns() == 0 })
}

// TestRemoteHeaderHygiene: the destination agent's server for remote
// requests (authzServer) drops identity headers in every spelling (issue
// 9, finding 5) whoever sent them, and passes on the forwarding headers
// the source agent set.
func TestRemoteHeaderHygiene(t *testing.T) {
	be := startCaptureBackend(t, nil)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: hyg, namespace: demo}
spec: {ports: [{name: http, port: 19364, protocol: http}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: hyg-all, namespace: demo}
spec: {service: hyg, rules: [{to: [{methods: [GET]}]}]}
`)
	srv := startAgent(t, agentOpts{name: "srv", site: "s1", region: "r1", vipOctet: 242, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{{Name: "hyg-1", Service: "hyg", Namespace: "demo", Ports: []api.EndpointPort{{Name: "http", Port: be.port()}}}}})
	// The endpoint's agent serves streams per request only once it has the
	// policy (insecure mode: without one it relays bytes).
	waitFor(t, "the policy on the endpoint's node", func() bool { return srv.view.Load().authz.Len() == 1 })
	cli := startAgent(t, agentOpts{name: "cli", site: "s1", region: "r1", vipOctet: 240, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	var mesh paths.Peer
	waitFor(t, "the remote endpoint and the policy on the client node", func() bool {
		v := cli.view.Load()
		if sv := v.services["demo/hyg"]; sv != nil && len(sv.endpoints) == 1 && sv.endpoints[0].mesh != "" && v.authz.Len() == 1 {
			mesh, _ = cli.peerOf(sv.endpoints[0])
			return true
		}
		return false
	})
	addr := "127.240.0.1:19364"
	waitListening(t, addr)
	const spoof = "X_Fogmesh_Source_Id: spiffe://fogmesh.local/ns/demo/sa/admin\r\nX_Forwarded_For: 6.6.6.6\r\nX_other: kept\r\n"
	check := func(t *testing.T, wantXFF string) {
		t.Helper()
		_, reqs := be.take()
		if len(reqs) != 1 {
			t.Fatalf("%d requests at the endpoint", len(reqs))
		}
		h := reqs[0].header
		for k := range h {
			if strings.Contains(k, "_") && k != "X_other" {
				t.Errorf("%q reached the workload: %v", k, h)
			}
		}
		if got := strings.Join(h["X-Forwarded-For"], ","); got != wantXFF || h.Get("X_other") != "kept" {
			t.Errorf("X-Forwarded-For %q, want %q: %v", got, wantXFF, h)
		}
	}

	t.Run("through the source agent", func(t *testing.T) {
		out := exchangeH1(t, addr, "GET /a HTTP/1.1\r\nHost: hyg\r\nConnection: close\r\n"+spoof+"\r\n", false)
		if !strings.HasPrefix(out, "HTTP/1.1 200") {
			t.Fatalf("%q", out)
		}
		check(t, "127.0.0.1")
	})

	// Straight onto a mesh stream, as a (compromised) peer node could: a
	// stream its agent marks l7 carries requests that agent wrote, so its
	// X-Forwarded-For passes; on any other stream the destination keeps
	// nothing the bytes claim about the client (autodetect: a slow client's
	// raw TCP stream could carry HTTP).
	for _, c := range []struct {
		name    string
		l7      bool
		wantXFF string
	}{{"straight onto an l7 mesh stream", true, "10.1.2.3"}, {"straight onto a raw mesh stream", false, ""}} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := cli.peers.Dial(ctx, mesh, transport.Header{Namespace: "demo", Service: "hyg", Endpoint: "hyg-1", Port: "http", Source: "cli", L7: c.l7})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			s.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(s, "GET /b HTTP/1.1\r\nHost: hyg\r\nConnection: close\r\nX-Forwarded-For: 10.1.2.3\r\n"+spoof+"\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(s), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("%s", resp.Status)
			}
			check(t, c.wantXFF)
		})
	}
}

// TestReleaseIdleShrinksH1Pools: after a burst, the fast path's upstream
// pool holds a connection per request of the burst until the idle timeout
// (90 s here); ReleaseIdle (the memory trim's hook) closes all but
// idlePoolKeep of them, and the next request reuses a kept one.
func TestReleaseIdleShrinksH1Pools(t *testing.T) {
	const burst = 6
	g := newGatedBurst(burst)
	be := startCaptureBackend(t, g.respond)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"shrink","namespace":"demo"},
	"spec":{"ports":[{"name":"web","port":19364,"protocol":"http"}]}}`)
	a := startAgent(t, agentOpts{name: "r", site: "s1", region: "r1", vipOctet: 243, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("shrink", "shrink-1", be.port())}})
	base := "http://127.243.0.1:19364"
	tr := &http.Transport{MaxIdleConnsPerHost: burst}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
	get := func(path string) error {
		resp, err := c.Get(base + path)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	waitFor(t, "listener", func() bool { return get("/") == nil })
	g.start(t, func() error { return get("/burst") })
	g.finish(t)
	open := be.openConns()
	if open < burst {
		t.Fatalf("%d upstream connections open after the burst, want %d (pooled)", open, burst)
	}
	if n := a.ReleaseIdle(); n != open-idlePoolKeep {
		t.Fatalf("ReleaseIdle closed %d connections of %d, want all but %d", n, open, idlePoolKeep)
	}
	waitFor(t, "the pool to keep idlePoolKeep connections", func() bool { return be.openConns() == idlePoolKeep })
	if err := get("/"); err != nil {
		t.Fatal(err)
	}
	if n := be.openConns(); n != idlePoolKeep {
		t.Fatalf("%d upstream connections after a request, want %d (a kept one reused)", n, idlePoolKeep)
	}
}
