package control

import (
	"context"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/meshstat"
	"github.com/fogmesh/fogmesh/internal/promtext"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Golden request counters from the agents' heartbeats (wire.StatsReport):
// the control plane keeps the last two reports of each node in memory and
// hands them to meshstat as two scrapes, so rates of agents whose admin
// API it cannot reach (loopback by default, behind NAT at an edge site)
// show in GET /v1/stats, `fogmesh stat`/`top` and the web UI.
//
//	GET /v1/stats   {services, edges, nodes, unreported, dropped}
//
// Nothing is stored: after a restart rates show from each node's second
// heartbeat on.

// statTable is one node's counters at a moment: rows by key, as the last
// report left them (a partial report changes only the rows it carries).
type statTable struct {
	at    time.Time // the agent's clock (falls back to ours)
	heard time.Time // our clock
	rows  map[statRowKey]statEntry
	// dropped and droppedReqs: what the agent does not report.
	dropped, droppedReqs uint64
}

type statRowKey struct{ svc, node, site, src, tier, path string }

type statEntry struct {
	row    wire.StatRow
	bounds []float64 // of row.Buckets
}

// statsForget is how long after a node's stale point (scrapes' fresh)
// its tables are dropped.
const statsForget = 10 * time.Minute

// nodeStats is a node's last two tables.
type nodeStats struct{ prev, cur *statTable }

// statsState is the Server's stats part. The zero value works.
type statsState struct {
	mu    sync.Mutex
	nodes map[string]*nodeStats
}

// note takes a node's report, received now. A report over the bounds of
// wire.StatsReport is ignored (false).
func (st *statsState) note(node string, rep *wire.StatsReport, now time.Time) bool {
	if len(rep.Rows) > wire.MaxStatRows || len(rep.Bounds) > wire.MaxStatBounds {
		return false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.nodes == nil {
		st.nodes = map[string]*nodeStats{}
	}
	ns := st.nodes[node]
	if ns == nil {
		ns = &nodeStats{}
		st.nodes[node] = ns
	}
	t := &statTable{heard: now, dropped: rep.Dropped, droppedReqs: rep.DroppedRequests}
	old := ns.cur
	switch {
	case old != nil && !rep.Full && len(rep.Rows) == 0:
		t.rows = old.rows // tables are never changed once made: share it
	case old != nil && !rep.Full:
		t.rows = maps.Clone(old.rows)
	default:
		t.rows = make(map[statRowKey]statEntry, len(rep.Rows))
	}
	for _, r := range rep.Rows {
		k := statRowKey{r.Service, r.Node, r.Site, r.SourceService, r.Tier, r.Path}
		if len(t.rows) >= wire.MaxStatRows && t.rows[k].row.Service == "" {
			continue // a partial report cannot grow a node past the bound either
		}
		t.rows[k] = statEntry{row: r, bounds: rep.Bounds}
	}
	// The window is measured on the agent's clock, which a skew to ours
	// does not change; ours when it does not move forward (a clock step).
	t.at = time.UnixMilli(rep.At)
	if rep.At <= 0 || (old != nil && !t.at.After(old.at)) || (old != nil && t.at.Sub(old.at) > 10*now.Sub(old.heard)+time.Minute) {
		t.at = now
		if old != nil {
			t.at = old.at.Add(now.Sub(old.heard))
		}
	}
	ns.prev, ns.cur = old, t
	return true
}

// scrapes returns the two last tables of every node heard since fresh as
// meshstat scrapes (a node with one table is in cur only: no rate yet),
// with the nodes' sites (sites: node → site) as the source site, and what
// the nodes reported as dropped.
func (st *statsState) scrapes(fresh time.Time, sites map[string]string) (prev, cur map[string]meshstat.Scrape, dropped map[string]uint64) {
	prev, cur, dropped = map[string]meshstat.Scrape{}, map[string]meshstat.Scrape{}, map[string]uint64{}
	// Take the tables under the lock (they are never changed once made)
	// and render them outside it: every heartbeat waits on st.mu. A node
	// not heard for statsForget is forgotten, so churn does not grow the
	// map.
	type pair struct{ prev, cur *statTable }
	live := map[string]pair{}
	st.mu.Lock()
	for node, ns := range st.nodes {
		if ns.cur == nil || ns.cur.heard.Before(fresh.Add(-statsForget)) {
			delete(st.nodes, node)
			continue
		}
		if !ns.cur.heard.Before(fresh) {
			live[node] = pair{ns.prev, ns.cur}
		}
	}
	st.mu.Unlock()
	for node, p := range live {
		cur[node] = p.cur.scrape(node, sites[node])
		if p.prev != nil {
			prev[node] = p.prev.scrape(node, sites[node])
		}
		if p.cur.dropped > 0 {
			dropped[node] = p.cur.dropped
		}
	}
	return prev, cur, dropped
}

var codeClasses = [6]string{"error", "1xx", "2xx", "3xx", "4xx", "5xx"}

// scrape renders the table as the samples an agent's /metrics has for
// the same requests (the client side's series), for meshstat.Compute.
func (t *statTable) scrape(node, site string) meshstat.Scrape {
	sc := meshstat.Scrape{At: t.at, Samples: make([]promtext.Sample, 0, len(t.rows)*8)}
	for _, e := range t.rows {
		r := e.row
		base := map[string]string{"service": r.Service, "node": r.Node, "site": r.Site, "tier": r.Tier, "path": r.Path,
			"source_service": r.SourceService, "source_node": node, "source_site": site}
		for c, n := range r.Codes {
			if n == 0 {
				continue
			}
			l := maps.Clone(base)
			l["code_class"] = codeClasses[c]
			sc.Samples = append(sc.Samples, promtext.Sample{Name: meshstat.RequestsMetric, Labels: l, Value: float64(n)})
		}
		if len(r.Buckets) != len(e.bounds)+1 {
			continue
		}
		var cum uint64
		for i, n := range r.Buckets {
			cum += n
			le := "+Inf"
			if i < len(e.bounds) {
				le = strconv.FormatFloat(e.bounds[i], 'g', -1, 64)
			}
			l := maps.Clone(base)
			l["le"] = le
			sc.Samples = append(sc.Samples, promtext.Sample{Name: meshstat.DurationMetric + "_bucket", Labels: l, Value: float64(cum)})
		}
	}
	return sc
}

// StatsResponse is the body of GET /v1/stats.
type StatsResponse struct {
	Time     time.Time      `json:"time"`
	Services []meshstat.Row `json:"services"`
	Edges    []meshstat.Row `json:"edges"`
	// Nodes are the nodes whose heartbeats carried counters lately.
	Nodes []string `json:"nodes"`
	// Unreported are ready nodes whose heartbeats carry none: an agent
	// older than this control plane, or one not connected to this
	// replica (node → why).
	Unreported map[string]string `json:"unreported,omitempty"`
	// Dropped is the rows a node does not report (past wire.MaxStatRows).
	Dropped map[string]uint64 `json:"dropped,omitempty"`
	// ReplicaErrors are the other replicas (shared store) whose counters
	// could not be read (replica → why): their agents are unreported.
	ReplicaErrors map[string]string `json:"replicaErrors,omitempty"`
}

// heartbeatStats computes rates from the agents' heartbeats (on a shared
// store, those of every live replica: statsha.go).
func (s *Server) heartbeatStats(ctx context.Context) (*StatsResponse, error) {
	objs, _, err := s.reg.list(api.KindNode)
	if err != nil {
		return nil, err
	}
	sites := map[string]string{}
	for _, o := range objs {
		n := o.(*api.Node)
		sites[n.Meta.Name] = n.Spec.Site
	}
	view, peerErrs := s.statsView(ctx)
	prev, cur, dropped := view.scrapes(time.Now().Add(-s.cfg.NodeTimeout), sites)
	svcs, edges := meshstat.Compute(prev, cur)
	out := &StatsResponse{Time: time.Now().UTC(), Services: meshstat.Clean(svcs), Edges: meshstat.Clean(edges),
		Nodes: sortedKeys(cur), Dropped: dropped}
	if len(peerErrs) > 0 {
		out.ReplicaErrors = peerErrs
	}
	for _, o := range objs {
		n := o.(*api.Node)
		if _, ok := cur[n.Meta.Name]; ok || !n.Status.Ready {
			continue
		}
		if out.Unreported == nil {
			out.Unreported = map[string]string{}
		}
		why := "no request counters in its heartbeats (an agent older than this control plane)"
		if len(peerErrs) > 0 {
			why = "no request counters in its heartbeats (an agent older than this control plane, or connected to a replica that did not answer: see replicaErrors)"
		}
		out.Unreported[n.Meta.Name] = why
	}
	return out, nil
}

func (s *Server) statsRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/stats/local", func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		writeJSON(w, http.StatusOK, &LocalStats{Replica: s.cfg.Name, Nodes: s.stats.local(now.Add(-s.cfg.NodeTimeout), now)})
	})
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		st, err := s.heartbeatStats(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
}
