package agent

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

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
	set := metrics.NewSet()
	for _, svc := range []string{"demo/asprep", "asprep"} {
		set.GetOrCreateGauge(`fogmesh_agent_client_limit_rejections_total{service="`+svc+`"}`, func() float64 { return 0 })
	}
	f := asyncPanicFront(t, "asprep", 135, 13551, "", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") },
		func(c *Config) {
			c.Metrics = set
			c.MaxRequestsPerClient = 1 // the held stream takes the client's one place
			c.Logger = slog.New(slog.DiscardHandler)
		})
	a, cc, release, held := f.a, f.cc, f.release, f.held
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
	f.hold(t, ctx)
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
