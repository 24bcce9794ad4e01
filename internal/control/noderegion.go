package control

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/store"
)

// A node's region decides what a global control plane shows it of other
// regions (agentGate, regionRule): their services and endpoints not
// exported to it stay out. Its site is bound by its certificate
// (spiffe://TD/site/SITE/node/NAME); its region is bound here, per node,
// when it joins: the join token's region if the operator gave one
// (`fogmesh token create -site S -region R`), else the region its join
// declared. The binding is in the store's secure bucket, so it survives a
// restart and the node's record being deleted (a stale node's, say). A
// hello naming another region is refused; a node moves region by joining
// again. Cluster labels that name a region place the node there, as
// before (topology): the control plane trusts its cluster source for the
// registry. Insecure mode has no identities, so nothing to bind to.

// keyNodeRegion + node name: nodeRegionRecord (secure bucket).
const keyNodeRegion = "node-region/"

// nodeRegionRecord is a node's bound region.
type nodeRegionRecord struct {
	Region string    `json:"region"`
	By     string    `json:"by"` // "join token ID", "registered region", "first hello"
	At     time.Time `json:"at"`
}

// nodeRegions counts and logs (once per node and claim) refused hellos.
type nodeRegions struct {
	mRefused *metrics.Counter

	mu      sync.Mutex        // guards the following
	refused map[string]string // node → the claim last logged
}

// checkNodeRegion refuses the hello of node naming region claimed when
// the node is bound to another region. A node without a binding (it
// joined before bindings were kept, or at another control plane) is bound
// now, to the region of its stored record if it has one, else to the one
// it names. An unreadable binding refuses.
func (s *Server) checkNodeRegion(node, claimed string) error {
	b, err := s.st.GetSecure(keyNodeRegion + node)
	if err != nil {
		return fmt.Errorf("node %s: region binding: %w", node, err)
	}
	var rec nodeRegionRecord
	if b == nil {
		rec = s.bindFirstRegion(node, claimed)
	} else if json.Unmarshal(b, &rec) != nil || rec.Region == "" {
		return fmt.Errorf("node %s: region binding unreadable; join again with a token (fogmesh token create -site SITE -region REGION)", node)
	}
	r := &s.regions
	r.mu.Lock()
	defer r.mu.Unlock()
	if rec.Region == claimed {
		delete(r.refused, node)
		return nil
	}
	r.mRefused.Inc()
	if r.refused[node] != claimed {
		if r.refused == nil {
			r.refused = map[string]string{}
		}
		r.refused[node] = claimed
		s.log.Warn("control: node's hello names another region than the one it is bound to; refused",
			"node", node, "hello", claimed, "bound", rec.Region, "by", rec.By)
	}
	return fmt.Errorf("node %s is in region %s, its hello names region %s: run its agent with -region %s, "+
		"or move it by joining again with a token of the new region (fogmesh token create -site SITE -region %s; remove the agent's node-cert.pem first)",
		node, rec.Region, claimed, rec.Region, claimed)
}

// bindFirstRegion records the region of a node that has no binding and
// returns it. A store that cannot write leaves it unrecorded (logged):
// the node is served with the region found, as its registration is
// (openStream).
func (s *Server) bindFirstRegion(node, claimed string) nodeRegionRecord {
	rec := nodeRegionRecord{Region: claimed, By: "first hello", At: time.Now().UTC()}
	if kv, ok, err := s.st.Get(api.KindNode + "/" + node); err == nil && ok {
		var n api.Node
		if json.Unmarshal(kv.Value, &n) == nil && n.Spec.Region != "" {
			rec.Region, rec.By = n.Spec.Region, "registered region"
		}
	}
	wrote := false
	err := s.st.UpdateSecure(func(tx *store.SecureTx) error {
		wrote = false
		if b := tx.Get(keyNodeRegion + node); b != nil { // a join meanwhile
			var had nodeRegionRecord
			if json.Unmarshal(b, &had) == nil && had.Region != "" {
				rec = had
			}
			return nil
		}
		b, _ := json.Marshal(rec)
		wrote = true
		return tx.Put(keyNodeRegion+node, b)
	})
	if err != nil {
		s.log.Warn("control: node's region not recorded", "node", node, "region", rec.Region, "err", err)
	} else if wrote {
		s.log.Info("control: node bound to a region", "node", node, "region", rec.Region, "by", rec.By)
	}
	return rec
}

// bindJoinRegionLocked records region as node's, joined with the token
// tokID, in a join's transaction, and returns the region it had if it
// moves ("" if not).
func bindJoinRegionLocked(tx *store.SecureTx, node, region, tokID string, now time.Time) (from string, err error) {
	var had nodeRegionRecord
	if b := tx.Get(keyNodeRegion + node); b != nil && json.Unmarshal(b, &had) == nil && had.Region != region {
		from = had.Region
	}
	b, _ := json.Marshal(nodeRegionRecord{Region: region, By: "join token " + tokID, At: now.UTC()})
	return from, tx.Put(keyNodeRegion+node, b)
}

// regionMoved audits and logs a node's move to another region by a join.
func (s *Server) regionMoved(node, from, to string) {
	s.Audit(audit.Record{Kind: audit.KindAdmin, Action: "node moved region", Actor: "control", Object: node,
		Reason: fmt.Sprintf("joined again: from region %s to %s", from, to)})
	s.log.Warn("control: node joined again in another region", "node", node, "from", from, "to", to)
}
