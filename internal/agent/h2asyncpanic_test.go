package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// asyncOn switches the asynchronous HTTP/2 path on for t (what was set
// comes back at its end).
func asyncOn(t *testing.T) {
	was := asyncH2.Swap(true)
	t.Cleanup(func() { asyncH2.Store(was) })
}

// startH2CEndpoint serves h over h2c (prior knowledge) on a loopback port
// of its own, closed at t's end, and returns that port.
func startH2CEndpoint(t *testing.T, h http.HandlerFunc) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// h2ClientTo is an HTTP/2 client connection (prior knowledge) to addr,
// closed at t's end.
func h2ClientTo(t *testing.T, addr string) *http2.ClientConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// asyncFront is an agent in front of one h2c endpoint with the
// asynchronous HTTP/2 path on, and an HTTP/2 client connection to its
// service's VIP (asyncPanicFront).
type asyncFront struct {
	a       *Agent
	cc      *http2.ClientConn
	release chan struct{} // closed: the endpoint's held requests (/hold) answer
	held    chan error    // the held request's outcome (hold)
}

// asyncPanicFront starts, with asyncH2 on, an h2c endpoint whose /hold
// waits for f.release and whose other paths answer as other does, a
// control plane with service svc (port on the VIP, protocol http2; spec:
// more lines of its spec), an agent (VIP range 127.<octet>.0.0/16)
// tweaked by tweak, and an HTTP/2 client connection to the VIP.
func asyncPanicFront(t *testing.T, svc string, octet, port int, spec string, other http.HandlerFunc, tweak func(*Config)) *asyncFront {
	t.Helper()
	asyncOn(t)
	f := &asyncFront{release: make(chan struct{}), held: make(chan error, 1)}
	epPort := startH2CEndpoint(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			select {
			case <-f.release:
			case <-r.Context().Done():
			}
			return
		}
		other(w, r)
	})
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, fmt.Sprintf(`apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: %s, namespace: demo}
spec:
  ports: [{name: web, port: %d, protocol: http2}]
%s`, svc, port, spec))
	f.a = startAgentWith(t, agentOpts{name: svc, site: "s1", region: "r1", vipOctet: octet, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload(svc, svc+"-1", epPort)}}, tweak)
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(f.a, "demo/"+svc)) == 1 })
	vip := fmt.Sprintf("127.%d.0.1:%d", octet, port)
	waitListening(t, vip)
	f.cc = h2ClientTo(t, vip)
	return f
}

// hold sends /hold on the client connection (its outcome to f.held) and
// waits until the agent has it in flight: the next stream is not its
// connection's lone one (those stay synchronous).
func (f *asyncFront) hold(t *testing.T, ctx context.Context) {
	t.Helper()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/hold", nil)
		resp, err := f.cc.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		f.held <- err
	}()
	waitFor(t, "the held stream in flight", func() bool { return f.a.l7Inflight.Load() == 1 })
}

// TestH2AsyncPanicOnResumeGoroutine: a panic on the asynchronous path's
// own goroutine (here the outlier ejection's log line while a 503 whose
// body is past asyncInlineMax is settled there, not on the upstream's
// read loop) is recovered: the agent goes on (without the recover the
// test binary dies), counts the panic, answers the request with an error
// and lets go of what it held.
func TestH2AsyncPanicOnResumeGoroutine(t *testing.T) {
	busy := strings.Repeat("x", 2*asyncInlineMax)
	f := asyncPanicFront(t, "aspanic", 142, 19951, "  outlierDetection: {consecutiveErrors: 1}\n",
		func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, busy)
		},
		func(c *Config) { c.Logger = slog.New(ejectPanicHandler{}) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f.hold(t, ctx)
	before := f.a.m.panics.Get()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://aspanic/busy", nil)
	resp, err := f.cc.RoundTrip(req)
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable && string(body) == busy {
			t.Fatal("the endpoint's answer passed through the panic")
		}
		if resp.StatusCode < 500 {
			t.Fatalf("answered %s after the panic", resp.Status)
		}
	} // a reset stream is an answer too
	if ctx.Err() != nil {
		t.Fatal("no answer before the deadline")
	}
	waitFor(t, "the panic counted", func() bool { return f.a.m.panics.Get() > before })
	close(f.release)
	if err := <-f.held; err != nil {
		t.Errorf("the held stream: %v", err)
	}
	// What the requests held goes back: nothing in flight.
	waitFor(t, "no request held", func() bool { return f.a.l7Inflight.Load() == 0 })
}
