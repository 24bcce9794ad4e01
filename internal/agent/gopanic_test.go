package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// goPanicLogger is a DecisionLogger that panics for a mirrored copy (its
// Host ends in -shadow) and for the path /panic: a bug in a user's hook,
// called on the mirror's goroutine and in the round trip.
type goPanicLogger struct{}

func (goPanicLogger) LogDecision(ctx context.Context, d AuthzRecord) {
	if d.Request.Path == "/timer" {
		goPanicCtxs <- ctx
		panic("test: a bug in the decision logger (timer)")
	}
	if strings.Contains(d.Request.Host, "-shadow") {
		panic("test: a bug in the decision logger (mirror)")
	}
	if d.Request.Path == "/panic" {
		panic("test: a bug in the decision logger")
	}
}

// goPanicCtxs gets the context of a request to /timer as it is decided
// (goPanicLogger), before the decision panics.
var goPanicCtxs = make(chan context.Context, 4)

// goPanicAgent is an agent (VIPs in 127.73.0.0/16) with demo/gp (VIP
// 127.73.0.1), port 19731 (http) and 19732 (http2), and demo/gm, port
// 19733 (http), every
// request of which is mirrored to a static endpoint (authorized here: its
// copy's decision panics). Every workload answers "ok"; the backend
// answers /slow only once release is closed.
func goPanicAgent(t *testing.T) (a *Agent, release chan struct{}, slowGone chan struct{}) {
	t.Helper()
	a, release, slowGone, _ = goPanicAgentLog(t)
	return a, release, slowGone
}

// goPanicAgentLog is goPanicAgent, with its access log's path.
func goPanicAgentLog(t *testing.T) (a *Agent, release chan struct{}, slowGone chan struct{}, logPath string) {
	t.Helper()
	logPath = filepath.Join(t.TempDir(), "access.log")
	release, slowGone = make(chan struct{}), make(chan struct{}, 16)
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	be := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-release:
			case <-r.Context().Done():
				slowGone <- struct{}{}
				return
			}
		}
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	})}
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go be.Serve(bln)
	t.Cleanup(func() { be.Close() })
	port := bln.Addr().(*net.TCPAddr).Port
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, fmt.Sprintf(`apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: gp, namespace: demo}
spec:
  ports: [{name: web, port: 19731, protocol: http}, {name: h2, port: 19732, protocol: http2}]
  timeouts: {request: 1h}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: gp, namespace: demo}
spec: {service: gp, rules: [{to: [{paths: ["/*"]}]}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: gm, namespace: demo}
spec: {ports: [{name: web, port: 19733, protocol: http}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Endpoint
metadata: {name: gm-shadow, namespace: demo, labels: {version: v2}}
spec: {service: gm, address: 127.0.0.1, ports: [{name: web, port: %d}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: DestinationPolicy
metadata: {name: gm, namespace: demo}
spec:
  service: gm
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Route
metadata: {name: gm, namespace: demo}
spec:
  service: gm
  rules: [{backends: [{subset: v1}], mirror: {subset: v2}}]
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: gm, namespace: demo}
spec: {service: gm, rules: [{to: [{paths: ["/*"]}]}]}
`, port))
	gm := webWorkload("gm", "gm-v1", port)
	gm.Labels = map[string]string{"version": "v1"}
	a = startAgentWith(t, agentOpts{name: "gpn", site: "s1", region: "r1", vipOctet: 73, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{gm, {Name: "gp-1", Service: "gp", Namespace: "demo",
			Ports: []api.EndpointPort{{Name: "web", Port: port}, {Name: "h2", Port: port}}}}},
		func(c *Config) {
			c.DecisionLogger = goPanicLogger{}
			c.AccessLog = AccessLogConfig{Path: logPath}
		})
	waitFor(t, "the policies and route", func() bool {
		v := a.view.Load()
		return v.authz.Len() == 2 && v.services["demo/gm"] != nil && v.services["demo/gm"].route != nil && len(endpointsOf(a, "demo/gm")) == 2
	})
	waitGet200(t, &http.Client{Timeout: 5 * time.Second}, "http://127.73.0.1:19731/")
	return a, release, slowGone, logPath
}

// panicsNow is the agent's count of recovered panics.
func panicsNow(a *Agent) uint64 { return a.m.panics.Get() }

// getOK asks url with a fresh client and wants 200 "ok".
func getOK(t *testing.T, url string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}).Get(url)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok" {
		t.Fatalf("GET %s: %s %q", url, resp.Status, b)
	}
}

// TestPanicInMirror: a mirrored copy whose authorization panics (its
// DecisionLogger: a user's hook, on the mirror's own goroutine) used to
// end the agent's process. It is recovered, counted and logged; the
// original is answered, the copy's slot is given back, and the agent
// serves on.
func TestPanicInMirror(t *testing.T) {
	a, _, _ := goPanicAgent(t)
	vip := netip.AddrPortFrom(a.view.Load().services["demo/gm"].vip4, 19733).String()
	waitListening(t, vip)
	base := panicsNow(a)
	for i := range 3 {
		getOK(t, fmt.Sprintf("http://%s/m/%d", vip, i))
	}
	waitFor(t, "the three panics counted", func() bool { return panicsNow(a) == base+3 })
	waitFor(t, "no copy in flight", func() bool { return a.l7.mirrors.Load() == 0 })
	var m strings.Builder
	a.cfg.Metrics.WritePrometheus(&m)
	if !strings.Contains(m.String(), `fogmesh_http_mirror_requests_total{service="demo/gm",target="demo/gm",result="panic"} 3`) {
		t.Errorf("no mirror result panic 3 in\n%s", m.String())
	}
	holdsNothing(t, a)
	getOK(t, "http://127.73.0.1:19731/after")
}

// TestPanicInHandlerCounted: a panic in the handler of net/http's server
// (HTTP/1.0) and of h2srv (h2c) was logged at debug level only and not
// counted; it is counted now, the request cut, and the agent serves on.
func TestPanicInHandlerCounted(t *testing.T) {
	a, _, _ := goPanicAgent(t)
	base := panicsNow(a)
	c, err := net.Dial("tcp", "127.73.0.1:19731")
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /panic HTTP/1.0\r\nHost: gp.demo\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
		t.Fatalf("HTTP/1.0: an answer to the request that panicked: %s", resp.Status)
	}
	c.Close()
	waitFor(t, "net/http's panic counted", func() bool { return panicsNow(a) == base+1 })

	h2 := &http.Client{Timeout: 10 * time.Second, Transport: &http2.Transport{AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}}}
	defer h2.CloseIdleConnections()
	if resp, err := h2.Get("http://127.73.0.1:19732/panic"); err == nil {
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatalf("h2c: an answer to the request that panicked: %s %q", resp.Status, b)
		}
	}
	waitFor(t, "h2srv's panic counted", func() bool { return panicsNow(a) == base+2 })
	waitFor(t, "no request in flight", func() bool { return a.l7Inflight.Load() == 0 })
	resp, err := h2.Get("http://127.73.0.1:19732/after")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("h2c after the panic: %s", resp.Status)
	}
	getOK(t, "http://127.73.0.1:19731/after")
	h2.CloseIdleConnections()
	holdsNothing(t, a)
}

// closeCounter counts the Close of a body.
type closeCounter struct {
	io.Reader
	closed atomic.Int32
}

func (c *closeCounter) Close() error { c.closed.Add(1); return nil }

// TestPanicInKeptResponse: a retried response read on in the background
// (keepResponse) whose body's read panics used to end the process; the
// read's panic is recovered and counted, the response not kept and closed
// at once (not after the wait), and the agent serves on.
func TestPanicInKeptResponse(t *testing.T) {
	a, _, _ := goPanicAgent(t)
	base := panicsNow(a)
	body := &closeCounter{Reader: io.MultiReader(strings.NewReader("x"), iotest{})}
	resp := &http.Response{StatusCode: 503, ContentLength: 10, Header: http.Header{}, Body: body}
	start := time.Now()
	if kept := keepResponse(resp, time.Minute, a.l7.h1.rt.keptPanicked); kept != nil {
		t.Fatal("a response whose read panicked was kept")
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("keepResponse waited %v", d)
	}
	if body.closed.Load() != 1 {
		t.Fatalf("the body closed %d times, want 1", body.closed.Load())
	}
	waitFor(t, "the panic counted", func() bool { return panicsNow(a) == base+1 })
	getOK(t, "http://127.73.0.1:19731/after")
}

// iotest is a reader that panics.
type iotest struct{}

func (iotest) Read([]byte) (int, error) { panic("test: a bug in a response body's read") }

// panicAfterHeadConn panics on its first read after a request head was
// read: the fast path's watch of its client (a slow response head) reads
// it, on a goroutine of its own.
type panicAfterHeadConn struct {
	net.Conn
	seen  []byte
	fired bool
}

func (c *panicAfterHeadConn) Read(p []byte) (int, error) {
	if !c.fired && strings.Contains(string(c.seen), "\r\n\r\n") {
		c.fired = true
		panic("test: a bug while watching the client")
	}
	n, err := c.Conn.Read(p)
	c.seen = append(c.seen, p[:n]...)
	return n, err
}

// TestPanicInHeadWatch: a panic in the fast path's watch of its client
// while a slow response head is awaited (its own goroutine, a timer's)
// used to end the process. It is recovered and counted; the request is
// cancelled as if the client had gone (the endpoint's request ends, the
// client's connection is closed), nothing stays held, and the agent
// serves on.
func TestPanicInHeadWatch(t *testing.T) {
	old := headWatchAfter
	t.Cleanup(func() { headWatchAfter = old })
	headWatchAfter = 10 * time.Millisecond
	a, release, slowGone := goPanicAgent(t)
	defer close(release)
	base := panicsNow(a)
	c, sc := loopbackPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer a.recoverConn(sc)
		a.handleConn(context.Background(), netip.MustParseAddrPort("127.73.0.1:19731"), &panicAfterHeadConn{Conn: sc})
	}()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	fmt.Fprintf(c, "GET /slow HTTP/1.1\r\nHost: gp.demo\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil && resp.StatusCode == 200 {
		t.Fatalf("an answer to the request whose watch panicked: %s", resp.Status)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection still served")
	}
	select {
	case <-slowGone:
	case <-time.After(10 * time.Second):
		t.Fatal("the endpoint's request was not cancelled")
	}
	waitFor(t, "the panic counted", func() bool { return panicsNow(a) == base+1 })
	holdsNothing(t, a)
	getOK(t, "http://127.73.0.1:19731/after")
}

// TestPanicInH2BodyWriter: a request body read by h2up's writer (its own
// goroutine; an HTTP/1.1 client's request to an h2c endpoint) whose read
// panics used to end the process. The stream is reset, the request fails
// (502), the panic is counted, and the agent serves on.
func TestPanicInH2BodyWriter(t *testing.T) {
	a, _, _ := goPanicAgent(t)
	base := panicsNow(a)
	sv := a.view.Load().services["demo/gp"]
	ev := a.pickSubsetInto(nil, sv, "h2", "", nil)
	if len(ev) == 0 {
		t.Fatal("no h2 endpoint")
	}
	tr := a.l7.transportFor(sv, ev[0], "h2", "http2")
	req, _ := http.NewRequest("POST", "http://gp.demo/body", io.MultiReader(strings.NewReader("first"), slowPanic{}))
	req.ContentLength = -1
	resp, err := tr.RoundTrip(req)
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil || !errors.Is(err, h2up.ErrBodyPanicked) {
		t.Fatalf("round trip: %v, want the body's panic", err)
	}
	waitFor(t, "the panic counted", func() bool { return panicsNow(a) == base+1 })
	req, _ = http.NewRequest("POST", "http://gp.demo/body", strings.NewReader("fine"))
	resp, err = tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Fatalf("after the panic: %q", b)
	}
}

// slowPanic panics on its first read (after the body's first bytes went
// out: on h2up's writer, not the caller's goroutine).
type slowPanic struct{}

func (slowPanic) Read([]byte) (int, error) { panic("test: a bug in a request body's read") }

// TestPanicServerRecord: a request of a mesh stream whose handling
// panics on the endpoint's agent (authzServer; here its DecisionLogger)
// was recorded with the status written (none: 0) and its panic not
// counted; its access-log line and golden metrics now say 500 with the
// panic, the panic is counted, and the server cuts the response.
func TestPanicServerRecord(t *testing.T) {
	a, _, _, logPath := goPanicAgentLog(t)
	base := panicsNow(a)
	ep := endpointsOf(a, "demo/gp")[0]
	ms := &meshStream{h: transport.Header{Namespace: "demo", Service: "gp", Port: "web", Endpoint: ep.Name},
		sourceNode: "peer", proto: "http", local: &meshConn{addr: "127.0.0.1:1"}, streamCtx: context.Background(), agentWritten: true}
	r := httptest.NewRequest("GET", "http://gp.demo/panic", nil)
	r = r.WithContext(context.WithValue(r.Context(), meshStreamKey{}, ms))
	p := func() (p any) {
		defer func() { p = recover() }()
		a.authzHTTP.handle(httptest.NewRecorder(), r)
		return nil
	}()
	if p != http.ErrAbortHandler {
		t.Fatalf("handle panicked with %v, want http.ErrAbortHandler", p)
	}
	if n := panicsNow(a); n != base+1 {
		t.Fatalf("%d panics counted, want %d", n, base+1)
	}
	line := serverLogLine(t, logPath, "/panic")
	if line["status"] != 500.0 || line["error"] != "panic: test: a bug in the decision logger" {
		t.Errorf("server line %v, want status 500 and the panic", line)
	}
	var m strings.Builder
	a.cfg.Metrics.WritePrometheus(&m)
	if !strings.Contains(m.String(), `source_node="peer",node="gpn",code_class="5xx"} 1`) {
		t.Errorf("no 5xx server request from peer in\n%s", m.String())
	}
	getOK(t, "http://127.73.0.1:19731/after")
}

// TestPanicStopsRequestTimer: a round trip that panics (a bug; here its
// authorization's DecisionLogger) released the request's slots but left
// its request timeout's timer armed, holding the request's context until
// the timeout (1 h here) ran out; it is released with the rest now.
func TestPanicStopsRequestTimer(t *testing.T) {
	a, _, _ := goPanicAgent(t)
	target := a.view.Load().byVIP[netip.MustParseAddrPort("127.73.0.1:19731")]
	req, _ := http.NewRequestWithContext(context.WithValue(context.Background(), targetKey{}, target), "GET", "http://gp.demo/timer", nil)
	req.RemoteAddr = "127.0.0.1:1234"
	p := func() (p any) {
		defer func() { p = recover() }()
		(&lbTransport{l7: a.l7}).RoundTrip(req)
		return nil
	}()
	if p == nil || !strings.Contains(fmt.Sprint(p), "(timer)") {
		t.Fatalf("round trip panicked with %v, want the logger's panic", p)
	}
	var ctx context.Context
	select {
	case ctx = <-goPanicCtxs:
	default:
		t.Fatal("the decision logger saw no request")
	}
	waitFor(t, "the request timeout's context released", func() bool { return ctx.Err() != nil })
	if context.Cause(ctx) != context.Canceled {
		t.Errorf("the context ended with %v, want context.Canceled (released, not timed out)", context.Cause(ctx))
	}
	holdsNothing(t, a)
	getOK(t, "http://127.73.0.1:19731/after")
}

// serverLogLine waits for the endpoint agent's access-log line of path
// in the log at logPath.
func serverLogLine(t *testing.T, logPath, path string) map[string]any {
	t.Helper()
	var line map[string]any
	waitFor(t, "the server's access-log line", func() bool {
		for _, l := range readLog(t, logPath) {
			if l["path"] == path && l["side"] == "server" {
				line = l
				return true
			}
		}
		return false
	})
	return line
}
