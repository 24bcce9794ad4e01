package control

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/meshstat"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// A peer replica's GET /v1/stats/local answer with n1's two tables, as
// local() writes it.
const peerStatsSeed = `{"replica":"b","nodes":[{"node":"n1","heardAgoMs":1200,"prevAgoMs":6200,` +
	`"prev":{"at":1700000000000,"full":true,"bounds":[0.005,0.1,1],"rows":[{"service":"shop/orders","node":"n2","site":"s2","sourceService":"shop/web","tier":"site","path":"same_site","codes":[0,0,40,0,1,2],"buckets":[10,20,12,1]}]},` +
	`"cur":{"at":1700000005000,"full":true,"bounds":[0.005,0.1,1],"rows":[{"service":"shop/orders","node":"n2","site":"s2","sourceService":"shop/web","tier":"site","path":"same_site","codes":[0,0,90,0,1,4],"buckets":[20,50,24,1]}]}}]}`

// TestPeerStatsOutOfRangeRefused: a peer replica's answer whose tables
// were heard in the future, past a bound that overflows a time.Duration,
// or previous after current, or that names no node or a node twice, is
// refused with an error. Before, a negative heardAgoMs made a peer's table
// newer than any this replica heard (it replaced the node's own tables in
// GET /v1/stats, and could never be stale) and a huge one wrapped around.
func TestPeerStatsOutOfRangeRefused(t *testing.T) {
	if _, err := decodeLocalStats(strings.NewReader(peerStatsSeed)); err != nil {
		t.Fatalf("a replica's answer refused: %v", err)
	}
	for _, c := range []struct{ from, to string }{
		{`"heardAgoMs":1200`, `"heardAgoMs":-60000`},
		{`"heardAgoMs":1200`, `"heardAgoMs":9223372036854775`},
		{`"prevAgoMs":6200`, `"prevAgoMs":100`},
		{`"prevAgoMs":6200`, `"prevAgoMs":-9223372036854775808`},
		{`"node":"n1"`, `"node":""`},
		{`"node":"n1"`, `"node":"N 1"`},
		{`}}]}`, `}},{"node":"n1","heardAgoMs":5,"cur":{}}]}`},
	} {
		in := strings.Replace(peerStatsSeed, c.from, c.to, 1)
		if _, err := decodeLocalStats(strings.NewReader(in)); err == nil {
			t.Errorf("%s: taken", c.to)
		}
	}
}

// TestPeerStatsOldPreviousDropped: a replica sends a node's previous table
// however old it is (local never prunes), so a node back after more than
// maxPeerAgoMs offline has a previous table past the bound. Its replica's
// answer is taken with that table dropped; before, it was refused whole
// and every node of that replica showed as unreported.
func TestPeerStatsOldPreviousDropped(t *testing.T) {
	var st statsState
	now := time.Now()
	rep := func() *wire.StatsReport { return &wire.StatsReport{At: now.UnixMilli(), Full: true} }
	st.note("n1", rep(), now.Add(-31*24*time.Hour)) // before the node went offline
	st.note("n1", rep(), now)                       // back
	st.note("n2", rep(), now)
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(&LocalStats{Replica: "b", Nodes: st.local(now.Add(-time.Minute), now)}); err != nil {
		t.Fatal(err)
	}
	ls, err := decodeLocalStats(&buf)
	if err != nil {
		t.Fatalf("a replica's own answer refused: %v", err)
	}
	for _, n := range ls.Nodes {
		if n.Prev != nil {
			t.Errorf("node %s: a previous table heard %d ms ago kept", n.Node, n.PrevAgoMs)
		}
	}
	if len(ls.Nodes) != 2 {
		t.Errorf("%d nodes, want 2", len(ls.Nodes))
	}
}

// FuzzDecodeLocalStats: a peer replica's tables (GET /v1/stats/local, read
// by GET /v1/stats on a shared store) are taken only as a replica sends
// them: every node a node name, every table heard between now and the
// bound, the previous one before the current one; and rates computed
// from them are finite (never a panic).
func FuzzDecodeLocalStats(f *testing.F) {
	f.Add([]byte(peerStatsSeed))
	f.Add([]byte(strings.Replace(peerStatsSeed, `"heardAgoMs":1200`, `"heardAgoMs":-60000`, 1)))
	f.Add([]byte(strings.Replace(peerStatsSeed, `"heardAgoMs":1200`, `"heardAgoMs":9223372036854775`, 1)))
	f.Add([]byte(strings.Replace(peerStatsSeed, `"bounds":[0.005,0.1,1]`, `"bounds":[1,0.1,-1]`, 1)))
	f.Add([]byte(strings.Replace(peerStatsSeed, `"at":1700000005000`, `"at":1600000000000`, 1)))
	f.Add([]byte(`{"replica":"b","nodes":[{"node":"n1","heardAgoMs":0,"cur":{"rows":[{"service":"a/b","node":"n","codes":[1,2,3,4,5,6,7]}]}}]}`))
	f.Add([]byte(`{"replica":"b","nodes":[{"node":"n1","heardAgoMs":1,"cur":{}},{"node":"n1","heardAgoMs":0,"cur":{}}]}`))
	f.Add([]byte(`{"replica":"b","nodes":null}`))
	f.Add([]byte(`{"replica":"b","nodes":[{}]}`))
	f.Add([]byte(`[`))
	now := time.Now()
	f.Fuzz(func(t *testing.T, b []byte) {
		ls, err := decodeLocalStats(bytes.NewReader(b))
		if err != nil {
			return
		}
		st := mergePeerStats([]*LocalStats{ls}, now)
		for node, ns := range st.nodes {
			if !api.ValidName(node) {
				t.Fatalf("node %q taken", node)
			}
			if ns.cur.heard.After(now) || ns.cur.heard.Before(now.Add(-time.Duration(maxPeerAgoMs)*time.Millisecond)) {
				t.Fatalf("node %s: heard at %s, now %s", node, ns.cur.heard, now)
			}
			if ns.prev != nil && ns.prev.heard.After(ns.cur.heard) {
				t.Fatalf("node %s: previous table heard after the current one", node)
			}
		}
		prev, cur, _ := st.scrapes(now.Add(-time.Duration(maxPeerAgoMs)*time.Millisecond), nil)
		svcs, edges := meshstat.Compute(prev, cur)
		for _, r := range append(svcs, edges...) {
			for _, v := range []float64{r.Requests, r.RPS, r.Window} {
				if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
					t.Fatalf("row %+v: %v", r.Key, v)
				}
			}
		}
	})
}
