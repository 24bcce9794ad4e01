package tracing_test

import (
	"net"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/tracing"
	"github.com/fogmesh/fogmesh/internal/tracing/otlptest"
)

func testSpan(name string, parent tracing.SpanID) *tracing.Span {
	now := time.Now()
	return &tracing.Span{
		Context: tracing.SpanContext{TraceID: tracing.NewTraceID(), SpanID: tracing.NewSpanID(), Sampled: true, State: "k=v"},
		Parent:  parent, Name: name, Kind: tracing.KindClient, Start: now.Add(-time.Millisecond), End: now,
		Attrs:  []tracing.Attr{tracing.String("fogmesh.service", "demo/hello"), tracing.Int("fogmesh.retries", 2)},
		Status: tracing.StatusError, StatusMsg: "upstream reset",
	}
}

func counter(set *metrics.Set, name string) uint64 {
	return set.GetOrCreateCounter(name).Get()
}

// waitCounter polls (bounded) until the counter reaches want.
func waitCounter(t *testing.T, set *metrics.Set, name string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for counter(set, name) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d, want %d", name, counter(set, name), want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestExporterOTLP sends spans to real OTLP receivers (the official
// protobufs, over HTTP and gRPC) and checks every field arrives.
func TestExporterOTLP(t *testing.T) {
	for _, proto := range []string{tracing.ProtocolHTTP, tracing.ProtocolGRPC} {
		t.Run(proto, func(t *testing.T) {
			var r *otlptest.Receiver
			endpoint := ""
			if proto == tracing.ProtocolGRPC {
				r = otlptest.NewGRPC(t)
				endpoint = r.Addr
			} else {
				r = otlptest.NewHTTP(t)
				endpoint = r.URL
			}
			set := metrics.NewSet()
			e, err := tracing.NewExporter(tracing.ExporterConfig{Endpoint: endpoint, Protocol: proto, Interval: 20 * time.Millisecond,
				Resource: []tracing.Attr{tracing.String("service.name", "fogmesh-agent"), tracing.String("host.name", "n1")}, Metrics: set})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			want := testSpan("demo/hello", tracing.NewSpanID())
			e.Export(want)
			e.Export(testSpan("root", tracing.SpanID{}))
			spans := r.WaitFor(t, 10*time.Second, func(s []otlptest.Span) bool { return len(s) == 2 })
			got := spans[0]
			if got.Name != "root" && got.Name != want.Name {
				t.Fatalf("name %q", got.Name)
			}
			if got.Name == "root" {
				got = spans[1]
			}
			if got.TraceID() != want.Context.TraceID.String() || got.SpanID() != want.Context.SpanID.String() ||
				got.ParentID() != want.Parent.String() || got.TraceState != "k=v" || int32(got.Kind) != int32(tracing.KindClient) ||
				got.StartTimeUnixNano != uint64(want.Start.UnixNano()) || got.EndTimeUnixNano != uint64(want.End.UnixNano()) {
				t.Fatalf("span %v, want %+v", got.Span, want)
			}
			if got.Attr("fogmesh.service") != "demo/hello" || got.Attr("fogmesh.retries") != "2" {
				t.Fatalf("attributes %v", got.Attributes)
			}
			if int32(got.Status.GetCode()) != int32(tracing.StatusError) || got.Status.GetMessage() != "upstream reset" {
				t.Fatalf("status %v", got.Status)
			}
			if got.Resource["service.name"] != "fogmesh-agent" || got.Resource["host.name"] != "n1" {
				t.Fatalf("resource %v", got.Resource)
			}
			waitCounter(t, set, "fogmesh_trace_spans_exported_total", 2)
		})
	}
}

// TestExporterBounded: with the collector away, Export does not block,
// the queue stays bounded and every span is counted as dropped, by reason.
func TestExporterBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A collector that accepts connections and never answers: each export
	// waits for its timeout.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	defer ln.Close()
	set := metrics.NewSet()
	e, err := tracing.NewExporter(tracing.ExporterConfig{Endpoint: "http://" + ln.Addr().String(), QueueSize: 8, BatchSize: 4,
		Interval: time.Millisecond, Timeout: 200 * time.Millisecond, Metrics: set})
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	start := time.Now()
	for range n {
		e.Export(testSpan("x", tracing.SpanID{}))
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Export blocked: %d spans took %v", n, d)
	}
	e.Close()
	full := counter(set, `fogmesh_trace_spans_dropped_total{reason="queue_full"}`)
	failed := counter(set, `fogmesh_trace_spans_dropped_total{reason="export_failed"}`)
	shutdown := counter(set, `fogmesh_trace_spans_dropped_total{reason="shutdown"}`)
	if full == 0 || full+failed+shutdown != n {
		t.Fatalf("dropped: queue_full %d + export_failed %d + shutdown %d, want %d with queue_full > 0", full, failed, shutdown, n)
	}
	if counter(set, "fogmesh_trace_spans_exported_total") != 0 {
		t.Fatal("spans counted as exported")
	}
}

// TestExporterFailing: a collector that refuses batches gets them dropped
// and counted; once it accepts again, new spans go through.
func TestExporterFailing(t *testing.T) {
	r := otlptest.NewHTTP(t)
	r.SetFailing(true)
	set := metrics.NewSet()
	e, err := tracing.NewExporter(tracing.ExporterConfig{Endpoint: r.URL, Interval: 5 * time.Millisecond, Metrics: set})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.Export(testSpan("lost", tracing.SpanID{}))
	waitCounter(t, set, `fogmesh_trace_spans_dropped_total{reason="export_failed"}`, 1)
	r.SetFailing(false)
	e.Export(testSpan("kept", tracing.SpanID{}))
	spans := r.WaitFor(t, 10*time.Second, func(s []otlptest.Span) bool { return len(s) == 1 })
	if spans[0].Name != "kept" {
		t.Fatalf("got %q", spans[0].Name)
	}
}

func TestExporterConfigErrors(t *testing.T) {
	for _, tc := range []struct{ endpoint, proto, want string }{
		{"", "", "no collector endpoint"},
		{"http://x:4318", "thrift", `protocol "thrift"`},
		{"ftp://x", "", "want an http:// or https:// URL"},
		{"127.0.0.1:4318", "http/protobuf", "want an http:// or https:// URL"},
	} {
		_, err := tracing.NewExporter(tracing.ExporterConfig{Endpoint: tc.endpoint, Protocol: tc.proto})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewExporter(%q, %q) = %v, want %q", tc.endpoint, tc.proto, err, tc.want)
		}
	}
}

// TestExporterHugeValuesBounded: a client's path (url.path), method (in
// the span's name) and an error text quoting them may be about a megabyte
// each; spans carried them whole, so the queue (QueueSize spans) held
// gigabytes while the collector was away, and one export request was
// hundreds of megabytes. Each string is cut at MaxValueLen.
func TestExporterHugeValuesBounded(t *testing.T) {
	r := otlptest.NewHTTP(t)
	e, err := tracing.NewExporter(tracing.ExporterConfig{Endpoint: r.URL, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	big := strings.Repeat("é", 1<<19) // 1 MiB of two-byte runes
	s := testSpan(big, tracing.NewSpanID())
	s.StatusMsg = big
	s.Attrs = append(s.Attrs, tracing.String("url.path", "/"+big))
	e.Export(s)
	got := r.WaitFor(t, 10*time.Second, func(s []otlptest.Span) bool { return len(s) == 1 })[0]
	for what, v := range map[string]string{"name": got.Name, "status message": got.Status.GetMessage(), "url.path": got.Attr("url.path")} {
		if len(v) > tracing.MaxValueLen || !utf8.ValidString(v) || !strings.HasPrefix(v, big[:100]) && !strings.HasPrefix(v, "/"+big[:100]) {
			t.Errorf("%s: %d bytes", what, len(v))
		}
	}
	if got.Attr("fogmesh.service") != "demo/hello" {
		t.Errorf("attributes %v", got.Attributes)
	}
}

// TestExporterInvalidUTF8: OTLP's strings are protobuf strings, valid
// UTF-8; a client's tracestate (passed on and exported unchanged) or
// method may carry any byte above 0x7f, and a collector that checks (any
// using the protobuf library's Unmarshal) refused the whole batch, so one
// request with tracestate: k=\xff cost the spans of up to BatchSize
// others. Invalid bytes become U+FFFD.
func TestExporterInvalidUTF8(t *testing.T) {
	r := otlptest.NewHTTP(t)
	set := metrics.NewSet()
	e, err := tracing.NewExporter(tracing.ExporterConfig{Endpoint: r.URL, Interval: 20 * time.Millisecond, Metrics: set})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	bad := testSpan("G\xffT demo/hello", tracing.NewSpanID())
	bad.Context.State = "k=\xff"
	bad.StatusMsg = "upstream said \xfe"
	bad.Attrs = append(bad.Attrs, tracing.String("url.path", "/\xff"))
	e.Export(bad)
	e.Export(testSpan("innocent", tracing.NewSpanID()))
	spans := r.WaitFor(t, 10*time.Second, func(s []otlptest.Span) bool { return len(s) == 2 })
	for _, s := range spans {
		if s.Name != "innocent" && (s.Name != "G\uFFFDT demo/hello" || s.TraceState != "k=\uFFFD" || s.Attr("url.path") != "/\uFFFD") {
			t.Errorf("span %q: state %q, url.path %q", s.Name, s.TraceState, s.Attr("url.path"))
		}
	}
	if n := counter(set, `fogmesh_trace_spans_dropped_total{reason="export_failed"}`); n != 0 {
		t.Errorf("%d spans dropped", n)
	}
}

// TestExporterQueueBytesBounded: the queue was bounded in spans only, so
// with a collector that hangs (or is away, the usual case at a cut-off
// site) QueueSize spans of a client's longest values stayed in memory:
// 2048 spans of 12 KiB and more (the tracestate alone may be 8 KiB) are
// tens of MiB of an agent limited to 256 MiB. The queued bytes are
// bounded too (QueueBytes), past which spans are dropped as queue_full.
func TestExporterQueueBytesBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 64)
	defer func() {
		ln.Close()
		for len(accepted) > 0 {
			(<-accepted).Close()
		}
	}()
	go func() { // a collector that accepts and never answers
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case accepted <- c:
			default:
				c.Close()
			}
		}
	}()
	set := metrics.NewSet()
	e, err := tracing.NewExporter(tracing.ExporterConfig{Endpoint: "http://" + ln.Addr().String(), Interval: time.Millisecond,
		BatchSize: 16, Timeout: 2 * time.Second, QueueBytes: 1 << 20, Metrics: set})
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("a", tracing.MaxValueLen)
	size := 0
	for range 2048 {
		s := testSpan(long, tracing.NewSpanID())
		s.StatusMsg = long
		s.Attrs = append(s.Attrs, tracing.String("url.path", "/"+long))
		size = len(s.Name) + len(s.StatusMsg) + len(long)
		e.Export(s)
	}
	dropped := counter(set, `fogmesh_trace_spans_dropped_total{reason="queue_full"}`)
	// Held: QueueBytes, and the batch the hanging export holds.
	if kept := (2048 - int(dropped)) * size; kept > 1<<20+16*size {
		t.Errorf("%d spans (%d KiB) held for a hanging collector, %d dropped", 2048-dropped, kept>>10, dropped)
	}
	e.Close()
}
