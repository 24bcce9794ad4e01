package meshstat

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/promtext"
)

func scrape(t *testing.T, at time.Time, text string) Scrape {
	t.Helper()
	ss, err := promtext.Parse(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	return Scrape{At: at, Samples: ss}
}

const l = `service="demo/hello",endpoint="e",node="b",site="s1",tier="site",route="",source_node="a",source_site="s1"`

func TestCompute(t *testing.T) {
	t0 := time.Unix(1000, 0)
	prev := map[string]Scrape{"a": scrape(t, t0, `
fogmesh_http_requests_total{`+l+`,code_class="2xx"} 100
fogmesh_http_requests_total{`+l+`,code_class="5xx"} 0
fogmesh_http_request_duration_seconds_bucket{`+l+`,vmrange="1.000e-03...2.000e-03"} 50
fogmesh_http_request_duration_seconds_bucket{`+l+`,vmrange="2.000e-03...4.000e-03"} 50
`)}
	cur := map[string]Scrape{"a": scrape(t, t0.Add(10*time.Second), `
fogmesh_http_requests_total{`+l+`,code_class="2xx"} 190
fogmesh_http_requests_total{`+l+`,code_class="5xx"} 10
fogmesh_http_request_duration_seconds_bucket{`+l+`,vmrange="1.000e-03...2.000e-03"} 140
fogmesh_http_request_duration_seconds_bucket{`+l+`,vmrange="2.000e-03...4.000e-03"} 60
fogmesh_agent_connections_total{result="ok"} 5
`), "new": scrape(t, t0, `fogmesh_http_requests_total{`+l+`,code_class="2xx"} 7`)}
	svcs, edges := Compute(prev, cur)
	if len(svcs) != 1 || len(edges) != 1 {
		t.Fatalf("services %+v edges %+v", svcs, edges)
	}
	s := svcs[0]
	if s.Service != "demo/hello" || s.Requests != 100 || s.RPS != 10 || math.Abs(s.Success-0.9) > 1e-9 {
		t.Fatalf("service row %+v", s)
	}
	// 90 of 100 in 1-2 ms, 10 in 2-4 ms: p50 at 1 + 50/90 ms, p99 at 2 + 9/10·2 ms.
	if math.Abs(s.P50-(0.001+0.001*50/90)) > 1e-9 || math.Abs(s.P99-0.0038) > 1e-9 {
		t.Fatalf("p50 %v p99 %v", s.P50, s.P99)
	}
	if e := edges[0]; e.SourceNode != "a" || e.Node != "b" || e.Tier != "site" || e.RPS != 10 {
		t.Fatalf("edge %+v", e)
	}
}

func TestComputeResetAndLe(t *testing.T) {
	t0 := time.Unix(1000, 0)
	prev := map[string]Scrape{"a": scrape(t, t0, `fogmesh_http_requests_total{`+l+`,code_class="2xx"} 500`)}
	cur := map[string]Scrape{"a": scrape(t, t0.Add(2*time.Second), `
fogmesh_http_requests_total{`+l+`,code_class="2xx"} 4
fogmesh_http_request_duration_seconds_bucket{`+l+`,le="0.01"} 2
fogmesh_http_request_duration_seconds_bucket{`+l+`,le="0.1"} 4
fogmesh_http_request_duration_seconds_bucket{`+l+`,le="+Inf"} 4
`)}
	svcs, _ := Compute(prev, cur)
	if s := svcs[0]; s.Requests != 4 || s.RPS != 2 || s.Success != 1 || math.Abs(s.P50-0.01) > 1e-9 {
		t.Fatalf("after a reset %+v", s)
	}
	// Source service and path kind, where the agent labels them, split edges.
	lp := l + `,source_service="shop/web",path="same_site"`
	prev = map[string]Scrape{"a": scrape(t, t0, `fogmesh_http_requests_total{`+lp+`,code_class="2xx"} 1`)}
	cur = map[string]Scrape{"a": scrape(t, t0.Add(time.Second), `fogmesh_http_requests_total{`+lp+`,code_class="2xx"} 3
fogmesh_http_requests_total{`+l+`,source_service="unknown",path="relayed",code_class="5xx"} 0`)}
	_, edges := Compute(prev, cur)
	if len(edges) != 2 || edges[0].SourceService != "shop/web" || edges[0].Path != "same_site" || edges[0].RPS != 2 || edges[1].Path != "relayed" {
		t.Fatalf("labelled edges %+v", edges)
	}
	if got := Clean([]Row{{Success: math.NaN(), P50: math.NaN()}}); got[0].Success != -1 || got[0].P50 != -1 {
		t.Fatalf("clean %+v", got)
	}
}
