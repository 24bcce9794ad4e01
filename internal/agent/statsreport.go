package agent

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/wire"
)

// The golden request counters an agent sends in its heartbeats (wire
// StatsReport), so a control plane that cannot reach the agent's admin API
// (loopback by default, behind NAT at an edge site) still shows its rates.
// Each row sums the client side's request series (l7metrics.go) of one
// destination service, destination node, source service, tier and path
// kind over routes and endpoints: fewer rows than series, and the same
// numbers meshstat reads from /metrics.

// statKey names a row.
type statKey struct{ svc, node, site, src, tier, path string }

// statRow is one row's counters; a request adds to one code class and one
// latency bucket (latencyBuckets, the last one above them all).
type statRow struct {
	key     statKey
	codes   [6]atomic.Uint64
	buckets []atomic.Uint64 // len(latencyBuckets)+1
}

func (r *statRow) observe(class int, secs float64) {
	r.codes[class].Add(1)
	i, _ := slices.BinarySearch(latencyBuckets, secs) // the first bound ≥ secs: Prometheus le
	r.buckets[i].Add(1)
}

// maxDroppedKeys bounds the set that counts distinct untracked rows.
const maxDroppedKeys = 4096

// statTable holds the rows, at most wire.MaxStatRows: the first ones seen
// stay (a row that came and went between reports would look like a reset
// counter to the control plane), later ones are counted as dropped.
type statTable struct {
	mu          sync.Mutex
	rows        map[statKey]*statRow
	order       []*statRow
	droppedKeys map[statKey]struct{}
	droppedReqs atomic.Uint64 // requests of untracked rows
}

// row returns the row of k, nil when the table is full. Called once per
// request series (endpointMetrics caches it), not per request.
func (t *statTable) row(k statKey) *statRow {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r := t.rows[k]; r != nil {
		return r
	}
	if len(t.order) >= wire.MaxStatRows {
		if t.droppedKeys == nil {
			t.droppedKeys = map[statKey]struct{}{}
		}
		if len(t.droppedKeys) < maxDroppedKeys {
			t.droppedKeys[k] = struct{}{}
		}
		return nil
	}
	if t.rows == nil {
		t.rows = map[statKey]*statRow{}
	}
	r := &statRow{key: k, buckets: make([]atomic.Uint64, len(latencyBuckets)+1)}
	t.rows[k] = r
	t.order = append(t.order, r)
	return r
}

// statSender is one sync stream's view of what it reported: a row's total
// (requests plus bucket counts) when last sent.
type statSender struct {
	sent map[*statRow]uint64
}

// report reads the counters: every row on a stream's first report, then
// only those that changed since the stream's last one (the control plane
// keeps the others' values). It always returns a report: its time moves
// the control plane's window on even when nothing changed.
func (t *statTable) report(s *statSender) *wire.StatsReport {
	full := s.sent == nil
	if full {
		s.sent = map[*statRow]uint64{}
	}
	t.mu.Lock()
	rows := slices.Clone(t.order)
	dropped := uint64(len(t.droppedKeys))
	t.mu.Unlock()
	rep := &wire.StatsReport{At: time.Now().UnixMilli(), Full: full, Dropped: dropped, DroppedRequests: t.droppedReqs.Load()}
	for _, r := range rows {
		row := wire.StatRow{Service: r.key.svc, Node: r.key.node, Site: r.key.site, SourceService: r.key.src,
			Tier: r.key.tier, Path: r.key.path, Buckets: make([]uint64, len(r.buckets))}
		var total uint64
		for i := range r.codes {
			row.Codes[i] = r.codes[i].Load()
			total += row.Codes[i]
		}
		for i := range r.buckets {
			row.Buckets[i] = r.buckets[i].Load()
			total += row.Buckets[i]
		}
		if !full && s.sent[r] == total {
			continue
		}
		s.sent[r] = total
		rep.Rows = append(rep.Rows, row)
	}
	if len(rep.Rows) > 0 {
		rep.Bounds = latencyBuckets
	}
	return rep
}
