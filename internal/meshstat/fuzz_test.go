package meshstat

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/promtext"
)

// FuzzCompute: whatever two scrapes of a node's /metrics hold (the node is
// another program, possibly broken or hostile), every row Compute makes is
// a sane reading: requests and rates finite and not negative, a success
// ratio in [0, 1] (NaN only with no request), percentiles finite, not
// negative and in order, and Clean makes the rows encode as JSON.
func FuzzCompute(f *testing.F) {
	f.Add(`fogmesh_http_requests_total{`+l+`,code_class="2xx"} 100
fogmesh_http_request_duration_seconds_bucket{`+l+`,vmrange="1.000e-03...2.000e-03"} 50`,
		`fogmesh_http_requests_total{`+l+`,code_class="2xx"} 190
fogmesh_http_requests_total{`+l+`,code_class="5xx"} 10
fogmesh_http_request_duration_seconds_bucket{`+l+`,vmrange="1.000e-03...2.000e-03"} 140
fogmesh_http_request_duration_seconds_bucket{`+l+`,vmrange="2.000e-03...4.000e-03"} 60`, uint16(10))
	f.Add(`fogmesh_http_requests_total{`+l+`,code_class="2xx"} 500`, `fogmesh_http_requests_total{`+l+`,code_class="2xx"} 4
fogmesh_http_request_duration_seconds_bucket{`+l+`,le="0.01"} 2
fogmesh_http_request_duration_seconds_bucket{`+l+`,le="0.1"} 4
fogmesh_http_request_duration_seconds_bucket{`+l+`,le="+Inf"} 4`, uint16(2))
	f.Add(``, `fogmesh_http_requests_total{service="a",code_class="error"} -5
fogmesh_http_requests_total{service="a",code_class="2xx"} NaN
fogmesh_http_requests_total{service="a",code_class="5xx"} +Inf`, uint16(1))
	f.Add(``, `fogmesh_http_requests_total{service="a",code_class="2xx"} 10
fogmesh_http_request_duration_seconds_bucket{service="a",vmrange="NaN...NaN"} 5
fogmesh_http_request_duration_seconds_bucket{service="a",vmrange="-Inf...+Inf"} 5
fogmesh_http_request_duration_seconds_bucket{service="a",le="NaN"} 5
fogmesh_http_request_duration_seconds_bucket{service="a",le="-1"} 5`, uint16(1))
	f.Add(``, `fogmesh_http_request_duration_seconds_bucket{service="a",vmrange="1...9"} 10
fogmesh_http_request_duration_seconds_bucket{service="a",vmrange="2...3"} 10
fogmesh_http_request_duration_seconds_bucket{service="a",le="0.5"} 10
fogmesh_http_request_duration_seconds_bucket{service="a",le="0.2"} 20`, uint16(0))
	f.Add(`x 1`, `fogmesh_http_requests_total 1e308
fogmesh_http_requests_total{service="b"} 1e308
fogmesh_http_requests_total{service="b",node="n"} 1e308`, uint16(65535))
	f.Fuzz(func(t *testing.T, prevText, curText string, ms uint16) {
		prev, err1 := promtext.Parse(strings.NewReader(prevText))
		cur, err2 := promtext.Parse(strings.NewReader(curText))
		if err1 != nil || err2 != nil {
			return
		}
		t0 := time.Unix(1000, 0)
		svcs, edges := Compute(map[string]Scrape{"n": {At: t0, Samples: prev}},
			map[string]Scrape{"n": {At: t0.Add(time.Duration(ms) * time.Millisecond), Samples: cur}})
		for _, rows := range [][]Row{svcs, edges} {
			for _, r := range rows {
				bad := func(what string) { t.Fatalf("row %+v: %s", r, what) }
				for _, v := range []float64{r.Requests, r.RPS, r.Window} {
					if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
						bad("requests, rate or window not a finite count")
					}
				}
				if r.Requests > 0 && (math.IsNaN(r.Success) || r.Success < 0 || r.Success > 1) {
					bad("success ratio outside [0, 1]")
				}
				if r.Requests == 0 && !math.IsNaN(r.Success) {
					bad("a success ratio of no request")
				}
				ps := []float64{r.P50, r.P95, r.P99}
				for i, p := range ps {
					if math.IsNaN(p) != math.IsNaN(ps[0]) {
						bad("some percentiles only")
					}
					if !math.IsNaN(p) && (math.IsInf(p, 0) || p < 0) {
						bad("percentile not a finite duration")
					}
					if i > 0 && p < ps[i-1] {
						bad("percentiles out of order")
					}
				}
			}
			if _, err := json.Marshal(Clean(rows)); err != nil {
				t.Fatalf("clean rows do not encode: %v", err)
			}
		}
	})
}
