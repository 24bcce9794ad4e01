package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/fogmesh/fogmesh/internal/testenv/grpcsvc"
	"github.com/fogmesh/fogmesh/internal/tracing"
	"github.com/fogmesh/fogmesh/internal/tracing/otlptest"
)

// traceWorkload serves 200 and remembers the trace context of every
// request it receives, by its X-Test-Id header.
type traceWorkload struct {
	mu     sync.Mutex
	seen   map[string]http.Header
	failed map[string]bool // /retry requests answered 503 once
}

func startTraceWorkload(t *testing.T) (int, *traceWorkload) {
	t.Helper()
	w := &traceWorkload{seen: map[string]http.Header{}, failed: map[string]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Test-Id")
		w.mu.Lock()
		w.seen[id] = r.Header.Clone()
		fail := strings.HasPrefix(r.URL.Path, "/retry") && !w.failed[id]
		w.failed[id] = true
		w.mu.Unlock()
		if fail {
			rw.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		rw.Write([]byte("ok"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port, w
}

func (w *traceWorkload) header(id string) http.Header {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen[id]
}

func ratio(r float64) *float64 { return &r }

// traceMesh: a client agent (node tcli, octet 22) and the endpoint's agent
// (node tsrv, octet 23) in one site, both exporting to recv; the client's
// agent samples new traces at clientRatio, the endpoint's at 0 (it only
// continues sampled traces). Both write access logs into dir.
func traceMesh(t *testing.T, recv *otlptest.Receiver, clientRatio float64, dir string) (url, h2URL string, wl *traceWorkload) {
	url, h2URL, _, wl = traceMeshGRPC(t, recv, clientRatio, dir)
	return url, h2URL, wl
}

// traceMeshGRPC is traceMesh with a gRPC service too (demo/trg, the
// grpcsvc test service), and its address at the client's agent.
func traceMeshGRPC(t *testing.T, recv *otlptest.Receiver, clientRatio float64, dir string) (url, h2URL, grpcAddr string, wl *traceWorkload) {
	t.Helper()
	port, wl := startTraceWorkload(t)
	gs := grpcsvc.Start(t)
	_, gp, _ := net.SplitHostPort(gs.Addr)
	gport, _ := strconv.Atoi(gp)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: tr, namespace: demo}
spec:
  ports: [{name: web, port: 18080, protocol: http}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Route
metadata: {name: tr, namespace: demo}
spec:
  service: tr
  rules:
  - name: api
    match: [{path: {prefix: /api}}]
    backends: [{}]
  - name: retry
    match: [{path: {prefix: /retry}}]
    retries: {attempts: 2, on5xx: true}
    backends: [{}]
  - backends: [{}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: tr2, namespace: demo}
spec:
  ports: [{name: web, port: 18081, protocol: http2}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: trg, namespace: demo}
spec:
  ports: [{name: web, port: 18082, protocol: grpc}]
`)
	obs := func(name string, r float64) func(*Config) {
		return func(c *Config) {
			c.Tracing = TracingConfig{Endpoint: recv.URL, SampleRatio: ratio(r)}
			c.AccessLog = AccessLogConfig{Path: filepath.Join(dir, name+".log"), Mask: []string{"demo/masked"}}
		}
	}
	startAgentWith(t, agentOpts{name: "tsrv", site: "s1", region: "r1", vipOctet: 23, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("tr", "tr-1", port), webWorkload("tr2", "tr2-1", port), webWorkload("trg", "trg-1", gport)}}, obs("tsrv", 0))
	client := startAgentWith(t, agentOpts{name: "tcli", site: "s1", region: "r1", vipOctet: 22, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()}, obs("tcli", clientRatio))
	waitFor(t, "endpoint", func() bool {
		return len(endpointsOf(client, "demo/tr")) == 1 && len(endpointsOf(client, "demo/tr2")) == 1 && len(endpointsOf(client, "demo/trg")) == 1
	})
	grpcAddr = vipOf(t, client, "demo/trg") + ":18082"
	url = "http://" + vipOf(t, client, "demo/tr") + ":18080"
	h2URL = "http://" + vipOf(t, client, "demo/tr2") + ":18081"
	c := &http.Client{Timeout: 5 * time.Second}
	waitFor(t, "listener", func() bool {
		req, _ := http.NewRequest("GET", url+"/warmup", nil)
		req.Header.Set("X-Test-Id", "warmup")
		resp, err := c.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return url, h2URL, grpcAddr, wl
}

func spansOf(spans []otlptest.Span, trace string) []otlptest.Span {
	var out []otlptest.Span
	for _, s := range spans {
		if s.TraceID() == trace {
			out = append(out, s)
		}
	}
	return out
}

// TestTraceTwoAgents: a request through two agents (client agent →
// endpoint's agent → workload) yields one trace in a real OTLP receiver:
// the client agent's CLIENT span continues the incoming traceparent, the
// endpoint agent's SERVER span is its child, and the workload receives a
// traceparent whose parent is the SERVER span. Over HTTP/1.1 (the fast
// path) and h2c (the net/http server), with B3 multi headers too.
func TestTraceTwoAgents(t *testing.T) {
	recv := otlptest.NewHTTP(t)
	url, h2URL, wl := traceMesh(t, recv, 0, t.TempDir())
	const incomingTrace, incomingSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	h1c := &http.Client{Timeout: 5 * time.Second}
	h2c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Protocols: &h2}}
	tp := func(trace string) map[string]string {
		return map[string]string{"Traceparent": "00-" + trace + "-" + incomingSpan + "-01"}
	}
	for _, tc := range []struct {
		name       string
		client     *http.Client
		url        string
		header     map[string]string
		trace      string
		svc, route string
		attempts   int // the client agent's attempts; the endpoint agent's spans
	}{
		{"http1 traceparent", h1c, url + "/api/items?id=7",
			map[string]string{"Traceparent": "00-" + incomingTrace + "-" + incomingSpan + "-01", "Tracestate": "vendor=x"}, incomingTrace, "demo/tr", "api", 1},
		{"h2c traceparent", h2c, url + "/api/items?id=7", tp("5bf92f3577b34da6a3ce929d0e0e4736"), "5bf92f3577b34da6a3ce929d0e0e4736", "demo/tr", "api", 1},
		{"http1 b3 multi", h1c, url + "/api/items?id=7",
			map[string]string{"X-B3-TraceId": "6bf92f3577b34da6a3ce929d0e0e4736", "X-B3-SpanId": incomingSpan, "X-B3-Sampled": "1"}, "6bf92f3577b34da6a3ce929d0e0e4736", "demo/tr", "api", 1},
		{"h2c to an http2 port", h2c, h2URL + "/api/items?id=7", tp("7bf92f3577b34da6a3ce929d0e0e4736"), "7bf92f3577b34da6a3ce929d0e0e4736", "demo/tr2", "", 1},
		{"http1 retried", h1c, url + "/retry/api/items", tp("8bf92f3577b34da6a3ce929d0e0e4736"), "8bf92f3577b34da6a3ce929d0e0e4736", "demo/tr", "retry", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", tc.url, nil)
			req.Header.Set("X-Test-Id", tc.name)
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := tc.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			want := 1 + tc.attempts // the client agent's span, and one per attempt at the endpoint's agent
			spans := spansOf(recv.WaitFor(t, 30*time.Second, func(s []otlptest.Span) bool { return len(spansOf(s, tc.trace)) >= want }), tc.trace)
			if len(spans) != want {
				t.Fatalf("%d spans in the trace, want %d: %v", len(spans), want, spans)
			}
			var cli, srv otlptest.Span
			var servers []otlptest.Span
			for _, s := range spans {
				switch int32(s.Kind) {
				case int32(tracing.KindClient):
					cli = s
				case int32(tracing.KindServer):
					servers = append(servers, s)
					if s.Attr("http.response.status_code") == "200" {
						srv = s
					}
				}
			}
			if cli.Span == nil || srv.Span == nil || len(servers) != tc.attempts {
				t.Fatalf("want one CLIENT span and %d SERVER spans, one of them answered 200: %v", tc.attempts, spans)
			}
			for _, s := range servers {
				if s.ParentID() != cli.SpanID() {
					t.Errorf("server span's parent %s, want the client span %s", s.ParentID(), cli.SpanID())
				}
			}
			if tc.attempts > 1 {
				for _, s := range servers {
					if s.Attr("http.response.status_code") == "503" && s.Status.GetCode() != 2 {
						t.Errorf("the 503 attempt's span is not an error: %v", s.Status)
					}
				}
			}
			if cli.ParentID() != incomingSpan {
				t.Errorf("client span's parent %s, want the incoming span %s", cli.ParentID(), incomingSpan)
			}
			ep := strings.TrimPrefix(tc.svc, "demo/") + "-1"
			for k, want := range map[string]string{"fogmesh.service": tc.svc, "fogmesh.route": tc.route, "fogmesh.endpoint": ep,
				"fogmesh.endpoint.node": "tsrv", "fogmesh.endpoint.site": "s1", "fogmesh.tier": "site", "fogmesh.path": "same_site",
				"fogmesh.attempts": strconv.Itoa(tc.attempts), "fogmesh.retries": strconv.Itoa(tc.attempts - 1),
				"http.response.status_code": "200", "http.request.method": "GET", "url.path": strings.Split(tc.url[strings.Index(tc.url[7:], "/")+7:], "?")[0]} {
				if got := cli.Attr(k); got != want {
					t.Errorf("client span %s = %q, want %q", k, got, want)
				}
			}
			for k, want := range map[string]string{"fogmesh.service": tc.svc, "fogmesh.endpoint": ep, "fogmesh.endpoint.node": "tsrv",
				"fogmesh.source_node": "tcli", "http.response.status_code": "200"} {
				if got := srv.Attr(k); got != want {
					t.Errorf("server span %s = %q, want %q", k, got, want)
				}
			}
			if cli.Resource["host.name"] != "tcli" || srv.Resource["host.name"] != "tsrv" {
				t.Errorf("resources %v, %v", cli.Resource, srv.Resource)
			}
			if tc.name == "http1 traceparent" && (cli.TraceState != "vendor=x" || srv.TraceState != "vendor=x") {
				t.Errorf("tracestate %q, %q: want vendor=x passed on", cli.TraceState, srv.TraceState)
			}
			// The workload continues the trace from the server span.
			h := wl.header(tc.name)
			sc, err := tracing.ParseTraceparent(h.Get("Traceparent"))
			if err != nil || sc.TraceID.String() != tc.trace || sc.SpanID.String() != srv.SpanID() || !sc.Sampled {
				t.Errorf("workload's traceparent %q (%v), want trace %s parent %s sampled", h.Get("Traceparent"), err, tc.trace, srv.SpanID())
			}
			if tc.name == "http1 b3 multi" && (h.Get("X-B3-Spanid") != srv.SpanID() || h.Get("X-B3-Traceid") != tc.trace) {
				t.Errorf("workload's B3 headers %v, want span %s", h, srv.SpanID())
			}
		})
	}
}

// TestTraceSampling: with no incoming context the client agent decides
// (ratio 1: a new trace of two spans, the endpoint's agent following
// though its own ratio is 0).
func TestTraceSampling(t *testing.T) {
	recv := otlptest.NewHTTP(t)
	url, _, wl := traceMesh(t, recv, 1, t.TempDir())
	req, _ := http.NewRequest("GET", url+"/new", nil)
	req.Header.Set("X-Test-Id", "new")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	sc, err := tracing.ParseTraceparent(wl.header("new").Get("Traceparent"))
	if err != nil || !sc.Sampled {
		t.Fatalf("workload's traceparent: %+v %v", sc, err)
	}
	spans := spansOf(recv.WaitFor(t, 30*time.Second, func(s []otlptest.Span) bool { return len(spansOf(s, sc.TraceID.String())) >= 2 }), sc.TraceID.String())
	roots := 0
	for _, s := range spans {
		if len(s.ParentSpanId) == 0 {
			roots++
		}
	}
	if len(spans) != 2 || roots != 1 {
		t.Fatalf("new trace: %d spans, %d roots; want 2 and 1: %v", len(spans), roots, spans)
	}
}

// TestTraceSamplingZero: at ratio 0 no span is exported without a sampled
// parent, yet the workload gets an unsampled traceparent.
func TestTraceSamplingZero(t *testing.T) {
	recv0 := otlptest.NewHTTP(t)
	url0, _, wl0 := traceMesh(t, recv0, 0, t.TempDir())
	req, _ := http.NewRequest("GET", url0+"/unsampled", nil)
	req.Header.Set("X-Test-Id", "unsampled")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	sc, err := tracing.ParseTraceparent(wl0.header("unsampled").Get("Traceparent"))
	if err != nil || sc.Sampled {
		t.Fatalf("workload's traceparent at ratio 0: %+v %v, want a valid unsampled one", sc, err)
	}
	if n := recv0.Requests(); n != 0 {
		t.Fatalf("%d export requests at ratio 0 with no sampled parent", n)
	}
}

func readLog(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// TestAccessLogTwoAgents: each agent writes one JSON line per request,
// with the trace id, route, endpoint and path kind; a masked service's
// lines carry no path, client address or user agent.
func TestAccessLogTwoAgents(t *testing.T) {
	recv := otlptest.NewHTTP(t)
	dir := t.TempDir()
	url, _, _ := traceMesh(t, recv, 1, dir)
	req, _ := http.NewRequest("GET", url+"/api/users/42?email=someone@example.com", nil)
	req.Header.Set("User-Agent", "trace-test/1")
	req.Header.Set("X-Test-Id", "logged")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	find := func(path string) map[string]any {
		var line map[string]any
		waitFor(t, "the access-log line in "+filepath.Base(path), func() bool {
			for _, l := range readLog(t, path) {
				if strings.HasPrefix(l["path"].(string), "/api/users/42") {
					line = l
					return true
				}
			}
			return false
		})
		return line
	}
	cli, srv := find(filepath.Join(dir, "tcli.log")), find(filepath.Join(dir, "tsrv.log"))
	for k, want := range map[string]any{"side": "client", "method": "GET", "path": "/api/users/42?email=someone@example.com", "status": 200.0,
		"service": "demo/tr", "route": "api", "endpoint": "tr-1", "node": "tsrv", "site": "s1", "path_kind": "same_site",
		"source_service": "unknown", "user_agent": "trace-test/1", "attempts": 1.0, "masked": false} {
		if cli[k] != want {
			t.Errorf("client line %s = %v, want %v (%v)", k, cli[k], want, cli)
		}
	}
	if cli["trace_id"] == "" || cli["trace_id"] != srv["trace_id"] {
		t.Errorf("trace ids %v and %v: want the same", cli["trace_id"], srv["trace_id"])
	}
	if srv["side"] != "server" || srv["source_node"] != "tcli" || srv["status"] != 200.0 {
		t.Errorf("server line %v", srv)
	}

	// A masked service: the same request leaves no personal data.
	o := &observer{mask: []string{"demo/masked"}}
	if !o.masked(nil, "demo/masked") || o.masked(nil, "demo/tr") {
		t.Fatal("mask list not applied")
	}
	o = &observer{mask: []string{"demo/*"}}
	if !o.masked(nil, "demo/tr") || o.masked(nil, "other/tr") {
		t.Fatal("mask pattern not applied")
	}
}

// TestObserveConfigErrors: bad tracing and access-log settings are
// refused with a message naming the setting.
func TestObserveConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tweak func(*Config)
		want  string
	}{
		{"ratio", func(c *Config) { c.Tracing = TracingConfig{Endpoint: "http://127.0.0.1:4318", SampleRatio: ratio(1.5)} }, "sampleRatio 1.5"},
		{"endpoint", func(c *Config) { c.Tracing = TracingConfig{Endpoint: "127.0.0.1:4318"} }, "want an http:// or https:// URL"},
		{"protocol", func(c *Config) { c.Tracing = TracingConfig{Endpoint: "http://x", Protocol: "zipkin"} }, `protocol "zipkin"`},
		{"field", func(c *Config) { c.AccessLog = AccessLogConfig{Path: "/tmp/x.log", Fields: []string{"cookie"}} }, `unknown field "cookie"`},
		{"mask", func(c *Config) { c.AccessLog = AccessLogConfig{Path: "/tmp/x.log", Mask: []string{"nons"}} }, `mask "nons"`},
		{"log ratio", func(c *Config) { c.AccessLog = AccessLogConfig{Path: "/tmp/x.log", SampleRatio: ratio(-1)} }, "sampleRatio -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := agentConfig(agentOpts{name: "bad", site: "s", region: "r", vipOctet: 24, stateDir: t.TempDir()})
			tc.tweak(&cfg)
			a, err := New(cfg)
			if err == nil {
				a.Close()
				t.Fatal("accepted")
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want a ConfigError with %q", err, tc.want)
			}
		})
	}
}

// TestTraceGRPC: a gRPC call through two agents continues the caller's
// trace (traceparent in the call's metadata), and the client agent's span
// carries the call's grpc-status from the trailers, an error status
// marking the span as failed.
func TestTraceGRPC(t *testing.T) {
	recv := otlptest.NewHTTP(t)
	_, _, addr, _ := traceMeshGRPC(t, recv, 0, t.TempDir())
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := testpb.NewTestServiceClient(conn)
	for _, tc := range []struct {
		trace string
		code  codes.Code
	}{{"9bf92f3577b34da6a3ce929d0e0e4736", codes.OK}, {"abf92f3577b34da6a3ce929d0e0e4736", codes.InvalidArgument}} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+tc.trace+"-00f067aa0ba902b7-01")
		req := &testpb.SimpleRequest{ResponseSize: 10}
		if tc.code != codes.OK {
			req.ResponseStatus = &testpb.EchoStatus{Code: int32(tc.code), Message: "bad"}
		}
		_, err := c.UnaryCall(ctx, req)
		cancel()
		if (err == nil) != (tc.code == codes.OK) {
			t.Fatalf("call: %v", err)
		}
		spans := spansOf(recv.WaitFor(t, 30*time.Second, func(s []otlptest.Span) bool { return len(spansOf(s, tc.trace)) >= 2 }), tc.trace)
		var cli, srv otlptest.Span
		for _, s := range spans {
			if int32(s.Kind) == int32(tracing.KindClient) {
				cli = s
			} else {
				srv = s
			}
		}
		if len(spans) != 2 || cli.Span == nil || srv.Span == nil || cli.ParentID() != "00f067aa0ba902b7" || srv.ParentID() != cli.SpanID() {
			t.Fatalf("trace %s: %v", tc.trace, spans)
		}
		if got, want := cli.Attr("rpc.grpc.status_code"), strconv.Itoa(int(tc.code)); got != want {
			t.Errorf("client span grpc status %q, want %q", got, want)
		}
		if isErr := cli.Status.GetCode() == 2; isErr != (tc.code != codes.OK) {
			t.Errorf("client span status %v for grpc code %v", cli.Status, tc.code)
		}
		if cli.Attr("fogmesh.service") != "demo/trg" || srv.Attr("fogmesh.endpoint") != "trg-1" {
			t.Errorf("spans %v", spans)
		}
	}
}
