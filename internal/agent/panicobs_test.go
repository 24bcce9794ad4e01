package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/tracing/otlptest"
)

// panicDecision is a DecisionLogger that panics for requests to path: a
// bug inside the round trip (authorization runs there).
type panicDecision struct{ path string }

func (p panicDecision) LogDecision(_ context.Context, d AuthzRecord) {
	if d.Request.Path == p.path {
		panic("test: a bug in the round trip")
	}
}

// panicOnceConn panics on its first write larger than 4 KiB while armed
// (a response body's bytes, not a head or HTTP/2's small frames), then
// writes on: a bug in the writing of a response, after the round trip.
type panicOnceConn struct {
	net.Conn
	armed bool
}

func (c *panicOnceConn) Write(p []byte) (int, error) {
	if c.armed && len(p) > 4<<10 {
		c.armed = false
		panic("test: a bug while writing a response")
	}
	return c.Conn.Write(p)
}

// panicObsAgent is an agent (VIP 127.75.0.1) logging and tracing every
// request of demo/po: port 19751 (http: the fast path, and net/http's
// server for HTTP/1.0) and 19752 (http2: h2srv), maxRequestsPerClient 2,
// whose authorization panics for /panic. The workload answers /big with
// 1 MiB, anything else with "ok" (/upload once it has read the body).
func panicObsAgent(t *testing.T) (a *Agent, logPath string, recv *otlptest.Receiver) {
	t.Helper()
	return panicObsAgentAt(t, 75, 19751, 19752)
}

// panicObsAgentAt is panicObsAgent on VIP 127.<octet>.0.1, ports web
// (http) and h2 (http2). Its workload also answers /duplex full duplex
// (testenv.DuplexEcho: the first 5 bytes echoed at once).
func panicObsAgentAt(t *testing.T, octet, web, h2 int) (a *Agent, logPath string, recv *otlptest.Receiver) {
	t.Helper()
	big := strings.Repeat("x", 1<<20)
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	be := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/duplex" {
			testenv.DuplexEcho(w, r)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/upload") {
			// Read first: in full duplex an endpoint that answers before
			// it reads ends the attempt before a panic in the body's read
			// (the request is the endpoint's answer), or closes the
			// connection before the read that panics.
			io.Copy(io.Discard, r.Body)
		}
		if strings.HasPrefix(r.URL.Path, "/big") {
			io.WriteString(w, big)
			return
		}
		io.WriteString(w, "ok")
	})}
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go be.Serve(bln)
	t.Cleanup(func() { be.Close() })
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: po, namespace: demo}
spec: {ports: [{name: web, port: `+fmt.Sprint(web)+`, protocol: http}, {name: h2, port: `+fmt.Sprint(h2)+`, protocol: http2}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: po, namespace: demo}
spec: {service: po, rules: [{to: [{paths: ["/*"]}]}]}
`)
	recv = otlptest.NewHTTP(t)
	logPath = filepath.Join(t.TempDir(), "access.log")
	port := bln.Addr().(*net.TCPAddr).Port
	a = startAgentWith(t, agentOpts{name: "pon", site: "s1", region: "r1", vipOctet: octet, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{{Name: "po-1", Service: "po", Namespace: "demo",
			Ports: []api.EndpointPort{{Name: "web", Port: port}, {Name: "h2", Port: port}}}}},
		func(c *Config) {
			c.MaxRequestsPerClient = 2
			c.DecisionLogger = panicDecision{"/panic"}
			c.Tracing = TracingConfig{Endpoint: recv.URL, SampleRatio: ratio(1)}
			c.AccessLog = AccessLogConfig{Path: logPath}
		})
	waitFor(t, "the policy", func() bool { return a.view.Load().authz.Len() == 1 })
	waitGet200(t, &http.Client{Timeout: 5 * time.Second}, fmt.Sprintf("http://127.%d.0.1:%d/", octet, web))
	return a, logPath, recv
}

// servePanicking hands the agent one connection to vip whose first large
// write panics, as its accept loop does (recoverConn included); it returns
// the client's end and a channel closed once the agent is done with it.
func servePanicking(t *testing.T, a *Agent, vip string) (net.Conn, chan struct{}) {
	t.Helper()
	c, sc := loopbackPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer a.recoverConn(sc)
		a.handleConn(context.Background(), netip.MustParseAddrPort(vip), &panicOnceConn{Conn: sc, armed: true})
	}()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	return c, done
}

// checkPanicked waits for path's access-log line and span: one each, status
// 500 with the panic as the error, the span's status an error.
func checkPanicked(t *testing.T, logPath string, recv *otlptest.Receiver, path, panicMsg string) {
	t.Helper()
	checkPanickedStatus(t, logPath, recv, path, panicMsg, 500)
}

// checkPanickedStatus is checkPanicked for a request recorded with status
// (the status the client saw, if its head went out before the panic).
func checkPanickedStatus(t *testing.T, logPath string, recv *otlptest.Receiver, path, panicMsg string, status int) {
	t.Helper()
	var lines []map[string]any
	waitFor(t, "the access-log line of "+path, func() bool {
		lines = lines[:0]
		for _, l := range readLog(t, logPath) {
			if l["path"] == path {
				lines = append(lines, l)
			}
		}
		return len(lines) > 0
	})
	spans := recv.WaitFor(t, 10*time.Second, func(s []otlptest.Span) bool {
		for _, sp := range s {
			if sp.Attr("url.path") == path {
				return true
			}
		}
		return false
	})
	if l := lines[0]; len(lines) != 1 || l["status"] != float64(status) || l["error"] != "panic: "+panicMsg {
		t.Errorf("access-log lines of %s: %v; want one, status %d, error %q", path, lines, status, "panic: "+panicMsg)
	}
	var mine []otlptest.Span
	for _, sp := range spans {
		if sp.Attr("url.path") == path {
			mine = append(mine, sp)
		}
	}
	if len(mine) != 1 {
		t.Fatalf("%d spans of %s, want 1", len(mine), path)
	}
	sp := mine[0]
	if sp.Attr("http.response.status_code") != fmt.Sprint(status) || sp.Status.GetCode() != 2 || sp.Status.GetMessage() != "panic: "+panicMsg {
		t.Errorf("span of %s: status code %q, status %v; want %d, an error with the panic", path, sp.Attr("http.response.status_code"), sp.Status, status)
	}
}

// holdsNothing waits until no request is in flight and the limiter keeps
// no client: what the panicked requests held was given back.
func holdsNothing(t *testing.T, a *Agent) {
	t.Helper()
	waitFor(t, "no request in flight", func() bool { return a.l7Inflight.Load() == 0 })
	waitFor(t, "no client left in the limiter", func() bool {
		a.l7.clients.mu.Lock()
		defer a.l7.clients.mu.Unlock()
		return len(a.l7.clients.n) == 0
	})
}

// TestPanicLoggedH1: a request of the HTTP/1.1 fast path (HTTP/1.1) and
// one of net/http's server and ReverseProxy (HTTP/1.0) whose handling
// panics, in the round trip or while its response is written, still
// writes its access-log line and ends its span (a 500 with the panic),
// once, and gives back what it held: net/http's path left its response
// body, its agent slot and its client's place taken for good when the
// panic came after the round trip.
func TestPanicLoggedH1(t *testing.T) {
	a, logPath, recv := panicObsAgent(t)
	const vip = "127.75.0.1:19751"
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		// In the round trip: the connection is closed unanswered.
		c, err := net.Dial("tcp", vip)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET %s %s\r\nHost: po.demo\r\n\r\n", "/panic", proto)
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
			t.Fatalf("%s: an answer to the request that panicked: %s", proto, resp.Status)
		}
		c.Close()
	}
	// Both /panic requests: two lines.
	var n int
	waitFor(t, "both /panic lines", func() bool {
		n = 0
		for _, l := range readLog(t, logPath) {
			if l["path"] == "/panic" {
				n++
				if l["status"] != 500.0 || l["error"] != "panic: test: a bug in the round trip" {
					t.Fatalf("line %v", l)
				}
			}
		}
		return n == 2
	})
	// Counted as panics, both: the fast path's by recoverConn, net/http's
	// by the handler (endCall).
	waitFor(t, "two panics counted", func() bool { return a.m.panics.Get() >= 2 })
	if n := a.m.panics.Get(); n != 2 {
		t.Errorf("fogmesh_agent_panics_total %d after the two /panic requests, want 2", n)
	}
	recv.WaitFor(t, 10*time.Second, func(s []otlptest.Span) bool {
		n := 0
		for _, sp := range s {
			if sp.Attr("url.path") == "/panic" && sp.Attr("http.response.status_code") == "500" && sp.Status.GetCode() == 2 {
				n++
			}
		}
		return n == 2
	})
	holdsNothing(t, a)

	// While the response is written, on the fast path and on net/http's.
	// The fast path's head goes out before the body's first large write
	// (the client reads 200 OK): its record says 200, with the panic
	// (TestPanicAfterHeadRecord); net/http's says 500.
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		path := "/big/" + proto[5:]
		c, done := servePanicking(t, a, vip)
		fmt.Fprintf(c, "GET %s %s\r\nHost: po.demo\r\n\r\n", path, proto)
		status := 500
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
			if proto == "HTTP/1.1" {
				status = resp.StatusCode
			}
			if b, err := io.ReadAll(resp.Body); err == nil && len(b) == 1<<20 {
				t.Fatalf("%s: the whole response of the request that panicked", proto)
			}
		}
		c.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the connection still served", proto)
		}
		checkPanickedStatus(t, logPath, recv, path, "test: a bug while writing a response", status)
		holdsNothing(t, a)
	}
	// The agent serves on.
	waitGet200(t, &http.Client{Timeout: 5 * time.Second}, "http://"+vip+"/after")
}

// TestPanicLoggedH2: the same for a request of h2srv's handler (HTTP/2
// with prior knowledge), in the round trip and while its response is
// written.
func TestPanicLoggedH2(t *testing.T) {
	a, logPath, recv := panicObsAgent(t)
	const vip = "127.75.0.1:19752"
	get := func(c net.Conn, path string) error {
		cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
		if err != nil {
			return err
		}
		defer cc.Close()
		resp, err := (&http.Client{Timeout: 10 * time.Second, Transport: cc}).Get("http://po.demo" + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			return fmt.Errorf("%s answered: %s, %d bytes", path, resp.Status, len(b))
		}
		return err
	}
	waitFor(t, "the h2c port served", func() bool {
		c, err := net.Dial("tcp", vip)
		if err != nil {
			return false
		}
		defer c.Close()
		err = get(c, "/ok")
		return err != nil && strings.Contains(err.Error(), "answered: 200 OK")
	})
	c, err := net.Dial("tcp", vip)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := get(c, "/panic"); err != nil && strings.Contains(err.Error(), "answered") {
		t.Fatal(err)
	}
	checkPanicked(t, logPath, recv, "/panic", "test: a bug in the round trip")
	waitFor(t, "the panic counted", func() bool { return a.m.panics.Get() >= 1 })
	if n := a.m.panics.Get(); n != 1 {
		t.Errorf("fogmesh_agent_panics_total %d after the /panic request, want 1", n)
	}
	c.Close()
	holdsNothing(t, a)

	pc, done := servePanicking(t, a, vip)
	if err := get(pc, "/big/2"); err != nil && strings.Contains(err.Error(), "answered") {
		t.Fatal(err)
	}
	pc.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection still served")
	}
	checkPanicked(t, logPath, recv, "/big/2", "test: a bug while writing a response")
	holdsNothing(t, a)
}

// panicReadConn panics once on a read after more than 64 KiB were read:
// a bug while the round trip streams a request body upstream.
type panicReadConn struct {
	net.Conn
	read  int
	armed bool
}

func (c *panicReadConn) Read(p []byte) (int, error) {
	if c.armed && c.read > 64<<10 {
		c.armed = false
		panic("test: a bug while reading a request body")
	}
	n, err := c.Conn.Read(p)
	c.read += n
	return n, err
}

// TestPanicInAttemptReleasesEndpoint: a panic inside an attempt (here
// while the request body streams upstream) must not leave the endpoint's
// count of active requests raised (least-request balancing would see it
// busy for good) nor the request's slots taken, and the request is logged
// as a 500.
func TestPanicInAttemptReleasesEndpoint(t *testing.T) {
	a, logPath, recv := panicObsAgent(t)
	c, sc := loopbackPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer a.recoverConn(sc)
		a.handleConn(context.Background(), netip.MustParseAddrPort("127.75.0.1:19751"), &panicReadConn{Conn: sc, armed: true})
	}()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	const size = 1 << 20
	go func() {
		fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: po.demo\r\nContent-Length: %d\r\n\r\n", size)
		c.Write(make([]byte, size)) // fails once the agent closed the connection
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection still served")
	}
	checkPanicked(t, logPath, recv, "/upload", "test: a bug while reading a request body")
	holdsNothing(t, a)
	a.statsByEP.Range(func(k, v any) bool {
		if n := v.(*epStats).Active.Load(); n != 0 {
			t.Errorf("endpoint %v: %d active requests after the panic, want 0", k, n)
		}
		return true
	})
}
