package control

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/meshstat"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// FuzzHeartbeatStats: two heartbeats' stats tables of a node (as the sync
// stream takes them, through syncproto.ValidStats), heard gap apart, give
// rates over a positive window that are finite and not negative, a
// success ratio within 0 to 1 and finite percentiles, whatever
// the agent's clock (At) and counters say; never a panic.
func FuzzHeartbeatStats(f *testing.F) {
	row := `{"service":"shop/orders","node":"n2","site":"s2","sourceService":"shop/web","tier":"site","path":"same_site",`
	f.Add([]byte(`{"at":1700000000000,"full":true,"bounds":[0.005,0.1,1],"rows":[`+row+`"codes":[0,0,40,0,1,2],"buckets":[10,20,12,1]}]}`),
		[]byte(`{"at":1700000005000,"bounds":[0.005,0.1,1],"rows":[`+row+`"codes":[0,0,90,0,1,4],"buckets":[20,50,24,1]}]}`), uint32(5000))
	f.Add([]byte(`{"at":9223372036854775807,"full":true,"rows":[`+row+`"codes":[1,1,1,1,1,1]}]}`),
		[]byte(`{"at":1,"rows":[`+row+`"codes":[18446744073709551615,0,0,0,0,18446744073709551615]}]}`), uint32(1))
	f.Add([]byte(`{"at":-5,"full":true,"rows":[`+row+`"codes":[5,0,0,0,0,0]}]}`),
		[]byte(`{"at":-5,"full":true,"rows":[`+row+`"codes":[0,0,0,0,0,0]}]}`), uint32(0))
	f.Add([]byte(`{"at":1700000000000,"bounds":[1e308,1e309],"rows":[`+row+`"codes":[0,0,1,0,0,0],"buckets":[1,2,3]}]}`),
		[]byte(`{"at":1700000000001,"dropped":5,"droppedRequests":7}`), uint32(4294967295))
	f.Fuzz(func(t *testing.T, a, b []byte, gapMs uint32) {
		var ra, rb wire.StatsReport
		if json.Unmarshal(a, &ra) != nil || json.Unmarshal(b, &rb) != nil {
			return
		}
		var st statsState
		heard := time.Now().Add(-time.Duration(gapMs) * time.Millisecond)
		st.note("n1", syncproto.ValidStats(&ra), heard)
		st.note("n1", syncproto.ValidStats(&rb), heard.Add(time.Duration(gapMs)*time.Millisecond))
		prev, cur, _ := st.scrapes(heard.Add(-time.Minute), map[string]string{"n1": "s1"})
		svcs, edges := meshstat.Compute(prev, cur)
		for _, r := range append(svcs, edges...) {
			if !(r.Window > 0) || math.IsInf(r.Window, 0) {
				t.Fatalf("row %+v: window %v", r.Key, r.Window)
			}
			for _, v := range []float64{r.Requests, r.RPS} {
				if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
					t.Fatalf("row %+v: %v", r.Key, v)
				}
			}
			if r.Success < 0 || r.Success > 1 { // NaN: no request
				t.Fatalf("row %+v: success %v", r.Key, r.Success)
			}
			for _, v := range []float64{r.P50, r.P95, r.P99} {
				if math.IsInf(v, 0) || v < 0 {
					t.Fatalf("row %+v: percentile %v", r.Key, v)
				}
			}
		}
	})
}
