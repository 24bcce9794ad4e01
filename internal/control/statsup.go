package control

import (
	"slices"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Golden counters up a region link: a regional control plane passes its
// nodes' heartbeat counters (stats.go) to the global one on the link's
// heartbeats, so the global one's GET /v1/stats, `fogmesh stat`/`top` and
// web UI show every region's rates from one place. A node's first report
// on a link is full; later ones carry the rows that changed since the
// table last sent, and only nodes whose agents reported since. The
// reports keep the agents' clocks (StatsReport.At), so the global one's
// rates are measured as the region's are.

// sentStats is what a region link sent of a node: the table, and when it
// last sent the node's report full.
type sentStats struct {
	t      *statTable
	fullAt time.Time
}

// statsFullEvery is how often a region link sends a node's report full
// although rows are unchanged: the global plane forgets a node silent for
// a while (statsForget), after which only a full report restores rows
// that did not change.
const statsFullEvery = time.Minute

// upReports returns the reports of the nodes whose tables changed since
// sent (node → what was last sent on this link; updated), with at most
// maxRows rows in all: nodes left out, those sent longest ago first, go
// next time.
func (st *statsState) upReports(sent map[string]*sentStats, maxRows int, now time.Time) []wire.NodeStatsReport {
	type change struct {
		node string
		old  *sentStats
		cur  *statTable
	}
	var changed []change
	st.mu.Lock()
	for node, ns := range st.nodes {
		if old := sent[node]; ns.cur != nil && (old == nil || ns.cur != old.t) {
			changed = append(changed, change{node, old, ns.cur})
		}
	}
	for node := range sent {
		if st.nodes[node] == nil {
			delete(sent, node) // forgotten here (statsForget)
		}
	}
	st.mu.Unlock()
	// Never sent first, then the longest ago.
	slices.SortFunc(changed, func(a, b change) int {
		switch {
		case a.old == nil && b.old == nil:
			return 0
		case a.old == nil:
			return -1
		case b.old == nil:
			return 1
		}
		return a.old.t.heard.Compare(b.old.t.heard)
	})
	var out []wire.NodeStatsReport
	rows := 0
	for _, c := range changed {
		var base *statTable
		fullAt := now
		if c.old != nil && now.Sub(c.old.fullAt) < statsFullEvery {
			base, fullAt = c.old.t, c.old.fullAt
		}
		rep := c.cur.since(base)
		if rows > 0 && rows+len(rep.Rows) > maxRows {
			continue
		}
		rows += len(rep.Rows)
		if rep.Full {
			fullAt = now
		}
		sent[c.node] = &sentStats{t: c.cur, fullAt: fullAt}
		out = append(out, wire.NodeStatsReport{Node: c.node, Report: rep})
	}
	return out
}

// since is t as a report after old (nil: a full one): the rows that
// differ. A row of old that t lacks (the agent restarted) makes it full.
func (t *statTable) since(old *statTable) wire.StatsReport {
	rep := wire.StatsReport{At: t.at.UnixMilli(), Full: old == nil, Dropped: t.dropped, DroppedRequests: t.droppedReqs}
	if old != nil {
		for k := range old.rows {
			if _, ok := t.rows[k]; !ok {
				rep.Full = true
				break
			}
		}
	}
	for k, e := range t.rows {
		if !rep.Full {
			if o, ok := old.rows[k]; ok && o.row.Codes == e.row.Codes && slices.Equal(o.row.Buckets, e.row.Buckets) && slices.Equal(o.bounds, e.bounds) {
				continue
			}
		}
		if rep.Bounds == nil && len(e.bounds) > 0 {
			rep.Bounds = e.bounds
		}
		if len(e.row.Buckets) > 0 && !slices.Equal(e.bounds, rep.Bounds) {
			continue // another bucket layout than the report's (not seen from one agent)
		}
		rep.Rows = append(rep.Rows, e.row)
	}
	return rep
}

// takeRegionStats takes the node reports of a region link's heartbeat:
// only of nodes the region owns, and at most wire.MaxNodeStatRows rows in
// all; each is checked as an agent's (syncproto.ValidStats: bad rows are
// dropped and counted). It returns how many reports it refused.
func (s *Server) takeRegionStats(region string, reps []wire.NodeStatsReport) int {
	if len(reps) == 0 {
		return 0
	}
	objs, _, err := s.reg.list(api.KindNode)
	if err != nil {
		s.log.Warn("control: region stats dropped: cannot list nodes", "region", region, "err", err)
		return len(reps)
	}
	owned := map[string]bool{}
	for _, o := range objs {
		if m := o.GetMeta(); m.Owner == region {
			owned[m.Name] = true
		}
	}
	refused, rows := 0, 0
	now := time.Now()
	for i := range reps {
		r := &reps[i]
		rows += len(r.Report.Rows)
		if !owned[r.Node] || rows > wire.MaxNodeStatRows || !s.stats.note(r.Node, syncproto.ValidStats(&r.Report), now) {
			refused++
		}
	}
	return refused
}
