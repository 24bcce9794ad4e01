package control

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// The global side of regional trust (docs/regions.md). A regional control
// plane joins with a region token (identity.TokenRegion, made with
// `fogmesh token create -kind region -region NAME`) and two CSRs; the
// global plane, whose CA must be a root, answers with
//
//   - an intermediate CA certificate for the region (identity
//     SignIntermediateCSR: path length 0, URI name constraint to the trust
//     domain, URI SAN spiffe://<td>/region/<name>), and
//   - a client certificate for spiffe://<td>/region/<name>, issued by the
//     root, for the region's link to the global plane,
//
// both with Config.RegionCATTL (default identity.DefaultIntermediateTTL).
// The region then keeps a region stream (ALPN fogmesh-region/1, mutual TLS
// with the client certificate): the trust document (roots, federated
// bundles, deny list; no gossip key) is pushed now and after every
// change, and both certificates are renewed on it. `fogmesh region revoke
// NAME` puts the region's ID on the deny list: every verifier that learns
// it refuses every chain through the intermediate (identity.CheckChains),
// and the region's link is refused.

// Config.Mode values.
const (
	ModeGlobal   = "global"   // default: the control plane's CA is a root
	ModeRegional = "regional" // the CA is an intermediate of an upstream global plane
)

// keyRegion + region name: regionRecord, in the security bucket.
const keyRegion = "region/"

// regionRecord is what the global plane keeps of a region it signed for:
// the keys it joined with. Renewals must come with the same keys, so a
// stolen client key alone cannot get an intermediate for a key of its
// choosing.
type regionRecord struct {
	CAKey     string    `json:"caKey"`     // SHA-256 of the intermediate's SubjectPublicKeyInfo
	ClientKey string    `json:"clientKey"` // same, of the client certificate's key
	Joined    time.Time `json:"joined"`
}

// keyPin is the hex SHA-256 of a public key's SubjectPublicKeyInfo.
func keyPin(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// authorizeRegion allows a region identity of the own trust domain issued
// by the root itself (never one a regional intermediate minted).
func (sec *security) authorizeRegion(id spiffeid.ID, chains [][]*x509.Certificate) error {
	if !id.MemberOf(sec.ca.TrustDomain()) {
		return fmt.Errorf("%s is not in trust domain %s", id, sec.ca.TrustDomain())
	}
	if _, ok := identity.ParseRegionID(id); !ok {
		return fmt.Errorf("%s is not a region identity", id)
	}
	for _, ch := range chains {
		if len(ch) != 2 {
			return fmt.Errorf("%s is not issued by the root", id)
		}
	}
	if !sec.ca.IsRoot() {
		return errors.New("this control plane is regional: regions link to the global one")
	}
	return nil
}

// regionTTL is the lifetime of the certificates a region gets.
func (s *Server) regionTTL() time.Duration {
	if s.cfg.RegionCATTL > 0 {
		return s.cfg.RegionCATTL
	}
	return identity.DefaultIntermediateTTL
}

// signRegion signs a region's intermediate and client certificate; with
// want (a renewal) only for the keys the region joined with.
func (sec *security) signRegion(name string, csrDER, caCSRDER []byte, want *regionRecord) (client []*x509.Certificate, inter *x509.Certificate, err error) {
	csr, err := identity.ParseCSR(csrDER)
	if err != nil {
		return nil, nil, fmt.Errorf("client %w", err)
	}
	caCSR, err := identity.ParseCSR(caCSRDER)
	if err != nil {
		return nil, nil, fmt.Errorf("CA %w", err)
	}
	if identity.PublicKeyEqual(csr.PublicKey, caCSR.PublicKey) {
		return nil, nil, errors.New("the intermediate CA and the client certificate must have different keys")
	}
	if want != nil && (keyPin(caCSR.PublicKey) != want.CAKey || keyPin(csr.PublicKey) != want.ClientKey) {
		return nil, nil, errors.New("the keys differ from those the region joined with (a new key needs a new region token)")
	}
	ttl := sec.s.regionTTL()
	if inter, err = sec.ca.SignIntermediateCSR(caCSR, name, ttl); err != nil {
		return nil, nil, err
	}
	if client, err = sec.ca.SignRegionCSR(csr, name, ttl); err != nil {
		return nil, nil, err
	}
	sec.issued("region-ca", inter)
	sec.issued("region", client[0])
	return client, inter, nil
}

// serveRegionJoin answers a regional control plane's join (the token is a
// region token): its intermediate, its client certificate and the trust
// document. The token is marked used in the same transaction that checks
// it.
func (sec *security) serveRegionJoin(c net.Conn, m *wire.Message, tok identity.Token, refuse func(error) error, pin func() bool) error {
	name := m.Region
	if !siteRE.MatchString(name) {
		return refuse(fmt.Errorf("region name %q is not a DNS label", name))
	}
	if !sec.ca.IsRoot() {
		return refuse(errors.New("this control plane is regional: a region joins the global control plane"))
	}
	id, err := identity.RegionID(sec.ca.TrustDomain(), name)
	if err != nil {
		return refuse(err)
	}
	if sec.src.Denied(id.String()) {
		return refuse(fmt.Errorf("region %s is revoked", name))
	}
	now := time.Now()
	rec, err := sec.s.st.GetSecure(keyToken + tok.ID)
	if err != nil {
		return refuse(err)
	}
	if _, err := checkRegionToken(rec, tok, name, now); err != nil {
		return refuse(fmt.Errorf("token %s: %w", tok.ID, err))
	}
	// The token checks out: the gate may no longer evict this join (an
	// eviction from here on would burn the single-use token for a
	// certificate the node never gets). A connection that sends no valid
	// token stays evictable.
	if !pin() {
		return refuse(identity.ErrEvicted)
	}
	client, inter, err := sec.signRegion(name, m.CSR, m.CACSR, nil)
	if err != nil {
		return refuse(err)
	}
	err = sec.s.st.UpdateSecure(func(tx *store.SecureTx) error {
		r, err := checkRegionToken(tx.Get(keyToken+tok.ID), tok, name, now)
		if err != nil {
			return err
		}
		r.UsedBy = "region:" + name
		nb, _ := json.Marshal(r)
		if err := tx.Put(keyToken+tok.ID, nb); err != nil {
			return err
		}
		rb, _ := json.Marshal(regionRecord{CAKey: keyPin(inter.PublicKey), ClientKey: keyPin(client[0].PublicKey), Joined: now.UTC()})
		return tx.Put(keyRegion+name, rb)
	})
	if err != nil {
		return refuse(fmt.Errorf("token %s: %w", tok.ID, err))
	}
	t, _ := sec.currentTrust()
	sec.mJoins["ok"].Inc()
	sec.s.log.Info("control: region joined", "region", name, "token", tok.ID,
		"intermediate", inter.SerialNumber.Text(16), "notAfter", inter.NotAfter)
	return wire.Write(c, &wire.Message{Type: wire.TypeJoined, Certificates: identity.DERs(client),
		CACertificates: [][]byte{inter.Raw}, Trust: relayTrust(t)})
}

// checkRegionToken checks a stored token record b against a presented
// region token for region name.
func checkRegionToken(b []byte, tok identity.Token, name string, now time.Time) (tokenRecord, error) {
	var r tokenRecord
	switch {
	case b == nil, json.Unmarshal(b, &r) != nil, r.Kind != identity.TokenRegion, !tok.MatchesHash(r.Hash):
		return r, errors.New("unknown token")
	case r.UsedBy != "":
		return r, errors.New("token already used")
	case !r.Expires.IsZero() && now.After(r.Expires):
		return r, errors.New("token expired")
	case r.Region != name:
		return r, fmt.Errorf("token is for region %s, the control plane claims region %s", r.Region, name)
	}
	return r, nil
}

// serveRegionTrust runs a region's trust stream (ALPN fogmesh-region/1,
// serveMemberStream): both certificates again for each renewal.
func (s *Server) serveRegionTrust(ctx context.Context, c net.Conn, peer spiffeid.ID) error {
	name, ok := identity.ParseRegionID(peer)
	if !ok {
		return fmt.Errorf("%s is not a region identity", peer)
	}
	return s.serveMemberStream(ctx, c, peer, "region", name, func(m *wire.Message, write func(*wire.Message) error) error {
		var rec regionRecord
		b, err := s.st.GetSecure(keyRegion + name)
		if err != nil || b == nil || json.Unmarshal(b, &rec) != nil {
			write(&wire.Message{Type: wire.TypeError, Error: "renew: this control plane has no record of region " + name})
			return fmt.Errorf("region %s: no record: %v", name, err)
		}
		client, inter, err := s.sec.signRegion(name, m.CSR, m.CACSR, &rec)
		if err != nil {
			write(&wire.Message{Type: wire.TypeError, Error: "renew: " + err.Error()})
			return err
		}
		s.log.Info("control: region certificates renewed", "region", name,
			"intermediate", inter.SerialNumber.Text(16), "notAfter", inter.NotAfter)
		return write(&wire.Message{Type: wire.TypeCert, Certificates: identity.DERs(client), CACertificates: [][]byte{inter.Raw}})
	})
}

// revokeRegion puts a region on the deny list: its intermediate and every
// certificate it issued are refused by every verifier that learns the
// list, and its link to this control plane is closed and refused. The
// record's key ("region:NAME") cannot be a node name.
func (s *Server) revokeRegion(name string) (string, error) {
	if !siteRE.MatchString(name) {
		return "", fmt.Errorf("region %q is not a DNS label", name)
	}
	id, err := identity.RegionID(s.sec.ca.TrustDomain(), name)
	if err != nil {
		return "", err
	}
	if err := s.denyID("region:"+name, id); err != nil {
		return "", err
	}
	// The region's own link, and the sync streams of nodes whose
	// certificate its intermediate issued, or was renewed here from one
	// it issued.
	nodes := s.nodesOfRegionCA(name)
	n := 0
	s.mu.Lock()
	for c, who := range s.streams {
		if who == "region:"+name || issuedByRegion(c, name) || nodes[who] {
			c.Close()
			n++
		}
	}
	s.mu.Unlock()
	s.Audit(audit.Record{Kind: audit.KindAdmin, Action: "revoke region", Actor: "admin", Object: id.String()})
	s.log.Warn("control: region revoked", "region", name, "id", id.String(), "closedStreams", n)
	return id.String(), nil
}

// issuedByRegion reports whether c is a TLS connection whose peer's
// certificate region's intermediate issued (the chain it sent was verified
// in the handshake; VerifiedChains is empty under the SPIFFE verifier).
func issuedByRegion(c net.Conn, region string) bool {
	tc, ok := c.(*tls.Conn)
	return ok && identity.IssuingRegion(tc.ConnectionState().PeerCertificates) == region
}
