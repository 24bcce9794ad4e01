package tracing

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"time"
)

// SpanKind is OTLP's span kind.
type SpanKind int32

const (
	KindServer SpanKind = 2 // the destination agent's span: a request received from a peer
	KindClient SpanKind = 3 // the client agent's span: a request sent on for a local client
)

// StatusCode is OTLP's span status code.
type StatusCode int32

const (
	StatusUnset StatusCode = 0
	StatusOK    StatusCode = 1
	StatusError StatusCode = 2
)

// Attr is a span or resource attribute: a string or an integer.
type Attr struct {
	Key   string
	Str   string
	Int   int64
	IsInt bool
}

// String and Int make attributes.
func String(k, v string) Attr    { return Attr{Key: k, Str: v} }
func Int(k string, v int64) Attr { return Attr{Key: k, Int: v, IsInt: true} }

// Span is one finished (or finishing) span.
type Span struct {
	Context    SpanContext // its own trace and span id, and tracestate
	Parent     SpanID      // zero: a root span
	Name       string
	Kind       SpanKind
	Start, End time.Time
	Attrs      []Attr
	Status     StatusCode
	StatusMsg  string
}

// Sampler decides which new traces are recorded: parent-based, so a
// request that arrives with a trace context follows its sampled flag (the
// whole trace is kept or dropped together, across agents), and a new trace
// is sampled with probability Ratio, decided from its trace id as
// OpenTelemetry's TraceIDRatioBased does (so every agent agrees).
type Sampler struct{ bound uint64 }

// NewSampler samples new traces with probability ratio, clamped to [0, 1].
func NewSampler(ratio float64) Sampler {
	switch {
	case ratio >= 1 || math.IsNaN(ratio):
		return Sampler{bound: math.MaxUint64}
	case ratio <= 0:
		return Sampler{}
	}
	return Sampler{bound: uint64(ratio * (1 << 63) * 2)}
}

// Sample reports whether a span of trace id with parent (zero: none) is
// recorded.
func (s Sampler) Sample(parent SpanContext, id TraceID) bool {
	if parent.IsValid() {
		return parent.Sampled
	}
	if s.bound == math.MaxUint64 {
		return true
	}
	// The low 8 bytes, as OpenTelemetry (the random part of a W3C level 2 id).
	return binary.BigEndian.Uint64(id[8:])>>1 < s.bound>>1
}

// NewTraceID and NewSpanID return random non-zero identifiers.
func NewTraceID() TraceID {
	var t TraceID
	for !t.IsValid() {
		binary.BigEndian.PutUint64(t[:8], rand.Uint64())
		binary.BigEndian.PutUint64(t[8:], rand.Uint64())
	}
	return t
}

func NewSpanID() SpanID {
	var s SpanID
	for !s.IsValid() {
		binary.BigEndian.PutUint64(s[:], rand.Uint64())
	}
	return s
}
