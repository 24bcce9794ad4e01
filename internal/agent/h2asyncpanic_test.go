package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestH2AsyncPanicOnResumeGoroutine: a panic on the asynchronous path's
// own goroutine (here the outlier ejection's log line while a 503 whose
// body is past asyncInlineMax is settled there, not on the upstream's
// read loop) is recovered: the agent goes on (without the recover the
// test binary dies), counts the panic, answers the request with an error
// and lets go of what it held.
func TestH2AsyncPanicOnResumeGoroutine(t *testing.T) {
	was := asyncH2.Swap(true)
	t.Cleanup(func() { asyncH2.Store(was) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	busy := strings.Repeat("x", 2*asyncInlineMax)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, busy)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: aspanic, namespace: demo}
spec:
  ports: [{name: web, port: 19951, protocol: http2}]
  outlierDetection: {consecutiveErrors: 1}
`)
	a := startAgentWith(t, agentOpts{name: "asp", site: "s1", region: "r1", vipOctet: 142, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("aspanic", "aspanic-1", ln.Addr().(*net.TCPAddr).Port)}},
		func(c *Config) { c.Logger = slog.New(ejectPanicHandler{}) })
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(a, "demo/aspanic")) == 1 })
	const vip = "127.142.0.1:19951"
	waitListening(t, vip)
	c, err := net.Dial("tcp", vip)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A stream held open at the endpoint, so that the next one is not
	// its connection's lone stream (those stay synchronous).
	held := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://aspanic/hold", nil)
		resp, err := cc.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		held <- err
	}()
	waitFor(t, "the held stream in flight", func() bool { return a.l7Inflight.Load() == 1 })
	before := a.m.panics.Get()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://aspanic/busy", nil)
	resp, err := cc.RoundTrip(req)
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
	waitFor(t, "the panic counted", func() bool { return a.m.panics.Get() > before })
	close(release)
	if err := <-held; err != nil {
		t.Errorf("the held stream: %v", err)
	}
	// What the requests held goes back: nothing in flight.
	waitFor(t, "no request held", func() bool { return a.l7Inflight.Load() == 0 })
}
