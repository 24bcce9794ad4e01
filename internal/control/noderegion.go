package control

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
)

// A node's region decides what a global control plane shows it of other
// regions (agentGate, regionRule): their services and endpoints not
// exported to it stay out. Its site is bound by its certificate
// (spiffe://TD/site/SITE/node/NAME). Its region is the region of the
// intermediate CA that issued its certificate, where one did (a regional
// plane's node: the root put spiffe://TD/region/R in that CA, region_ca.go),
// whatever plane it connects to and whatever its hello or cluster labels
// say; else it is bound here, per node, when it joins: the join token's
// region if the operator gave one (`fogmesh token create -site S -region
// R`), else the region its join declared. The binding is in the store's
// secure bucket, so it survives a restart and the node's record being
// deleted (a stale node's, say); a regional CA's node is bound to its
// region too. A certificate the global plane renews for such a node from
// the root carries the region as a mark only the root can make
// (identity.RegionMark), so every plane reads it from the certificate as
// it reads a regional CA's (nodeIssuer), not only the plane that holds
// the binding: another region's plane refuses the node, and cluster
// labels cannot place it elsewhere. A hello naming another region is
// refused; a node moves region by joining again. Cluster labels that name
// a region place an unmarked root-issued node there, as before
// (topology): the control plane trusts its cluster source for the
// registry. Insecure mode has no identities, so nothing to bind to.

// keyNodeRegion + node name: nodeRegionRecord (secure bucket).
const keyNodeRegion = "node-region/"

// nodeRegionRecord is a node's bound region.
type nodeRegionRecord struct {
	Region string    `json:"region"`
	By     string    `json:"by"` // "join token ID", "regional CA R", "registered region", "first hello"
	At     time.Time `json:"at"`
	// Issued is when the certificate of a binding by a regional CA was
	// issued, or, for one a renewal made (checkRenewalRegion), the
	// operator's decision it replaced if that was later (zero for the
	// others: a join's certificate is issued at At).
	Issued time.Time `json:"issued,omitzero"`
}

// since returns when the certificate that made rec was issued, and
// whether rec is an operator's decision (a join with a token, or a
// certificate of a regional CA), which a certificate issued before it
// does not undo; a binding by the node's own claim (its first hello, its
// registered region) is not.
func (rec nodeRegionRecord) since() (time.Time, bool) {
	switch {
	case !rec.Issued.IsZero():
		return rec.Issued, true
	case strings.HasPrefix(rec.By, "join token "), strings.HasPrefix(rec.By, "regional CA "):
		return rec.At, true
	}
	return time.Time{}, false
}

// staleFor reports whether a certificate issued at issued, from another
// region's CA, predates rec, an operator's decision. Certificates carry
// whole seconds, so the comparison is in whole seconds: a certificate
// issued in the same second is not stale.
func (rec nodeRegionRecord) staleFor(issued time.Time) bool {
	since, ok := rec.since()
	return ok && issued.Before(since.Truncate(time.Second))
}

// nodeRegions counts and logs (once per node and claim) refused hellos.
type nodeRegions struct {
	mRefused *metrics.Counter

	mu      sync.Mutex        // guards the following
	refused map[string]string // node → the claim last logged
}

// checkNodeRegion refuses the hello of node, on connection c, naming
// region claimed when the node is in another region: the one its
// certificate names (its issuing regional CA's, or the root's mark:
// nodeIssuer), else the one it is bound to. A node whose certificate
// names none is not checked where its cluster labels place it (topology
// does). A node without a binding (it joined before bindings
// were kept, or at another control plane) is bound now: to its CA's
// region, else to the region of its stored record if it has one, else to
// the one it names. An unreadable binding refuses a node without a CA
// region.
func (s *Server) checkNodeRegion(c net.Conn, node, claimed string) error {
	issuer, marked, issued, err := s.nodeIssuer(c)
	if err != nil {
		return fmt.Errorf("node %s: %w", node, err)
	}
	origin := certOrigin(issuer, marked)
	labels := s.clusterRegion(node)
	var rec nodeRegionRecord
	switch {
	case issuer != "":
		if rec, err = s.bindIssuerRegion(node, issuer, marked, issued); err != nil {
			return s.refuseRegion(node, "CA "+issuer, rec, err)
		}
		if labels != "" && labels != issuer {
			return s.refuseRegion(node, "labels "+labels, rec, fmt.Errorf("node %s is in region %s (%s), "+
				"its cluster labels place it in region %s: correct the labels, or join it again in region %s", node, issuer, origin, labels, labels))
		}
		if labels != "" {
			claimed = labels // they place it (topology), whatever its hello names
		}
	case labels != "":
		if b, err := s.st.GetSecure(keyNodeRegion + node); err == nil && b != nil && json.Unmarshal(b, &rec) == nil {
			return s.revokedCA(node, rec)
		}
		return nil
	default:
		b, err := s.st.GetSecure(keyNodeRegion + node)
		if err != nil {
			return fmt.Errorf("node %s: region binding: %w", node, err)
		}
		if b == nil {
			rec = s.bindFirstRegion(node, claimed)
		} else if json.Unmarshal(b, &rec) != nil || rec.Region == "" {
			return fmt.Errorf("node %s: region binding unreadable; join again with a token (fogmesh token create -site SITE -region REGION)", node)
		}
		if err := s.revokedCA(node, rec); err != nil {
			return err
		}
	}
	if rec.Region == claimed {
		s.regions.mu.Lock()
		delete(s.regions.refused, node)
		s.regions.mu.Unlock()
		return nil
	}
	if issuer != "" && s.cfg.Mode == ModeRegional {
		return s.refuseRegion(node, claimed, rec, fmt.Errorf("node %s is in region %s (%s); this control plane serves region %s: "+
			"connect its agent to region %s's control plane or the global one, or move it by joining again here (remove the agent's node-cert.pem first)",
			node, issuer, origin, s.cfg.Region, issuer))
	}
	if issuer != "" {
		return s.refuseRegion(node, claimed, rec, fmt.Errorf("node %s is in region %s (%s), its hello names region %s: "+
			"run its agent with -region %s, or move it by joining again in region %s (at its control plane, or with fogmesh token create -site SITE -region %s at the global one; remove the agent's node-cert.pem first)",
			node, issuer, origin, claimed, issuer, claimed, claimed))
	}
	return s.refuseRegion(node, claimed, rec, fmt.Errorf("node %s is in region %s, its hello names region %s: run its agent with -region %s, "+
		"or move it by joining again with a token of the new region (fogmesh token create -site SITE -region %s; remove the agent's node-cert.pem first)",
		node, rec.Region, claimed, rec.Region, claimed))
}

// refuseRegion counts the refusal err of node's hello, whose claim (its
// hello's region, or its labels') is not rec's region, logs it once per
// node and claim, and returns err.
func (s *Server) refuseRegion(node, claim string, rec nodeRegionRecord, err error) error {
	r := &s.regions
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mRefused.Inc()
	if r.refused[node] != claim {
		if r.refused == nil {
			r.refused = map[string]string{}
		}
		r.refused[node] = claim
		s.log.Warn("control: node's hello or labels name another region than its own; refused",
			"node", node, "claim", claim, "region", rec.Region, "by", rec.By)
	}
	return err
}

// certOrigin says where a node's certificate names its region from
// (nodeIssuer), for refusals.
func certOrigin(region string, marked bool) string {
	if marked {
		return "its certificate, renewed from the root by the global control plane, names region " + region
	}
	return "its certificate was issued by region " + region + "'s CA"
}

// nodeIssuer returns the region the certificate of c's peer names: the
// region whose intermediate CA issued it, or (marked) the one the root
// marked in it when the global plane renewed a regional CA's node
// (identity.ChainRegion); "" for an unmarked root's certificate, or for a
// connection that is not TLS (insecure mode). The certificates the peer
// sent are verified again, as its handshake verified them (the
// connection does not keep the verified chains): the region is the one of
// the CA on the chain to a root, not of any CA certificate a peer may
// send besides.
func (s *Server) nodeIssuer(c net.Conn) (region string, marked bool, issued time.Time, err error) {
	tc, ok := c.(*tls.Conn)
	if !ok || s.sec == nil {
		return "", false, time.Time{}, nil
	}
	// Now, as the handshake did; and if that fails, at a time inside
	// every certificate's validity, the latest of their starts (the
	// handshake's time was no earlier, and each was valid then): a stream
	// outlives the certificate it was opened with, and its renewals come
	// after that expired (a node renews twice in a lifetime). Not that
	// time first: the bundle's root is checked at it too, and a root
	// issued again after the node's certificate (same key, new validity)
	// would refuse every older node.
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return "", false, time.Time{}, errors.New("certificate: none")
	}
	_, chains, err := x509svid.Verify(certs, s.sec.src)
	if err != nil {
		at := certs[0].NotBefore
		for _, c := range certs[1:] {
			if c.NotBefore.After(at) && c.NotBefore.Before(certs[0].NotAfter) {
				at = c.NotBefore
			}
		}
		if _, chains, err = x509svid.Verify(certs, s.sec.src, x509svid.WithTime(at)); err != nil {
			return "", false, time.Time{}, fmt.Errorf("certificate: %w", err)
		}
	}
	for i, ch := range chains {
		r, m, err := identity.ChainRegion(ch)
		if err != nil {
			return "", false, time.Time{}, fmt.Errorf("certificate: %w", err)
		}
		if i > 0 && r != region {
			return "", false, time.Time{}, fmt.Errorf("certificate chains to the CAs of region %q and of region %q", region, r)
		}
		region, marked = r, m
	}
	// Every certificate a fogmesh CA issues starts ClockSkew before it
	// was issued (identity.CA).
	return region, marked, certs[0].NotBefore.Add(identity.ClockSkew), nil
}

// bindIssuerRegion binds node to region, the one its certificate names
// (its CA's, or the root's mark if marked; the certificate issued at
// issued), unless it is bound there already (a
// store that cannot be read or written leaves it as it is, logged: the
// certificate decides this stream's region anyway), and returns the
// binding. A binding to another region is replaced, as a move (the node
// joined again at region's control plane), unless an operator's decision
// made it after the certificate was issued (a join with a token, or a
// newer certificate of another regional CA; nodeRegionRecord.staleFor):
// then the certificate is stale and refused, else a node moved out of a
// region would move itself back with the certificate it had there. A
// root's certificate marked for region is bound as its CA's is: the root
// marks only the nodes of region's CA (checkRenewalRegion).
func (s *Server) bindIssuerRegion(node, region string, marked bool, issued time.Time) (nodeRegionRecord, error) {
	rec := nodeRegionRecord{Region: region, By: "regional CA " + region, At: time.Now().UTC(), Issued: issued.UTC()}
	cert := "its certificate from region " + region + "'s CA"
	if marked {
		cert = "its certificate from the root marked for region " + region
	}
	stale := func(had nodeRegionRecord) error {
		return fmt.Errorf("node %s was moved to region %s (%s, %s), after %s was issued (%s): "+
			"connect with its current certificate, or move it back by joining again in region %s (remove the agent's node-cert.pem first)",
			node, had.Region, had.By, had.At.Format(time.RFC3339), cert, issued.UTC().Format(time.RFC3339), region)
	}
	var had nodeRegionRecord
	if b, err := s.st.GetSecure(keyNodeRegion + node); err != nil {
		s.log.Warn("control: node's region binding not read", "node", node, "region", region, "err", err)
		return rec, nil
	} else if b != nil && json.Unmarshal(b, &had) == nil && had.Region != "" {
		if had.Region == region {
			return had, nil
		}
		if had.staleFor(issued) {
			return had, stale(had)
		}
	}
	var refused error
	err := s.st.UpdateSecure(func(tx *store.SecureTx) error {
		had, refused = nodeRegionRecord{}, nil
		if b := tx.Get(keyNodeRegion + node); b != nil && json.Unmarshal(b, &had) == nil && had.Region != "" {
			if had.Region == region {
				return nil
			}
			if had.staleFor(issued) {
				refused = stale(had)
				return nil
			}
		}
		b, _ := json.Marshal(rec)
		return tx.Put(keyNodeRegion+node, b)
	})
	switch {
	case err != nil:
		s.log.Warn("control: node's region not recorded", "node", node, "region", region, "err", err)
	case refused != nil:
		return had, refused // moved meanwhile
	case had.Region == region:
		return had, nil // bound meanwhile
	case had.Region != "":
		s.regionMoved(node, had.Region, region, certOrigin(region, marked))
	default:
		s.log.Info("control: node bound to a region", "node", node, "region", region, "by", rec.By)
	}
	return rec, nil
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

// regionMoved audits and logs a node's move to another region, for why
// ("joined again", or its certificate's CA).
func (s *Server) regionMoved(node, from, to, why string) {
	s.Audit(audit.Record{Kind: audit.KindAdmin, Action: "node moved region", Actor: "control", Object: node,
		Reason: fmt.Sprintf("%s: from region %s to %s", why, from, to)})
	s.log.Warn("control: node moved to another region", "node", node, "from", from, "to", to, "why", why)
}

// checkRenewalRegion returns the region to mark in the certificate this
// plane's root renews for node (on connection c; "" for none), or
// refuses the renewal. The certificate of a node whose certificate names
// a region (a regional CA issued it, or the root marked it) is renewed
// only once the node's binding to that region, by that CA, is recorded
// (the binding ties it to the CA's revocation, revokedCA, and keeps its
// region at this plane), and is marked with that region (an
// identity.RegionMark, which only the root makes): every plane reads the
// region from it as it reads a regional CA's, also the planes that never
// bound the node. The node keeps its certificate meanwhile and asks
// again. An unmarked root's certificate (renewed before marks) is marked
// with the region of a binding by a regional CA, if the node has one,
// and not renewed while cluster labels place the node elsewhere; a
// root's certificate is not renewed for a node bound by a revoked
// region's CA.
func (s *Server) checkRenewalRegion(c net.Conn, node string) (string, error) {
	if !s.sec.ca.IsRoot() {
		return "", nil // a regional plane renews from its own CA: the region stays in the chain
	}
	issuer, marked, issued, err := s.nodeIssuer(c)
	if err != nil {
		return "", err
	}
	if issuer == "" {
		var rec nodeRegionRecord
		if b, err := s.st.GetSecure(keyNodeRegion + node); err == nil && b != nil && json.Unmarshal(b, &rec) == nil {
			if err := s.revokedCA(node, rec); err != nil {
				return "", err
			}
			if strings.HasPrefix(rec.By, "regional CA ") {
				// Labels place a certificate naming no region (checkNodeRegion);
				// marked, it would be refused at its next hello, so the
				// node keeps the one it has until they are corrected.
				if labels := s.clusterRegion(node); labels != "" && labels != rec.Region {
					return "", fmt.Errorf("node %s is in region %s (bound by region %s's CA), its cluster labels place it in region %s: "+
						"renewal refused (a renewed certificate names region %s, which labels cannot overrule): correct the labels, or join it again in region %s",
						node, rec.Region, rec.Region, labels, rec.Region, labels)
				}
				return rec.Region, nil
			}
		}
		return "", nil
	}
	// A revoked region's CA: its certificates are refused at handshakes,
	// but a stream opened with one before the revocation may still ask
	// (revokeRegion closes such streams; this holds if one was missed).
	if id, err := identity.RegionID(s.sec.ca.TrustDomain(), issuer); err == nil && s.sec.src.Denied(id.String()) {
		return "", fmt.Errorf("node %s: %s, which is revoked: "+
			"join it again (fogmesh token create -site SITE -region REGION; remove the agent's node-cert.pem first)", node, certOrigin(issuer, marked))
	}
	if _, err := s.bindIssuerRegion(node, issuer, marked, issued); err != nil {
		return "", err
	}
	// Bound there by the CA (revokedCA), even if a join with a token
	// bound it to that region before. Dated by the later of its
	// certificate and the binding it replaces: a certificate older than
	// an operator's move into the region must not date the binding back
	// to before it, or another region's certificate issued before the
	// move would no longer be stale (nodeRegionRecord.staleFor).
	by := "regional CA " + issuer
	err = s.st.UpdateSecure(func(tx *store.SecureTx) error {
		var rec nodeRegionRecord
		if b := tx.Get(keyNodeRegion + node); b == nil || json.Unmarshal(b, &rec) != nil || rec.Region != issuer {
			return fmt.Errorf("bound to %q", rec.Region)
		} else if rec.By == by {
			return nil
		}
		since := issued.UTC()
		if t, ok := rec.since(); ok && t.After(since) {
			since = t.UTC()
		}
		b, _ := json.Marshal(nodeRegionRecord{Region: issuer, By: by, At: time.Now().UTC(), Issued: since})
		return tx.Put(keyNodeRegion+node, b)
	})
	if err != nil {
		return "", fmt.Errorf("node %s: its binding to region %s (%s) is not recorded (%v): "+
			"renewal refused until it is (or renew at region %s's control plane)", node, issuer, certOrigin(issuer, marked), err, issuer)
	}
	return issuer, nil
}

// revokedCA refuses node, bound by rec, when a regional CA's certificate
// made rec (the node's certificate now, a root's, was renewed from it at
// this plane) and that region is revoked: the node descends from the
// revoked CA as much as the certificates it issued do, else a node minted
// by a compromised regional CA and renewed here once would outlive the
// region's revocation. A join with a token rebinds it.
func (s *Server) revokedCA(node string, rec nodeRegionRecord) error {
	r, ok := strings.CutPrefix(rec.By, "regional CA ")
	if !ok {
		return nil
	}
	id, err := identity.RegionID(s.sec.ca.TrustDomain(), r)
	if err != nil || !s.sec.src.Denied(id.String()) {
		return nil
	}
	return fmt.Errorf("node %s: its certificate was renewed from one issued by region %s's CA, which is revoked: "+
		"join it again (fogmesh token create -site SITE -region REGION; remove the agent's node-cert.pem first)", node, r)
}

// nodesOfRegionCA returns the nodes a certificate of region's CA bound
// (revokeRegion closes their streams, whatever certificate they hold now).
func (s *Server) nodesOfRegionCA(region string) map[string]bool {
	kvs, err := s.st.ListSecure(keyNodeRegion)
	if err != nil {
		s.log.Warn("control: region bindings not listed", "region", region, "err", err)
		return nil
	}
	nodes := map[string]bool{}
	for _, kv := range kvs {
		var rec nodeRegionRecord
		if json.Unmarshal(kv.Value, &rec) == nil && rec.By == "regional CA "+region {
			nodes[strings.TrimPrefix(kv.Key, keyNodeRegion)] = true
		}
	}
	return nodes
}
