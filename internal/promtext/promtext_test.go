package promtext

import (
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Real lines as the VictoriaMetrics library writes them for the agent.
const agentLines = `# HELP ignored
fogmesh_agent_connections_total{result="ok"} 12
fogmesh_http_requests_total{service="demo/hello",endpoint="hello-a",node="a",site="s1",tier="node",route="",source_node="a",source_site="s1",code_class="2xx"} 40
fogmesh_http_request_duration_seconds_bucket{service="demo/hello",vmrange="1.000e-03...1.136e-03"} 3
fogmesh_http_request_duration_seconds_sum{service="demo/hello"} 0.25
go_gc_duration_seconds{quantile="1"} 1.5e-05
weird{l="a\"b\\c\nd"} +Inf 1700000000000
`

func TestParse(t *testing.T) {
	got, err := Parse(strings.NewReader(agentLines))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 6 {
		t.Fatalf("%d samples, want 6: %+v", len(got), got)
	}
	if s := got[1]; s.Name != "fogmesh_http_requests_total" || s.Labels["service"] != "demo/hello" || s.Labels["route"] != "" || s.Labels["code_class"] != "2xx" || s.Value != 40 {
		t.Fatalf("requests sample %+v", s)
	}
	if s := got[2]; s.Labels["vmrange"] != "1.000e-03...1.136e-03" || s.Value != 3 {
		t.Fatalf("bucket %+v", s)
	}
	if s := got[5]; s.Labels["l"] != "a\"b\\c\nd" || !math.IsInf(s.Value, 1) {
		t.Fatalf("escapes %+v", s)
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"{a=\"b\"} 1", "no metric name"},
		{"m{a=\"b} 1", "unterminated"},
		{"m{a=b} 1", `want ="`},
		{"m{a=\"b\" c=\"d\"} 1", "want , or }"},
		{"m{a=\"b\",a=\"c\"} 1", "twice"},
		{"m abc", "bad value"},
		{"m 1 2 3", "optional timestamp"},
		{"ok 1\nm", "line 2"},
	} {
		_, err := Parse(strings.NewReader(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.in, err, c.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, l := range strings.Split(agentLines, "\n") {
		f.Add(l)
	}
	f.Add("m{a=\"\\\"\"} NaN")
	f.Add("m{a=\"x\\ny\",b=\"\\\\\"} -Inf 123")
	f.Add("m:x{ a = \"\" , } 0x1p-2")
	f.Add("m{a=\"1\",a=\"2\"} 1")
	f.Fuzz(func(t *testing.T, in string) {
		ss, err := Parse(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, s := range ss {
			if s.Name == "" {
				t.Fatalf("empty name from %q", in)
			}
			// Written back in the exposition format, the sample reads
			// the same: no name, label or value is taken that its own
			// format cannot say.
			line := format(s)
			back, err := ParseLine(line)
			if err != nil || back.Name != s.Name || !maps.Equal(back.Labels, s.Labels) ||
				back.Value != s.Value && !(math.IsNaN(back.Value) && math.IsNaN(s.Value)) {
				t.Fatalf("%q read as %+v, written %q, read back as %+v, %v", in, s, line, back, err)
			}
		}
	})
}

// format writes s as an exposition line.
func format(s Sample) string {
	var b strings.Builder
	b.WriteString(s.Name)
	keys := slices.Sorted(maps.Keys(s.Labels))
	if len(keys) > 0 {
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(k + `="` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s.Labels[k]) + `"`)
		}
		b.WriteByte('}')
	}
	v := strconv.FormatFloat(s.Value, 'g', -1, 64)
	switch {
	case math.IsInf(s.Value, 1):
		v = "+Inf"
	case math.IsInf(s.Value, -1):
		v = "-Inf"
	}
	return b.String() + " " + v
}
