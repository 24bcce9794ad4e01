package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/tracing"
	"github.com/fogmesh/fogmesh/internal/tracing/otlptest"
)

// TestDevTraceEndpoint: `fogmesh dev -trace-endpoint URL` makes every demo
// agent export spans there. A request to hello through shop-1-a, answered
// by shop-1-b once shop-1-a's instance is stopped, yields one trace in a
// real OTLP receiver: shop-1-a's CLIENT span and shop-1-b's SERVER span,
// its child. A bad endpoint is refused with the flag named.
func TestDevTraceEndpoint(t *testing.T) {
	if out, code := run(t, "dev", "-trace-endpoint", "collector:4318", "-base-port", "-1", "-vip-range", "127.36.0.0/16", "-state-dir", t.TempDir()); code == 0 ||
		!strings.Contains(out, "trace-endpoint") {
		t.Fatalf("bad -trace-endpoint: exit %d:\n%s", code, out)
	}
	recv := otlptest.NewHTTP(t)
	_, addrs := startAddrs(t, "dev", "-trace-endpoint", recv.URL, "-base-port", "-1", "-vip-range", "127.36.0.0/16",
		"-hello-port", "18136", "-state-dir", t.TempDir())
	// shop-1-a must know shop-1-b's instance before its own stops, or the
	// request goes to the next tier's (shop-2-a): a CI run saw that.
	testenv.WaitFor(t, 30*time.Second, "shop-1-a to know hello on shop-1-b", func() bool {
		out, code := run(t, "describe", "service", "hello", "-n", "demo", "-agent", "http://"+addrs["shop-1-a.admin"])
		return code == 0 && strings.Contains(out, "hello-shop-1-b  shop-1-b")
	})
	if out, code := run(t, "demo", "-demo", "http://"+addrs["demo"], "stop", "shop-1-a"); code != 0 {
		t.Fatal(out)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addrs["vip"] + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "node=shop-1-b") {
		t.Fatalf("answer %q, want it from shop-1-b", b)
	}
	var cli, srv otlptest.Span
	recv.WaitFor(t, 30*time.Second, func(spans []otlptest.Span) bool {
		cli, srv = otlptest.Span{}, otlptest.Span{}
		for _, s := range spans {
			if int32(s.Kind) == int32(tracing.KindClient) && s.Resource["fogmesh.node"] == "shop-1-a" {
				cli = s
			}
		}
		for _, s := range spans {
			if cli.Span != nil && int32(s.Kind) == int32(tracing.KindServer) && s.TraceID() == cli.TraceID() {
				srv = s
			}
		}
		return srv.Span != nil
	})
	if srv.ParentID() != cli.SpanID() || srv.Resource["fogmesh.node"] != "shop-1-b" {
		t.Fatalf("server span from %q with parent %s, want shop-1-b's, child of the client span %s",
			srv.Resource["fogmesh.node"], srv.ParentID(), cli.SpanID())
	}
	if got := cli.Attr("fogmesh.endpoint.node"); got != "shop-1-b" {
		t.Errorf("client span's endpoint node %q, want shop-1-b", got)
	}
}
