package control

import (
	"math"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/meshstat"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Heartbeat counters become rates as two scrapes would: the window is the
// agent's clock between its two last reports, a partial report keeps the
// rows it does not carry, a full one replaces them (a new stream), and a
// node not heard since the bound counts no longer.
func TestHeartbeatStatsRates(t *testing.T) {
	var st statsState
	bounds := []float64{0.001, 0.01, 0.1}
	row := func(node string, ok, failed uint64, b ...uint64) wire.StatRow {
		return wire.StatRow{Service: "demo/hello", Node: node, Site: "s2", SourceService: "demo/web", Tier: "site", Path: "same_site",
			Codes: [6]uint64{0, 0, ok, 0, 0, failed}, Buckets: b}
	}
	t0 := time.Unix(1700000000, 0)
	now := time.Now()
	st.note("a", &wire.StatsReport{At: t0.UnixMilli(), Full: true, Bounds: bounds,
		Rows: []wire.StatRow{row("b", 100, 0, 50, 50, 0, 0), row("c", 10, 0, 10, 0, 0, 0)}}, now)
	prev, cur, _ := st.scrapes(now.Add(-time.Minute), map[string]string{"a": "s1"})
	if len(prev) != 0 || len(cur) != 1 {
		t.Fatalf("one report: prev %d cur %d", len(prev), len(cur))
	}
	// 2 s later on the agent's clock (and 7 s on ours: the window is the
	// agent's): 180 ok and 20 failed more to b, nothing new to c (not sent).
	st.note("a", &wire.StatsReport{At: t0.Add(2 * time.Second).UnixMilli(), Bounds: bounds,
		Rows: []wire.StatRow{row("b", 280, 20, 50, 150, 100, 0)}}, now.Add(7*time.Second))
	prev, cur, _ = st.scrapes(now, map[string]string{"a": "s1"})
	svcs, edges := meshstat.Compute(prev, cur)
	if len(svcs) != 1 || len(edges) != 2 {
		t.Fatalf("services %+v edges %+v", svcs, edges)
	}
	s := svcs[0]
	if s.Service != "demo/hello" || s.Requests != 200 || s.RPS != 100 || s.Success != 0.9 || s.Window != 2 {
		t.Fatalf("service row %+v", s)
	}
	// 100 requests in (1 ms, 10 ms] and 100 in (10 ms, 100 ms]: p50 at 10 ms.
	if math.Abs(s.P50-0.01) > 1e-9 || s.P99 <= 0.01 || s.P99 > 0.1 {
		t.Fatalf("percentiles %+v", s)
	}
	for _, e := range edges {
		if e.SourceNode != "a" || e.SourceSite != "s1" || e.Site != "s2" || e.SourceService != "demo/web" || e.Path != "same_site" {
			t.Fatalf("edge %+v", e)
		}
		if e.Node == "c" && e.Requests != 0 {
			t.Fatalf("c kept its values but shows %v requests", e.Requests)
		}
	}
	// A new stream (the agent restarted: counters from zero) replaces the
	// rows; the rate counts what the new counters hold.
	st.note("a", &wire.StatsReport{At: t0.Add(3 * time.Second).UnixMilli(), Full: true, Bounds: bounds,
		Rows: []wire.StatRow{row("b", 5, 0, 5, 0, 0, 0)}}, now.Add(8*time.Second))
	prev, cur, _ = st.scrapes(now, nil)
	svcs, edges = meshstat.Compute(prev, cur)
	if len(svcs) != 1 || svcs[0].Requests != 5 || len(edges) != 1 {
		t.Fatalf("after restart: %+v %+v", svcs, edges)
	}
	// A clock step back on the agent: our clock measures the window.
	st.note("a", &wire.StatsReport{At: t0.UnixMilli(), Bounds: bounds, Rows: []wire.StatRow{row("b", 15, 0, 15, 0, 0, 0)}}, now.Add(13*time.Second))
	prev, cur, _ = st.scrapes(now, nil)
	if svcs, _ = meshstat.Compute(prev, cur); len(svcs) != 1 || svcs[0].Window != 5 || svcs[0].RPS != 2 {
		t.Fatalf("after a clock step: %+v", svcs)
	}
	if _, cur, _ = st.scrapes(now.Add(14*time.Second), nil); len(cur) != 0 {
		t.Fatalf("stale node still counted: %v", cur)
	}
	if len(st.nodes) != 1 {
		t.Fatalf("a node stale for less than statsForget forgotten: %d nodes", len(st.nodes))
	}
	// An empty partial report keeps the rows (shared, not copied).
	st.note("a", &wire.StatsReport{At: now.Add(20 * time.Second).UnixMilli()}, now.Add(20*time.Second))
	if _, cur, _ = st.scrapes(now.Add(19*time.Second), nil); len(cur["a"].Samples) == 0 {
		t.Fatalf("an empty partial report lost the rows: %+v", cur["a"])
	}
	// Gone for statsForget: forgotten, so node churn does not grow the map.
	st.scrapes(now.Add(20*time.Second+statsForget+time.Second), nil)
	if len(st.nodes) != 0 {
		t.Fatalf("a node gone for statsForget kept: %d nodes", len(st.nodes))
	}
}
