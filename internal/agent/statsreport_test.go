package agent

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

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

// The destination side's series are bounded: past maxServerSeries, new
// sources share one "other" series, and requests are still counted.
func TestServerMetricsBounded(t *testing.T) {
	a := &Agent{cfg: Config{Metrics: metrics.NewSet(), Node: NodeConfig{Name: "n1"}}}
	for i := 0; i < maxServerSeries+10; i++ {
		a.serverMetrics("spiffe://td/ns/demo/sa/web", "demo/hello", fmt.Sprintf("node-%d", i), 200, time.Millisecond)
	}
	a.serverMetrics("", "demo/hello", "node-x", 503, time.Millisecond)
	var b strings.Builder
	a.cfg.Metrics.WritePrometheus(&b)
	out := b.String()
	if got := a.srvSeries.Load(); got != maxServerSeries+1 {
		t.Fatalf("%d series, want %d and one for the others", got, maxServerSeries+1)
	}
	for _, want := range []string{
		`fogmesh_http_server_requests_total{service="demo/hello",source_service="demo/web",source_node="node-0",node="n1",code_class="2xx"} 1`,
		`fogmesh_http_server_requests_total{service="demo/hello",source_service="other",source_node="other",node="n1",code_class="2xx"} 10`,
		`fogmesh_http_server_requests_total{service="demo/hello",source_service="other",source_node="other",node="n1",code_class="5xx"} 1`,
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("missing %s", want)
		}
	}
}

// BenchmarkStatsReport: reading and encoding a full heartbeat report of
// wire.MaxStatRows rows (a stream's first), as the sender does every
// heartbeat interval; B/report is its encoded size.
func BenchmarkStatsReport(b *testing.B) {
	var tab statTable
	for i := 0; i < wire.MaxStatRows; i++ {
		r := tab.row(statKey{svc: fmt.Sprintf("shop/service-%d", i%40), node: fmt.Sprintf("edge-node-%d", i), site: "shop-17",
			src: "shop/frontend", tier: "site", path: "same_site"})
		for j := 0; j < 1000; j++ {
			r.observe(2, float64(j%200)/1000)
		}
	}
	var size int
	for b.Loop() {
		rep := tab.report(&statSender{})
		buf, err := json.Marshal(&wire.Message{Type: wire.TypeHeartbeat, Stats: rep})
		if err != nil {
			b.Fatal(err)
		}
		size = len(buf)
	}
	b.ReportMetric(float64(size), "B/report")
}

// BenchmarkStatRowObserve: what a request adds to the request path.
func BenchmarkStatRowObserve(b *testing.B) {
	var tab statTable
	r := tab.row(statKey{svc: "demo/hello", node: "n2"})
	for b.Loop() {
		r.observe(2, 0.003)
	}
}
