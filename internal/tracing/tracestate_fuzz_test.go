package tracing

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzTracestate: the tracestate of a request (one or several header
// lines, joined with commas as W3C asks) is taken only beside a valid
// traceparent and within maxTracestate, else dropped whole (never cut);
// what is taken is passed on unchanged: injected into the next hop's
// request it extracts there as the same context.
func FuzzTracestate(f *testing.F) {
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	f.Add(tp, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
	f.Add(tp, "a=1\x00b=2")
	f.Add(tp, "")
	f.Add(tp, "\x00")
	f.Add(tp, strings.Repeat("k=v,", 2100))
	f.Add("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "a=1")
	f.Add("garbage", "a=1")
	f.Fuzz(func(t *testing.T, parent, state string) {
		h := http.Header{HeaderTraceparent: {parent}}
		var states []string
		if state != "" {
			states = strings.Split(state, "\x00") // several header lines
			h[HeaderTracestate] = states
		}
		sc, form := Extract(h)
		joined := strings.Join(states, ",")
		want := ""
		if form == FormatW3C && len(states) > 0 && len(joined) <= maxTracestate {
			want = joined
		}
		if sc.State != want {
			t.Fatalf("traceparent %q, tracestate %q: state %q, want %q", parent, states, sc.State, want)
		}
		if form != FormatW3C {
			return
		}
		out := http.Header{}
		Inject(out, sc, SpanID{})
		if _, ok := out[HeaderTracestate]; ok != (sc.State != "") {
			t.Fatalf("state %q injected as %q", sc.State, out[HeaderTracestate])
		}
		back, form2 := Extract(out)
		if form2 != FormatW3C || back != sc {
			t.Fatalf("context %+v injected extracts as %+v (%v)", sc, back, form2)
		}
	})
}
