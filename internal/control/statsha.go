package control

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Golden counters across replicas (HA): an agent heartbeats to the replica
// it streams to, so each replica holds the tables of its own agents only.
// GET /v1/stats on any replica asks the other live replicas for theirs
// (GET /v1/stats/local, their admin API, at the URL each publishes under
// live/NAME/admin) and computes rates over all of them: the operator's
// `stat`, `top` and web UI see every node through whichever replica a
// load balancer picks. Nothing more is stored in the shared store than
// the URL.
//
// In secure mode a replica calls its peers with its own serving
// certificate (the control plane's identity, issued by this control
// plane's CA: not by a region's intermediate), which the admin API admits
// for GET /v1/stats/local only (RoleReplica), and checks that the peer
// presents the same identity.

// RoleReplica is a peer replica's role on the admin API: GET
// /v1/stats/local only.
const RoleReplica = "replica"

// statsPeerTimeout bounds a peer's answer; a slower peer's nodes show as
// unreported.
const statsPeerTimeout = 2 * time.Second

// LocalStats is the body of GET /v1/stats/local: this replica's tables.
type LocalStats struct {
	Replica string           `json:"replica"`
	Nodes   []LocalNodeStats `json:"nodes"`
}

// LocalNodeStats is one node's last two tables as full reports.
type LocalNodeStats struct {
	Node string `json:"node"`
	// HeardAgoMs is how long ago the replica heard the last report (its
	// clock: the asker's "heard" is its now minus this).
	HeardAgoMs int64             `json:"heardAgoMs"`
	PrevAgoMs  int64             `json:"prevAgoMs,omitempty"`
	Prev       *wire.StatsReport `json:"prev,omitempty"`
	Cur        wire.StatsReport  `json:"cur"`
}

// adminURL is where peer replicas reach this one's admin API: the bound
// address, or with a wildcard host the first -server-name ("" if none).
func (s *Server) adminURL() string {
	scheme := "https"
	if s.sec == nil {
		scheme = "http"
	}
	host, port, err := net.SplitHostPort(s.AdminAddr())
	if err != nil {
		return ""
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		if len(s.cfg.ServerNames) == 0 {
			return ""
		}
		host = s.cfg.ServerNames[0]
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// local returns the tables of the nodes heard since fresh.
func (st *statsState) local(fresh, now time.Time) []LocalNodeStats {
	st.mu.Lock()
	type pair struct{ prev, cur *statTable }
	live := map[string]pair{}
	for node, ns := range st.nodes {
		if ns.cur != nil && !ns.cur.heard.Before(fresh) {
			live[node] = pair{ns.prev, ns.cur}
		}
	}
	st.mu.Unlock()
	out := make([]LocalNodeStats, 0, len(live))
	for _, node := range slices.Sorted(maps.Keys(live)) {
		p := live[node]
		n := LocalNodeStats{Node: node, HeardAgoMs: now.Sub(p.cur.heard).Milliseconds(), Cur: p.cur.since(nil)}
		if p.prev != nil {
			r := p.prev.since(nil)
			n.Prev, n.PrevAgoMs = &r, now.Sub(p.prev.heard).Milliseconds()
		}
		out = append(out, n)
	}
	return out
}

// peerStats asks the other live replicas for their tables and returns them
// in a statsState of their own (nil without peers), and why a peer did not
// answer (replica → error).
func (s *Server) peerStats(ctx context.Context) (*statsState, map[string]string) {
	s.ha.mu.Lock()
	peers := maps.Clone(s.ha.peers)
	s.ha.mu.Unlock()
	if len(peers) == 0 {
		return nil, nil
	}
	client := s.peerClient()
	type answer struct {
		replica string
		body    *LocalStats
		err     error
	}
	answers := make(chan answer, len(peers))
	var wg sync.WaitGroup
	for replica, url := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, err := fetchLocalStats(ctx, client, url)
			answers <- answer{replica, body, err}
		}()
	}
	wg.Wait()
	close(answers)
	failed := map[string]string{}
	var bodies []*LocalStats
	for a := range answers {
		switch {
		case a.err != nil:
			failed[a.replica] = a.err.Error()
		case a.body.Replica != a.replica:
			// Its published address reached another replica (a default
			// loopback -admin-addr on every host, or a shared name).
			failed[a.replica] = fmt.Sprintf("its admin address %s answered as replica %q: give each replica an -admin-addr (or first -server-name) that reaches it alone", peers[a.replica], a.body.Replica)
		default:
			bodies = append(bodies, a.body)
		}
	}
	return mergePeerStats(bodies, time.Now()), failed
}

// mergePeerStats puts the peers' tables in a statsState of their own, as
// heard by now. A node in several answers (its agent moved between
// replicas) keeps the one heard last: both tables from one replica.
func mergePeerStats(bodies []*LocalStats, now time.Time) *statsState {
	best := map[string]*LocalNodeStats{}
	for _, body := range bodies {
		for i := range body.Nodes {
			n := &body.Nodes[i]
			if b := best[n.Node]; b == nil || n.HeardAgoMs < b.HeardAgoMs {
				best[n.Node] = n
			}
		}
	}
	var st statsState
	for node, n := range best {
		if n.Prev != nil {
			st.note(node, syncproto.ValidStats(n.Prev), now.Add(-time.Duration(n.PrevAgoMs)*time.Millisecond))
		}
		st.note(node, syncproto.ValidStats(&n.Cur), now.Add(-time.Duration(n.HeardAgoMs)*time.Millisecond))
	}
	return &st
}

// peerClient calls peer replicas: in secure mode with this control plane's
// serving certificate, checking the peer's.
func (s *Server) peerClient() *http.Client {
	tr := &http.Transport{DisableKeepAlives: true, ResponseHeaderTimeout: statsPeerTimeout}
	if s.sec != nil {
		// A peer presents the control plane's identity from this control
		// plane's CA, not from another region's intermediate (as the
		// admin API checks a caller: adminIssuer).
		want := identity.ControlID(s.sec.ca.TrustDomain())
		tr.TLSClientConfig = s.sec.src.ClientConfig(func(id spiffeid.ID, chains [][]*x509.Certificate) error {
			if id != want {
				return fmt.Errorf("%s is not a replica of this control plane", id)
			}
			for _, ch := range chains {
				if err := s.sec.adminIssuer(id, ch); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return &http.Client{Transport: tr, Timeout: statsPeerTimeout}
}

func fetchLocalStats(ctx context.Context, c *http.Client, base string) (*LocalStats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/stats/local", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("%s: %s", resp.Status, b)
	}
	// A replica holds at most 2 tables of wire.MaxStatRows rows per node;
	// the bound is generous but finite.
	return decodeLocalStats(io.LimitReader(resp.Body, 256<<20))
}

// maxPeerAgoMs bounds how long ago a peer replica may say it heard a
// table: far more than a replica keeps one (statsForget past the node
// timeout), far less than would overflow a time.Duration.
const maxPeerAgoMs = int64(30 * 24 * time.Hour / time.Millisecond)

// decodeLocalStats reads a peer replica's GET /v1/stats/local answer. One
// whose node entries are not what a replica sends (a name that is not a
// node's, a node twice, a table heard in the future or past
// maxPeerAgoMs, a previous table heard after the current one) is refused
// whole: the peer's nodes show as unreported, with why.
func decodeLocalStats(r io.Reader) (*LocalStats, error) {
	var ls LocalStats
	if err := json.NewDecoder(r).Decode(&ls); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	seen := make(map[string]bool, len(ls.Nodes))
	for i, n := range ls.Nodes {
		switch {
		case !api.ValidName(n.Node):
			return nil, fmt.Errorf("decode: nodes[%d]: %q is not a node name", i, n.Node)
		case seen[n.Node]:
			return nil, fmt.Errorf("decode: nodes[%d]: node %s twice", i, n.Node)
		case n.HeardAgoMs < 0 || n.HeardAgoMs > maxPeerAgoMs:
			return nil, fmt.Errorf("decode: nodes[%d]: heard %d ms ago (0 to %d)", i, n.HeardAgoMs, maxPeerAgoMs)
		case n.Prev != nil && n.PrevAgoMs < n.HeardAgoMs:
			return nil, fmt.Errorf("decode: nodes[%d]: previous table heard %d ms ago, the current one %d ms ago", i, n.PrevAgoMs, n.HeardAgoMs)
		case n.Prev != nil && n.PrevAgoMs > maxPeerAgoMs:
			// A node back after a month offline: its replica keeps the
			// previous table however old (local never prunes). No rate
			// comes from so long a span: the current table alone.
			ls.Nodes[i].Prev, ls.Nodes[i].PrevAgoMs = nil, 0
		}
		seen[n.Node] = true
	}
	return &ls, nil
}

// statsView is what GET /v1/stats and the web UI compute rates from: this
// replica's tables and, on a shared store, the other live replicas' (a
// node in both, its agent having moved, keeps the tables heard last), and
// why a peer did not answer (replica → error).
func (s *Server) statsView(ctx context.Context) (*statsState, map[string]string) {
	if !s.st.Shared() {
		return &s.stats, nil
	}
	// scrapes forgets stale nodes of the state it reads: the view is a
	// copy, so this replica's own state is pruned here.
	s.stats.forget(time.Now().Add(-s.cfg.NodeTimeout - statsForget))
	peers, failed := s.peerStats(ctx)
	if peers == nil {
		return &s.stats, failed
	}
	// Tables are never changed once made: the view shares them, but not
	// the nodeStats that note() updates.
	view := &statsState{nodes: map[string]*nodeStats{}}
	s.stats.mu.Lock()
	for node, ns := range s.stats.nodes {
		view.nodes[node] = &nodeStats{prev: ns.prev, cur: ns.cur}
	}
	s.stats.mu.Unlock()
	for node, ns := range peers.nodes {
		if mine := view.nodes[node]; mine == nil || mine.cur == nil || ns.cur.heard.After(mine.cur.heard) {
			view.nodes[node] = ns
		}
	}
	return view, failed
}

// forget drops the tables of nodes not heard since before.
func (st *statsState) forget(before time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for node, ns := range st.nodes {
		if ns.cur == nil || ns.cur.heard.Before(before) {
			delete(st.nodes, node)
		}
	}
}
