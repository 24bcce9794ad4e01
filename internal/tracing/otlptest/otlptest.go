// Package otlptest is a real OTLP trace receiver for tests: it decodes
// export requests with the official OTLP protobufs
// (go.opentelemetry.io/proto/otlp), over HTTP (OTLP/HTTP protobuf) or gRPC.
// Tests only: the agent never imports it (it pulls gRPC).
package otlptest

import (
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Span is a received span with its resource's attributes.
type Span struct {
	*tracepb.Span
	Resource map[string]string
}

// TraceID and SpanID and ParentID are hex.
func (s Span) TraceID() string  { return hex.EncodeToString(s.Span.TraceId) }
func (s Span) SpanID() string   { return hex.EncodeToString(s.Span.SpanId) }
func (s Span) ParentID() string { return hex.EncodeToString(s.Span.ParentSpanId) }

// Attr is a span attribute as a string ("" if absent); integers in decimal.
func (s Span) Attr(k string) string {
	for _, kv := range s.Attributes {
		if kv.Key != k {
			continue
		}
		if iv, ok := kv.Value.GetValue().(*commonpb.AnyValue_IntValue); ok {
			return strconv.FormatInt(iv.IntValue, 10)
		}
		return kv.Value.GetStringValue()
	}
	return ""
}

// Receiver collects spans.
type Receiver struct {
	// URL is the HTTP receiver's base URL, Addr the gRPC one's host:port.
	URL, Addr string

	mu       sync.Mutex
	spans    []Span
	requests int
	fail     bool
	changed  chan struct{}
}

func (r *Receiver) add(req *collectortrace.ExportTraceServiceRequest) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	if r.fail {
		return false
	}
	for _, rs := range req.ResourceSpans {
		res := map[string]string{}
		for _, kv := range rs.GetResource().GetAttributes() {
			res[kv.Key] = kv.Value.GetStringValue()
		}
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				r.spans = append(r.spans, Span{Span: s, Resource: res})
			}
		}
	}
	close(r.changed)
	r.changed = make(chan struct{})
	return true
}

// SetFailing makes the receiver answer every request with an error.
func (r *Receiver) SetFailing(f bool) { r.mu.Lock(); r.fail = f; r.mu.Unlock() }

// Requests is how many export requests arrived.
func (r *Receiver) Requests() int { r.mu.Lock(); defer r.mu.Unlock(); return r.requests }

// Spans returns the spans received so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// WaitFor waits (up to d) until cond holds of the spans received, and
// returns them; it fails the test at the deadline.
func (r *Receiver) WaitFor(t testing.TB, d time.Duration, cond func([]Span) bool) []Span {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		spans, ch := append([]Span(nil), r.spans...), r.changed
		r.mu.Unlock()
		if cond(spans) {
			return spans
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("otlptest: condition not met within %v; %d spans: %v", d, len(spans), spans)
			return nil
		}
	}
}

// NewHTTP starts an OTLP/HTTP receiver (protobuf bodies at /v1/traces) on
// loopback; it stops with the test.
func NewHTTP(t testing.TB) *Receiver {
	r := &Receiver{changed: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/v1/traces" || req.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "want POST /v1/traces application/x-protobuf", http.StatusBadRequest)
			return
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return
		}
		var m collectortrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &m); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if !r.add(&m) {
			http.Error(w, "failing", http.StatusServiceUnavailable)
			return
		}
		out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(out)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	r.URL = "http://" + ln.Addr().String()
	return r
}

type grpcService struct {
	collectortrace.UnimplementedTraceServiceServer
	r *Receiver
}

func (g grpcService) Export(_ context.Context, m *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	if !g.r.add(m) {
		return nil, errFailing
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

type failing struct{}

func (failing) Error() string { return "failing" }

var errFailing error = failing{}

// NewGRPC starts an OTLP/gRPC receiver (the official service, cleartext)
// on loopback; it stops with the test.
func NewGRPC(t testing.TB) *Receiver {
	r := &Receiver{changed: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(s, grpcService{r: r})
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	r.Addr = ln.Addr().String()
	return r
}
