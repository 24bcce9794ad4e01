package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2srv"
)

// TestH2AsyncPanicInPrepare: a panic in the asynchronous path's
// synchronous part after the stream was detached (serve's prepare: here
// the client limit's rejection counter, registered as a gauge) answers
// the request and lets go of its stream. Each such stream stayed with its
// connection's server for good (h2srv counted its handler as running: the
// Async was never finished), and after 4 × its stream limit of them the
// connection was closed (ENHANCE_YOUR_CALM) with every stream on it.
func TestH2AsyncPanicInPrepare(t *testing.T) {
	was := asyncH2.Swap(true)
	t.Cleanup(func() { asyncH2.Store(was) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	set := metrics.NewSet()
	for _, svc := range []string{"demo/asprep", "asprep"} {
		set.GetOrCreateGauge(`fogmesh_agent_client_limit_rejections_total{service="`+svc+`"}`, func() float64 { return 0 })
	}
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: asprep, namespace: demo}
spec:
  ports: [{name: web, port: 13551, protocol: http2}]
`)
	a := startAgentWith(t, agentOpts{name: "asprep", site: "s1", region: "r1", vipOctet: 135, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("asprep", "asprep-1", ln.Addr().(*net.TCPAddr).Port)}},
		func(c *Config) {
			c.Metrics = set
			c.MaxRequestsPerClient = 1 // the held stream takes the client's one place
			c.Logger = slog.New(slog.DiscardHandler)
		})
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(a, "demo/asprep")) == 1 })
	const vip = "127.135.0.1:13551"
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
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	get := func(path string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://asprep"+path, nil)
		resp, err := cc.RoundTrip(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	held := make(chan error, 1)
	go func() {
		_, err := get("/hold")
		held <- err
	}()
	waitFor(t, "the held stream in flight", func() bool { return a.l7Inflight.Load() == 1 })
	before := a.m.panics.Get()
	for i := range 4*h2srv.DefaultMaxStreams + 10 {
		resp, err := get("/x")
		if err == nil && resp.StatusCode < 500 {
			t.Fatalf("request %d: answered %s past the client limit", i, resp.Status)
		}
		if err != nil && (ctx.Err() != nil || !cc.CanTakeNewRequest()) {
			t.Fatalf("request %d: %v (the connection ended: its streams that panicked stayed with it)", i, err)
		}
	}
	if a.m.panics.Get() == before {
		t.Fatal("no panic counted")
	}
	close(release)
	if err := <-held; err != nil {
		t.Fatalf("the held stream: %v", err)
	}
	if resp, err := get("/ok"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("after the panics: %v %v", resp, err)
	}
	waitFor(t, "no request held", func() bool { return a.l7Inflight.Load() == 0 })
}
