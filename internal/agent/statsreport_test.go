package agent

import (
	"fmt"
	"testing"

	"github.com/fogmesh/fogmesh/internal/wire"
)

// The heartbeat's stats: a stream's first report holds every row, later
// ones only rows that changed; a request lands in its code class and the
// first latency bucket at or above it; past wire.MaxStatRows rows new
// ones are counted as dropped, with their requests, and the first rows
// keep being reported.
func TestStatTableReport(t *testing.T) {
	var tab statTable
	a := tab.row(statKey{svc: "demo/hello", node: "n2", tier: "site", path: "same_site", src: "demo/web"})
	b := tab.row(statKey{svc: "demo/hello", node: "n3", tier: "any", path: "cross_region", src: "demo/web"})
	if again := tab.row(statKey{svc: "demo/hello", node: "n2", tier: "site", path: "same_site", src: "demo/web"}); again != a {
		t.Fatal("one key, two rows")
	}
	a.observe(2, 0.0004) // ≤ 0.5 ms
	a.observe(2, 0.001)  // exactly a bound: that bucket (le)
	a.observe(5, 45)     // above every bound
	b.observe(0, 0.003)

	var s statSender
	rep := tab.report(&s)
	if !rep.Full || len(rep.Rows) != 2 || len(rep.Bounds) != len(latencyBuckets) || rep.At <= 0 {
		t.Fatalf("first report: %+v", rep)
	}
	r := rep.Rows[0]
	if r.Node != "n2" || r.Codes != [6]uint64{0, 0, 2, 0, 0, 1} || r.Buckets[0] != 1 || r.Buckets[1] != 1 || r.Buckets[len(latencyBuckets)] != 1 {
		t.Fatalf("row a: %+v", r)
	}
	if rep := tab.report(&s); rep.Full || len(rep.Rows) != 0 || rep.Bounds != nil {
		t.Fatalf("nothing changed: %+v", rep)
	}
	b.observe(2, 0.02)
	rep = tab.report(&s)
	if len(rep.Rows) != 1 || rep.Rows[0].Node != "n3" || rep.Rows[0].Codes[2] != 1 || rep.Rows[0].Codes[0] != 1 {
		t.Fatalf("after b changed: %+v", rep)
	}
	// A new stream starts with everything again.
	if rep := tab.report(&statSender{}); !rep.Full || len(rep.Rows) != 2 {
		t.Fatalf("new stream: %+v", rep)
	}

	for i := 2; i < wire.MaxStatRows; i++ {
		if tab.row(statKey{svc: fmt.Sprintf("demo/s%d", i), node: "n2"}) == nil {
			t.Fatalf("row %d refused below the bound", i)
		}
	}
	for i := 0; i < 3; i++ {
		if tab.row(statKey{svc: "demo/over", node: fmt.Sprint(i)}) != nil {
			t.Fatal("a row past the bound")
		}
	}
	tab.droppedReqs.Add(5)
	rep = tab.report(&statSender{})
	if len(rep.Rows) != wire.MaxStatRows || rep.Dropped != 3 || rep.DroppedRequests != 5 {
		t.Fatalf("past the bound: %d rows, dropped %d (%d requests)", len(rep.Rows), rep.Dropped, rep.DroppedRequests)
	}
}
