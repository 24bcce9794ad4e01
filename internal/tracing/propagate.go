// Package tracing is the agent's distributed tracing: trace context
// propagation (W3C traceparent/tracestate, B3 single and multi header),
// parent-based ratio sampling, spans, their OTLP protobuf encoding, and a
// bounded exporter that never blocks the request path.
//
// It exists instead of the OpenTelemetry Go SDK because the agent must stay
// small (an ARM board): the SDK and its OTLP exporters add several MB and a
// gRPC stack to the binary, where this package adds a few hundred KB and
// speaks OTLP/HTTP and OTLP/gRPC over net/http. Tests check its output
// against the official OTLP protobufs.
package tracing

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// TraceID and SpanID are W3C trace context identifiers; all-zero is invalid.
type (
	TraceID [16]byte
	SpanID  [8]byte
)

func (t TraceID) IsValid() bool  { return t != TraceID{} }
func (s SpanID) IsValid() bool   { return s != SpanID{} }
func (t TraceID) String() string { return hex.EncodeToString(t[:]) }
func (s SpanID) String() string  { return hex.EncodeToString(s[:]) }

// Format is how a request carried its trace context.
type Format uint8

const (
	FormatNone     Format = iota
	FormatW3C             // traceparent (+ tracestate)
	FormatB3Single        // b3: {TraceId}-{SpanId}-{Sampled}
	FormatB3Multi         // X-B3-TraceId, X-B3-SpanId, X-B3-Sampled / X-B3-Flags
)

// SpanContext is the part of a span that crosses process boundaries.
type SpanContext struct {
	TraceID TraceID
	SpanID  SpanID
	Sampled bool
	// State is the W3C tracestate, passed on unchanged (vendors' data).
	State string
}

// IsValid reports whether both identifiers are set.
func (sc SpanContext) IsValid() bool { return sc.TraceID.IsValid() && sc.SpanID.IsValid() }

// Header names.
const (
	HeaderTraceparent = "Traceparent"
	HeaderTracestate  = "Tracestate"
	HeaderB3          = "B3"
	HeaderB3TraceID   = "X-B3-Traceid"
	HeaderB3SpanID    = "X-B3-Spanid"
	HeaderB3Parent    = "X-B3-Parentspanid"
	HeaderB3Sampled   = "X-B3-Sampled"
	HeaderB3Flags     = "X-B3-Flags"
)

// maxTracestate bounds the tracestate passed on (W3C: 32 members of at
// most 256 bytes each, i.e. ~8 KB; a longer one is dropped, not cut).
const maxTracestate = 8192

var errBadTraceparent = errors.New("malformed traceparent")

// ParseTraceparent parses a W3C traceparent header value
// (version-traceid-parentid-flags). Version 00 must be exactly 55 bytes; a
// higher version may carry more fields after the flags (W3C §3.2.4), which
// are ignored. Version ff is invalid.
func ParseTraceparent(v string) (SpanContext, error) {
	var sc SpanContext
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return sc, fmt.Errorf("%w: %q", errBadTraceparent, clip(v))
	}
	ver, ok := hexByte(v[0:2])
	if !ok || ver == 0xff {
		return sc, fmt.Errorf("%w: bad version in %q", errBadTraceparent, clip(v))
	}
	if ver == 0 && len(v) != 55 || ver != 0 && len(v) > 55 && v[55] != '-' {
		return sc, fmt.Errorf("%w: bad length %d", errBadTraceparent, len(v))
	}
	if !lowerHex(v[3:35], sc.TraceID[:]) || !lowerHex(v[36:52], sc.SpanID[:]) {
		return sc, fmt.Errorf("%w: bad trace or parent id in %q", errBadTraceparent, clip(v))
	}
	flags, ok := hexByte(v[53:55])
	if !ok {
		return sc, fmt.Errorf("%w: bad flags in %q", errBadTraceparent, clip(v))
	}
	if !sc.IsValid() {
		return sc, fmt.Errorf("%w: all-zero id", errBadTraceparent)
	}
	sc.Sampled = flags&1 == 1
	return sc, nil
}

// FormatTraceparent is the version 00 traceparent of sc.
func FormatTraceparent(sc SpanContext) string {
	var b [55]byte
	copy(b[:], "00-")
	hex.Encode(b[3:35], sc.TraceID[:])
	b[35] = '-'
	hex.Encode(b[36:52], sc.SpanID[:])
	b[52] = '-'
	b[53] = '0'
	b[54] = '0'
	if sc.Sampled {
		b[54] = '1'
	}
	return string(b[:])
}

var errBadB3 = errors.New("malformed b3")

// ParseB3 parses a B3 single header: {TraceId}-{SpanId}[-{Sampled}[-{ParentSpanId}]],
// a trace id of 16 or 32 hex digits (a 64-bit one is left-padded with
// zeros), sampled one of 0, 1, d (debug: sampled). A lone sampling state
// ("0", "1", "d") carries no context and is an error here.
func ParseB3(v string) (SpanContext, error) {
	var sc SpanContext
	parts := strings.SplitN(v, "-", 5)
	if len(parts) < 2 || len(parts) > 4 {
		return sc, fmt.Errorf("%w: %q", errBadB3, clip(v))
	}
	sampled := ""
	if len(parts) >= 3 {
		sampled = parts[2]
	}
	if len(parts) == 4 && (len(parts[3]) != 16 || !lowerHex(parts[3], make([]byte, 8))) {
		return sc, fmt.Errorf("%w: bad parent span id in %q", errBadB3, clip(v))
	}
	return parseB3Parts(parts[0], parts[1], sampled, "")
}

// ParseB3Multi parses the B3 multi-header values.
func ParseB3Multi(traceID, spanID, sampled, flags string) (SpanContext, error) {
	return parseB3Parts(traceID, spanID, sampled, flags)
}

func parseB3Parts(traceID, spanID, sampled, flags string) (SpanContext, error) {
	var sc SpanContext
	switch len(traceID) {
	case 32:
		if !lowerHex(traceID, sc.TraceID[:]) {
			return sc, fmt.Errorf("%w: bad trace id %q", errBadB3, clip(traceID))
		}
	case 16:
		if !lowerHex(traceID, sc.TraceID[8:]) {
			return sc, fmt.Errorf("%w: bad trace id %q", errBadB3, clip(traceID))
		}
	default:
		return sc, fmt.Errorf("%w: trace id of %d digits", errBadB3, len(traceID))
	}
	if len(spanID) != 16 || !lowerHex(spanID, sc.SpanID[:]) {
		return sc, fmt.Errorf("%w: bad span id %q", errBadB3, clip(spanID))
	}
	switch sampled {
	case "1", "d", "true": // "true": old multi-header clients
		sc.Sampled = true
	case "0", "false", "":
	default:
		return sc, fmt.Errorf("%w: bad sampling state %q", errBadB3, clip(sampled))
	}
	if flags == "1" {
		sc.Sampled = true // debug
	}
	if !sc.IsValid() {
		return sc, fmt.Errorf("%w: all-zero id", errBadB3)
	}
	return sc, nil
}

// Extract reads a request's trace context: traceparent first (with its
// tracestate), else B3 single, else B3 multi. A malformed header counts as
// absent (a new trace starts), as the W3C spec asks.
func Extract(h http.Header) (SpanContext, Format) {
	if v := h[HeaderTraceparent]; len(v) == 1 {
		if sc, err := ParseTraceparent(v[0]); err == nil {
			if st := h[HeaderTracestate]; len(st) > 0 {
				s := strings.Join(st, ",")
				if len(s) <= maxTracestate {
					sc.State = s
				}
			}
			return sc, FormatW3C
		}
	}
	if v := h[HeaderB3]; len(v) == 1 {
		if sc, err := ParseB3(v[0]); err == nil {
			return sc, FormatB3Single
		}
	}
	if t, s := h[HeaderB3TraceID], h[HeaderB3SpanID]; len(t) == 1 && len(s) == 1 {
		if sc, err := ParseB3Multi(t[0], s[0], h.Get(HeaderB3Sampled), h.Get(HeaderB3Flags)); err == nil {
			return sc, FormatB3Multi
		}
	}
	return SpanContext{}, FormatNone
}

// Inject writes sc as the request's trace context: always traceparent
// (and tracestate if any), and also each B3 form the request carries, so
// a B3-only application downstream continues the trace. parent is the
// span id B3 multi names as the parent (zero: none).
func Inject(h http.Header, sc SpanContext, parent SpanID) {
	h[HeaderTraceparent] = []string{FormatTraceparent(sc)}
	if sc.State != "" {
		h[HeaderTracestate] = []string{sc.State}
	} else {
		delete(h, HeaderTracestate)
	}
	sampled := "0"
	if sc.Sampled {
		sampled = "1"
	}
	if _, ok := h[HeaderB3]; ok {
		h[HeaderB3] = []string{sc.TraceID.String() + "-" + sc.SpanID.String() + "-" + sampled}
	}
	if _, ok := h[HeaderB3TraceID]; ok {
		h[HeaderB3TraceID] = []string{sc.TraceID.String()}
		h[HeaderB3SpanID] = []string{sc.SpanID.String()}
		h[HeaderB3Sampled] = []string{sampled}
		delete(h, HeaderB3Flags)
		if parent.IsValid() {
			h[HeaderB3Parent] = []string{parent.String()}
		} else {
			delete(h, HeaderB3Parent)
		}
	}
}

// lowerHex decodes lowercase hex s into dst (len(s) == 2*len(dst)).
func lowerHex(s string, dst []byte) bool {
	if len(s) != 2*len(dst) {
		return false
	}
	for i := range dst {
		hi, ok1 := nibble(s[2*i])
		lo, ok2 := nibble(s[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func hexByte(s string) (byte, bool) {
	var b [1]byte
	ok := lowerHex(s, b[:])
	return b[0], ok
}

func nibble(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// clip bounds a hostile header quoted in an error.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
