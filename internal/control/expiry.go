package control

import (
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Expiry of stale nodes (issue 13). The control plane cannot tell a node
// that died from one that lost only its link to the control plane while
// its peers still reach it; withdrawing the second one's endpoints from
// every agent would break traffic that works. So the control plane does
// not decide the data plane alone. The rule, run by the leader only:
//
//  1. A node silent for NodeTimeout (no heartbeat on any replica) is
//     marked Unreachable (Status.Unreachable, UnreachableSince: its last
//     sign of life). Ready stays true, and agents keep its endpoints: their
//     own checks decide per connection (a failed connect fails over to the
//     next endpoint, outlier detection ejects it, and the gossip of its
//     site declares a dead node within about a second).
//  2. It is marked not ready, its endpoints withdrawn from every agent,
//     once it has been silent for NodeTimeout + NodeExpiry and no peer has
//     witnessed it within NodeTimeout. A peer witnesses a node when its
//     heartbeat's report of its path to that node shows bytes received
//     since its previous heartbeat: a node cut off from the control plane
//     that keeps serving its peers stays routable for as long as it does.
//     Its certificates bound that (docs/regions.md: the autonomy window),
//     and revocation still reaches the peers through the control plane.
//  3. Its next heartbeat clears Unreachable and makes it ready again.
//
// NodeExpiry is the bound on how long an idle or dead node's endpoints
// stay listed; agents pay for a dead one only with failed connects, which
// they fail over and eject.

// expiryAction is what the leader does with a node it owns.
type expiryAction int

const (
	expiryKeep expiryAction = iota
	expiryUnreachable
	expiryNotReady
)

// expiryVerdict applies the rule above to a node with status st, silent
// for silent, last witnessed by a peer witnessed ago (a large value if
// never).
func expiryVerdict(st api.NodeStatus, silent, witnessed, timeout, expiry time.Duration) expiryAction {
	switch {
	case !st.Ready || silent <= timeout:
		return expiryKeep // a heartbeat makes it ready and reachable again
	case silent > timeout+expiry && witnessed > timeout:
		return expiryNotReady
	case !st.Unreachable:
		return expiryUnreachable
	}
	return expiryKeep
}

// noteWitnessLocked records, for each peer that a heartbeat's path
// reports (cur) show bytes received from since the reporter's previous
// heartbeat (prev), that it was alive at now. s.mu is held.
func (s *Server) noteWitnessLocked(prev, cur []wire.PathReport, now time.Time) {
	if len(prev) == 0 || len(cur) == 0 {
		return
	}
	before := func(peer string) (uint64, bool) {
		for _, p := range prev {
			if p.Peer == peer {
				return p.BytesIn, true
			}
		}
		return 0, false
	}
	if len(prev) > 8 { // most agents have a few paths: no map for them
		in := make(map[string]uint64, len(prev))
		for _, p := range prev {
			in[p.Peer] = p.BytesIn
		}
		before = func(peer string) (uint64, bool) { b, ok := in[peer]; return b, ok }
	}
	for _, p := range cur {
		if b, ok := before(p.Peer); ok && p.BytesIn > b {
			if s.witness == nil {
				s.witness = map[string]time.Time{}
			}
			s.witness[p.Peer] = now
		}
	}
}

// witnessedRecently returns the peers witnessed on this replica within
// NodeTimeout, and drops older records.
func (s *Server) witnessedRecently(now time.Time) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n, at := range s.witness {
		if now.Sub(at) > s.cfg.NodeTimeout {
			delete(s.witness, n)
			continue
		}
		out = append(out, n)
	}
	return out
}

// sinceWitnessed is how long ago node was last witnessed, here or (in
// others: from the shared store) on another replica; an hour past
// NodeExpiry if never.
func (s *Server) sinceWitnessed(node string, others map[string]time.Time, now time.Time) time.Duration {
	s.mu.Lock()
	at := s.witness[node]
	s.mu.Unlock()
	if t := others[node]; t.After(at) {
		at = t
	}
	if at.IsZero() {
		return s.cfg.NodeTimeout + s.cfg.NodeExpiry + time.Hour
	}
	return now.Sub(at)
}

// expiryMetrics are the rule's figures in /metrics, so an operator sees
// a fleet's silent nodes before any of them is withdrawn:
//
//	fogmesh_control_nodes_unreachable            nodes marked unreachable and still ready (step 1), from the store as agents see it; every replica
//	fogmesh_control_nodes_unreachable_witnessed  of those, the ones a peer reported traffic from within NodeTimeout (kept routable by step 2); the leader's last pass, 0 on other replicas
//	fogmesh_control_node_expiries_total{to="unreachable"|"not_ready"}  the leader's transitions (steps 1 and 2)
type expiryMetrics struct {
	witnessed   atomic.Int64
	unreachable *metrics.Counter
	notReady    *metrics.Counter
}

func (s *Server) initExpiryMetrics() {
	m := s.cfg.Metrics
	s.expiry.unreachable = m.NewCounter(`fogmesh_control_node_expiries_total{to="unreachable"}`)
	s.expiry.notReady = m.NewCounter(`fogmesh_control_node_expiries_total{to="not_ready"}`)
	m.NewGauge(`fogmesh_control_nodes_unreachable`, func() float64 {
		if fd := s.reg.feed(); fd != nil {
			return float64(fd.unreachableNodes())
		}
		return 0
	})
	m.NewGauge(`fogmesh_control_nodes_unreachable_witnessed`, func() float64 { return float64(s.expiry.witnessed.Load()) })
}

// expireNode applies the verdict for node n (owned here, as listed); kept
// says it is unreachable after it and still ready because a peer
// witnessed it within NodeTimeout.
func (s *Server) expireNode(n *api.Node, last time.Time, others map[string]time.Time, now time.Time) (kept bool) {
	name := n.Meta.Name
	witnessed := s.sinceWitnessed(name, others, now)
	switch expiryVerdict(n.Status, now.Sub(last), witnessed, s.cfg.NodeTimeout, s.cfg.NodeExpiry) {
	case expiryUnreachable:
		s.log.Warn("control: node missed heartbeats; marking it unreachable, its endpoints stay routable until it has been silent for node-timeout + node-expiry and no peer reports traffic from it",
			"node", name, "last", last, "expiry", s.cfg.NodeExpiry)
		if err := s.reg.setNodeStatus(name, true, true, last); err != nil {
			s.log.Error("control: mark unreachable", "node", name, "err", err)
			return false
		}
		s.expiry.unreachable.Inc()
	case expiryNotReady:
		s.log.Warn("control: node silent past node-timeout + node-expiry and witnessed by no peer, marking not ready", "node", name, "last", last)
		if err := s.reg.setNodeReady(name, false); err != nil {
			s.log.Error("control: mark not ready", "node", name, "err", err)
			return false
		}
		s.expiry.notReady.Inc()
		return false
	}
	return witnessed <= s.cfg.NodeTimeout
}
