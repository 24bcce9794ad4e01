package tracing

import (
	"net/http"
	"strings"
	"testing"
)

func TestParseTraceparent(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
		sampled  bool
	}{
		{"sampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", true, true},
		{"not sampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", true, false},
		{"future version with more fields", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", true, true},
		{"version 00 too long", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", false, false},
		{"version ff", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false, false},
		{"upper case", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false, false},
		{"zero trace id", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", false, false},
		{"zero span id", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", false, false},
		{"short", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", false, false},
		{"bad separator", "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false, false},
		{"empty", "", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc, err := ParseTraceparent(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("ParseTraceparent(%q) error %v, want ok=%v", tc.in, err, tc.ok)
			}
			if !tc.ok {
				return
			}
			if sc.Sampled != tc.sampled || sc.TraceID.String() != "4bf92f3577b34da6a3ce929d0e0e4736" || sc.SpanID.String() != "00f067aa0ba902b7" {
				t.Fatalf("got %+v", sc)
			}
		})
	}
}

func TestParseB3(t *testing.T) {
	for _, tc := range []struct {
		name, in, trace string
		ok, sampled     bool
	}{
		{"128-bit sampled", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1", "80f198ee56343ba864fe8b2a57d3eff7", true, true},
		{"with parent", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90", "80f198ee56343ba864fe8b2a57d3eff7", true, true},
		{"64-bit padded", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-d", "000000000000000064fe8b2a57d3eff7", true, true},
		{"no sampling state", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1", "80f198ee56343ba864fe8b2a57d3eff7", true, false},
		{"deny", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0", "80f198ee56343ba864fe8b2a57d3eff7", true, false},
		{"lone sampling state", "0", "", false, false},
		{"bad sampling state", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x", "", false, false},
		{"bad parent", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-zz", "", false, false},
		{"too many parts", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-1", "", false, false},
		{"odd trace length", "80f198ee56343ba864fe8b2a57d3eff-e457b5a2e4d86bd1-1", "", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc, err := ParseB3(tc.in)
			if (err == nil) != tc.ok {
				t.Fatalf("ParseB3(%q) error %v, want ok=%v", tc.in, err, tc.ok)
			}
			if tc.ok && (sc.TraceID.String() != tc.trace || sc.SpanID.String() != "e457b5a2e4d86bd1" || sc.Sampled != tc.sampled) {
				t.Fatalf("got %+v", sc)
			}
		})
	}
}

func TestExtractInject(t *testing.T) {
	h := http.Header{}
	h.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	h.Add("tracestate", "congo=t61rcWkgMzE")
	h.Add("tracestate", "rojo=00f067aa0ba902b7")
	sc, f := Extract(h)
	if f != FormatW3C || !sc.Sampled || sc.State != "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7" {
		t.Fatalf("Extract = %+v %v", sc, f)
	}

	// B3 multi: continued, and passed on in both formats.
	h = http.Header{}
	h.Set("X-B3-TraceId", "463ac35c9f6413ad48485a3953bb6124")
	h.Set("X-B3-SpanId", "a2fb4a1d1a96d312")
	h.Set("X-B3-Sampled", "1")
	sc, f = Extract(h)
	if f != FormatB3Multi || !sc.Sampled || sc.TraceID.String() != "463ac35c9f6413ad48485a3953bb6124" {
		t.Fatalf("Extract(b3 multi) = %+v %v", sc, f)
	}
	child := SpanContext{TraceID: sc.TraceID, SpanID: NewSpanID(), Sampled: true}
	Inject(h, child, sc.SpanID)
	if got := h.Get("traceparent"); got != FormatTraceparent(child) {
		t.Fatalf("traceparent %q", got)
	}
	if h.Get("X-B3-SpanId") != child.SpanID.String() || h.Get("X-B3-ParentSpanId") != "a2fb4a1d1a96d312" {
		t.Fatalf("b3 headers not updated: %v", h)
	}

	// A malformed traceparent falls back to B3 single.
	h = http.Header{}
	h.Set("traceparent", "garbage")
	h.Set("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")
	if sc, f = Extract(h); f != FormatB3Single || sc.TraceID.String() != "80f198ee56343ba864fe8b2a57d3eff7" {
		t.Fatalf("Extract(bad traceparent, b3) = %+v %v", sc, f)
	}
	Inject(h, child, SpanID{})
	if got := h.Get("b3"); got != child.TraceID.String()+"-"+child.SpanID.String()+"-1" {
		t.Fatalf("b3 %q", got)
	}

	// A tracestate beyond the W3C bound is dropped.
	h = http.Header{}
	h.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
	h.Set("tracestate", strings.Repeat("a", maxTracestate+1))
	if sc, _ = Extract(h); sc.State != "" || sc.Sampled {
		t.Fatalf("oversized tracestate kept: %d bytes", len(sc.State))
	}
}

func TestSamplerRatio(t *testing.T) {
	if !NewSampler(0).Sample(SpanContext{TraceID: TraceID{1}, SpanID: SpanID{1}, Sampled: true}, TraceID{1}) {
		t.Fatal("a sampled parent is not followed at ratio 0")
	}
	if NewSampler(1).Sample(SpanContext{TraceID: TraceID{1}, SpanID: SpanID{1}}, TraceID{1}) {
		t.Fatal("an unsampled parent is overridden at ratio 1")
	}
	const n = 20000
	for _, ratio := range []float64{0, 0.01, 0.5, 1} {
		s, got := NewSampler(ratio), 0
		for range n {
			if s.Sample(SpanContext{}, NewTraceID()) {
				got++
			}
		}
		want := ratio * n
		if d := float64(got) - want; d > 0.02*n+5 || d < -0.02*n-5 {
			t.Errorf("ratio %v: sampled %d of %d, want about %.0f", ratio, got, n, want)
		}
	}
}

// FuzzTraceContext: no header value crashes the parsers, and what parses
// formats back to a value that parses to the same context.
func FuzzTraceContext(f *testing.F) {
	for _, s := range []string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
		"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
		"64fe8b2a57d3eff7-e457b5a2e4d86bd1-d", "0", "", "--", "00-",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if sc, err := ParseTraceparent(v); err == nil {
			back, err := ParseTraceparent(FormatTraceparent(sc))
			if err != nil || back.TraceID != sc.TraceID || back.SpanID != sc.SpanID || back.Sampled != sc.Sampled {
				t.Fatalf("traceparent %q round trip: %+v %v", v, back, err)
			}
		}
		if sc, err := ParseB3(v); err == nil && !sc.IsValid() {
			t.Fatalf("b3 %q parsed to an invalid context", v)
		}
		parts := strings.SplitN(v, "-", 4)
		for len(parts) < 4 {
			parts = append(parts, "")
		}
		if sc, err := ParseB3Multi(parts[0], parts[1], parts[2], parts[3]); err == nil && !sc.IsValid() {
			t.Fatalf("b3 multi %q parsed to an invalid context", v)
		}
		h := http.Header{"Traceparent": {v}, "B3": {v}, "Tracestate": {v}}
		Extract(h)
	})
}
