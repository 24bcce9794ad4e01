package dev

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/tracing"
	"github.com/fogmesh/fogmesh/internal/tracing/otlptest"
)

// TestDemoTraces: with --trace-endpoint every demo agent exports spans, so
// a request to hello from shop-1-a answered by shop-1-b (its local instance
// stopped) yields, in a real OTLP receiver, one trace: shop-1-a's CLIENT
// span and shop-1-b's SERVER span, the client span's child.
func TestDemoTraces(t *testing.T) {
	recv := otlptest.NewHTTP(t)
	d := startDemoWith(t, Options{VIPRange: "127.35.0.0/16", TraceEndpoint: recv.URL})
	if err := d.StopHello("shop-1-a"); err != nil {
		t.Fatal(err)
	}
	if got := get(t, "http://"+d.VIP()+"/"); !strings.Contains(got, "node=shop-1-b") {
		t.Fatalf("answer %q, want it from shop-1-b", got)
	}
	var cli, srv otlptest.Span
	recv.WaitFor(t, 30*time.Second, func(spans []otlptest.Span) bool {
		cli, srv = otlptest.Span{}, otlptest.Span{}
		for _, s := range spans {
			if int32(s.Kind) == int32(tracing.KindClient) && s.Attr("fogmesh.endpoint.node") == "shop-1-b" {
				cli = s
			}
		}
		if cli.Span == nil {
			return false
		}
		for _, s := range spans {
			if int32(s.Kind) == int32(tracing.KindServer) && s.TraceID() == cli.TraceID() {
				srv = s
			}
		}
		return srv.Span != nil
	})
	if srv.ParentID() != cli.SpanID() {
		t.Errorf("destination agent's span's parent %s, want the client agent's span %s", srv.ParentID(), cli.SpanID())
	}
	for _, c := range []struct {
		what string
		s    otlptest.Span
		node string
	}{{"client", cli, "shop-1-a"}, {"destination", srv, "shop-1-b"}} {
		if got := c.s.Resource["fogmesh.node"]; got != c.node {
			t.Errorf("%s agent's span comes from node %q (resource %v), want %s", c.what, got, c.s.Resource, c.node)
		}
		if got := c.s.Attr("fogmesh.service"); got != "demo/hello" {
			t.Errorf("%s span's service %q, want demo/hello", c.what, got)
		}
	}
	if got := cli.Attr("fogmesh.path"); got != "same_site" {
		t.Errorf("client span's path %q, want same_site", got)
	}
}

// TestDemoTraceFlagsErrors: a bad trace endpoint or ratio is refused
// before anything binds, naming the flag.
func TestDemoTraceFlagsErrors(t *testing.T) {
	bad := 1.5
	for _, c := range []struct {
		opts Options
		want string
	}{
		{Options{TraceEndpoint: "collector:4318"}, "--trace-endpoint"},
		{Options{TraceEndpoint: "http://127.0.0.1:4318", TraceSampleRatio: &bad}, "--trace-sample-ratio 1.5"},
	} {
		c.opts.StateDir, c.opts.BasePort, c.opts.VIPRange = t.TempDir(), -1, "127.36.0.0/16"
		d, err := Start(context.Background(), c.opts)
		if err == nil {
			d.Close()
			t.Fatalf("%+v: started", c.opts)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %q, want it to name %s", err, c.want)
		}
	}
}
