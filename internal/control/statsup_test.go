package control

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/meshstat"
	"github.com/fogmesh/fogmesh/internal/wire"
)

func statRow(svc, node string, ok, failed uint64, b ...uint64) wire.StatRow {
	return wire.StatRow{Service: svc, Node: node, Site: "s2", SourceService: "demo/web", Tier: "site", Path: "same_site",
		Codes: [6]uint64{0, 0, ok, 0, 0, failed}, Buckets: b}
}

// computed is what a plane's tables give as service and edge rows.
func computed(st *statsState, now time.Time) (svcs, edges []meshstat.Row) {
	prev, cur, _ := st.scrapes(now.Add(-time.Minute), map[string]string{"a": "s1", "b": "s1"})
	svcs, edges = meshstat.Compute(prev, cur)
	return meshstat.Clean(svcs), meshstat.Clean(edges)
}

// What a regional plane passes up gives the global one the rows the
// region computes: a node's first report full, then only the rows that
// changed and only nodes heard since; a new stream at the agent (a row
// gone) is passed as full, and so is every node's report a minute after
// its last full one; the row bound leaves nodes for the next
// heartbeat, those sent longest ago first.
func TestRegionStatsUp(t *testing.T) {
	var region, global statsState
	bounds := []float64{0.001, 0.01, 0.1}
	t0 := time.Unix(1700000000, 0)
	now := time.Now()
	sent := map[string]*sentStats{}
	pass := func(at time.Time, maxRows int) []wire.NodeStatsReport {
		reps := region.upReports(sent, maxRows, at)
		for i := range reps {
			if !global.note(reps[i].Node, &reps[i].Report, at) {
				t.Fatalf("global refused %+v", reps[i])
			}
		}
		return reps
	}
	same := func(at time.Time) {
		t.Helper()
		rs, re := computed(&region, at)
		gs, ge := computed(&global, at)
		if len(rs) == 0 || !reflect.DeepEqual(rs, gs) || !reflect.DeepEqual(re, ge) {
			t.Fatalf("region computes %+v / %+v\nglobal %+v / %+v", rs, re, gs, ge)
		}
	}
	region.note("a", &wire.StatsReport{At: t0.UnixMilli(), Full: true, Bounds: bounds,
		Rows: []wire.StatRow{statRow("demo/hello", "b", 100, 0, 50, 50, 0, 0), statRow("demo/hello", "c", 10, 0, 10, 0, 0, 0)}}, now)
	reps := pass(now, wire.MaxNodeStatRows)
	if len(reps) != 1 || !reps[0].Report.Full || len(reps[0].Report.Rows) != 2 {
		t.Fatalf("first: %+v", reps)
	}
	if reps := pass(now, wire.MaxNodeStatRows); len(reps) != 0 {
		t.Fatalf("nothing heard, yet passed %+v", reps)
	}
	// A partial report changing one row: that row only.
	region.note("a", &wire.StatsReport{At: t0.Add(2 * time.Second).UnixMilli(), Bounds: bounds,
		Rows: []wire.StatRow{statRow("demo/hello", "b", 280, 20, 50, 150, 100, 0)}}, now.Add(2*time.Second))
	reps = pass(now.Add(2*time.Second), wire.MaxNodeStatRows)
	if len(reps) != 1 || reps[0].Report.Full || len(reps[0].Report.Rows) != 1 || reps[0].Report.Rows[0].Node != "b" {
		t.Fatalf("partial: %+v", reps)
	}
	same(now.Add(2 * time.Second))
	// An empty report still refreshes the node up there (its window moves).
	region.note("a", &wire.StatsReport{At: t0.Add(3 * time.Second).UnixMilli()}, now.Add(3*time.Second))
	reps = pass(now.Add(3*time.Second), wire.MaxNodeStatRows)
	if len(reps) != 1 || len(reps[0].Report.Rows) != 0 || reps[0].Report.At != t0.Add(3*time.Second).UnixMilli() {
		t.Fatalf("empty: %+v", reps)
	}
	same(now.Add(3 * time.Second))
	// The agent restarted: a full report without row c is full up there.
	region.note("a", &wire.StatsReport{At: t0.Add(4 * time.Second).UnixMilli(), Full: true, Bounds: bounds,
		Rows: []wire.StatRow{statRow("demo/hello", "b", 5, 0, 5, 0, 0, 0)}}, now.Add(4*time.Second))
	reps = pass(now.Add(4*time.Second), wire.MaxNodeStatRows)
	if len(reps) != 1 || !reps[0].Report.Full || len(reps[0].Report.Rows) != 1 {
		t.Fatalf("restart: %+v", reps)
	}
	same(now.Add(4 * time.Second))
	// Two nodes changed, room for one: the one sent longest ago (a, at
	// 4 s, before b's first) goes first only if b was sent; b never was,
	// so b goes first, then a.
	region.note("b", &wire.StatsReport{At: t0.Add(5 * time.Second).UnixMilli(), Full: true, Bounds: bounds,
		Rows: []wire.StatRow{statRow("demo/other", "a", 7, 0, 7, 0, 0, 0)}}, now.Add(5*time.Second))
	region.note("a", &wire.StatsReport{At: t0.Add(5 * time.Second).UnixMilli(), Bounds: bounds,
		Rows: []wire.StatRow{statRow("demo/hello", "b", 9, 0, 9, 0, 0, 0)}}, now.Add(5*time.Second))
	if reps := pass(now.Add(5*time.Second), 1); len(reps) != 1 || reps[0].Node != "b" {
		t.Fatalf("bound 1, first: %+v", reps)
	}
	if reps := pass(now.Add(5*time.Second), 1); len(reps) != 1 || reps[0].Node != "a" {
		t.Fatalf("bound 1, next: %+v", reps)
	}
	same(now.Add(5 * time.Second))
	// A minute after its last full report a node's next one is full again
	// (the global plane may have forgotten it), changed rows or not.
	region.note("a", &wire.StatsReport{At: t0.Add(70 * time.Second).UnixMilli()}, now.Add(70*time.Second))
	reps = pass(now.Add(70*time.Second), wire.MaxNodeStatRows)
	if len(reps) != 1 || reps[0].Node != "a" || !reps[0].Report.Full || len(reps[0].Report.Rows) != 1 {
		t.Fatalf("a minute on: %+v", reps)
	}
}

// TestRegionStatsReachGlobal: an agent of region east reports counters to
// east's plane; the global plane's GET /v1/stats shows the rate, from the
// region link's heartbeats. The global plane refuses reports of nodes the
// region does not own and heartbeats over the row bound, and drops bad
// rows as it does an agent's.
func TestRegionStatsReachGlobal(t *testing.T) {
	g := startPlane(t, nil)
	east := startPlane(t, func(c *Config) { inRegion("east", g.SyncAddr())(c); c.VIPIndexMin, c.VIPIndexMax = 100, 199 })
	mustApply(t, east, svcDoc("web", "", 80))
	a := regionAgent(t, east, "e1", "east", "web/web-e1")
	waitHeld(t, g, "Node/e1", "east", nil)
	bounds := []float64{0.001, 0.01, 0.1}
	t0 := time.Now()
	beat := time.NewTicker(100 * time.Millisecond) // the simulated agent heartbeats
	defer beat.Stop()
	for i := range 40 {
		n := uint64(i * 10)
		a.send(&wire.Message{Type: wire.TypeHeartbeat, Stats: &wire.StatsReport{At: t0.Add(time.Duration(i) * 100 * time.Millisecond).UnixMilli(),
			Full: i == 0, Bounds: bounds, Rows: []wire.StatRow{statRow("demo/web", "e1", n, 0, n, 0, 0, 0)}}})
		st, err := g.heartbeatStats(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if i >= 3 && len(st.Services) == 1 && st.Services[0].Service == "demo/web" && st.Services[0].RPS > 0 && slices.Contains(st.Nodes, "e1") {
			// 10 requests every 100 ms of the agent's clock: 100/s.
			if rps := st.Services[0].RPS; rps < 99 || rps > 101 {
				t.Fatalf("global sees %v req/s, want 100", rps)
			}
			break
		}
		if i == 39 {
			t.Fatalf("the global plane never showed east's rate: %+v", st)
		}
		<-beat.C // the agent's heartbeat period here
	}
	rep := wire.StatsReport{At: time.Now().UnixMilli(), Full: true}
	if n := g.takeRegionStats("west", []wire.NodeStatsReport{{Node: "e1", Report: rep}}); n != 1 {
		t.Errorf("west passed a report of east's node e1: refused %d, want 1", n)
	}
	bad := rep
	bad.Bounds = []float64{0.1, 0.01} // not ascending: the rows' buckets are dropped, as an agent's
	bad.Rows = []wire.StatRow{statRow("demo/web", "e1", 1, 0, 1, 0, 0), statRow("", "e1", 1, 0)}
	if n := g.takeRegionStats("east", []wire.NodeStatsReport{{Node: "e1", Report: bad}}); n != 0 {
		t.Errorf("a report with bad rows refused whole (%d), want them dropped", n)
	}
	if st, _ := g.heartbeatStats(context.Background()); st.Dropped["e1"] != 1 {
		t.Errorf("the nameless row was not dropped and counted: dropped %v", st.Dropped)
	}
	many := make([]wire.NodeStatsReport, 3)
	for i := range many {
		many[i] = wire.NodeStatsReport{Node: "e1", Report: wire.StatsReport{At: rep.At, Rows: make([]wire.StatRow, wire.MaxStatRows)}}
		for j := range many[i].Report.Rows {
			many[i].Report.Rows[j] = statRow("demo/web", fmt.Sprint("n", j), 1, 0)
		}
	}
	if n := g.takeRegionStats("east", slices.Repeat(many, 11)); n == 0 {
		t.Errorf("%d rows in one heartbeat taken, over the bound %d", 33*wire.MaxStatRows, wire.MaxNodeStatRows)
	}
}
