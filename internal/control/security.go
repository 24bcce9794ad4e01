package control

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Admin roles.
const (
	RoleAdmin    = "admin"     // every admin API call
	RoleReadOnly = "read-only" // GET only
)

// Files the control plane writes to its state directory.
const (
	// BundleFile is the trust bundle (PEM roots) admin clients and
	// operators use to verify the control plane (the CLI's -ca).
	BundleFile = "ca.pem"
	// AdminTokenFile holds the bootstrap admin token (mode 0600), written
	// on first start when no admin token exists.
	AdminTokenFile = "admin.token"
)

var errRevoked = errors.New("node is revoked")

// Security-bucket keys (internal/store SecureTx).
const (
	keyToken   = "token/"   // + id: tokenRecord
	keyRevoked = "revoked/" // + node name: revokedRecord
	keyTrust   = "trust/"   // + trust domain: PEM bundle
	keyGossip  = "gossip-key"
)

// tokenRecord is what the store keeps of a token: never the secret.
type tokenRecord struct {
	Kind    string    `json:"kind"`
	Hash    string    `json:"hash"`
	Site    string    `json:"site,omitempty"`   // join tokens
	Region  string    `json:"region,omitempty"` // region tokens; join tokens: the node's region, if given
	Role    string    `json:"role,omitempty"`   // admin tokens
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires,omitzero"` // zero: never (admin tokens only)
	UsedBy  string    `json:"usedBy,omitempty"` // join tokens: the node that used it
}

type revokedRecord struct {
	ID   string    `json:"id"`
	Site string    `json:"site"`
	At   time.Time `json:"at"`
}

// security is the control plane's CA, serving certificate, tokens, deny
// list and federated bundles.
type security struct {
	s   *Server
	ca  *identity.CA
	src *identity.Source // serving SVID; own bundle; deny list

	syncTLS *tls.Config
	// gate bounds the sync port's handshakes in progress (sync.go).
	gate *identity.HandshakeGate
	// adminGate bounds the admin API's (adminhandshake.go).
	adminGate *identity.HandshakeGate
	// joinPinned, a test hook, is called once a join's slot is pinned
	// (serveJoin: a node's, a region's or a relay's).
	joinPinned atomic.Pointer[func()]
	// region is the regional control plane's identity and upstream link
	// (region_link.go); nil on a global control plane.
	region *regional

	mu        sync.Mutex // guards the following
	trust     *wire.Trust
	trustJSON []byte
	watch     chan struct{} // closed when trust changes
	servedAt  time.Time     // when the serving certificate was issued
	servedFor string        // the root pin it was issued under

	mTLS    map[string]*metrics.Counter
	mAdmin  map[string]*metrics.Counter // the admin API's refused handshakes, by reason
	mJoins  map[string]*metrics.Counter
	mIssued *metrics.Counter
	// onIssue, if set, is called for every certificate issued (the audit
	// log hooks in here).
	onIssue func(kind, id string, cert *x509.Certificate)
}

func newSecurity(s *Server) (*security, error) {
	var ca *identity.CA
	var reg *regional
	var err error
	if s.cfg.Mode == ModeRegional {
		ca, reg, err = openRegional(s) // region_link.go
	} else {
		ca, err = s.openCA(identity.CAConfig{
			Dir: filepath.Join(s.cfg.StateDir, "ca"), TrustDomain: s.cfg.TrustDomain,
			CertFile: s.cfg.CACertFile, KeyFile: s.cfg.CAKeyFile,
			NodeTTL: s.cfg.NodeTTL, WorkloadTTL: s.cfg.WorkloadTTL, Overlap: s.cfg.RotationOverlap,
		})
	}
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	sec := &security{s: s, ca: ca, region: reg, src: identity.NewSource(), watch: make(chan struct{}),
		mTLS: map[string]*metrics.Counter{}, mAdmin: map[string]*metrics.Counter{}, mJoins: map[string]*metrics.Counter{}}
	m := s.cfg.Metrics
	for _, r := range identity.Reasons {
		sec.mTLS[r] = m.NewCounter(fmt.Sprintf(`fogmesh_tls_handshake_failures_total{port="sync",reason=%q}`, r))
		sec.mAdmin[r] = m.NewCounter(fmt.Sprintf(`fogmesh_tls_handshake_failures_total{port="admin",reason=%q}`, r))
	}
	for _, r := range []string{"ok", "refused"} {
		sec.mJoins[r] = m.NewCounter(fmt.Sprintf(`fogmesh_control_joins_total{result=%q}`, r))
	}
	sec.mIssued = m.NewCounter(`fogmesh_control_certificates_issued_total`)
	sec.gate = identity.NewHandshakeGate(s.cfg.SyncMaxHandshakes, s.cfg.SyncMaxHandshakesPerSource)
	m.NewGauge(`fogmesh_tls_handshakes_in_progress{port="sync"}`, func() float64 { return float64(sec.gate.InProgress()) })
	sec.adminGate = newAdminGate(s.cfg.AdminMaxHandshakes, s.cfg.AdminMaxHandshakesPerSource)
	m.NewGauge(`fogmesh_tls_handshakes_in_progress{port="admin"}`, func() float64 { return float64(sec.adminGate.InProgress()) })
	if reg != nil {
		reg.refresh = sec.refreshTrust
		m.NewGauge(`fogmesh_control_region_linked`, func() float64 {
			if reg.linked.Load() {
				return 1
			}
			return 0
		})
		m.NewGauge(`fogmesh_control_region_renewals`, func() float64 { return float64(reg.renewals.Load()) })
	}
	sec.syncTLS = sec.newSyncTLS()
	if err := sec.refreshTrust(); err != nil {
		return nil, err
	}
	if err := sec.bootstrapAdminToken(); err != nil {
		return nil, err
	}
	s.log.Info("control: CA ready", "trustDomain", ca.TrustDomain().Name(), "pin", ca.Pin(),
		"bundle", filepath.Join(s.cfg.StateDir, BundleFile))
	return sec, nil
}

// gossipKey returns the mesh's gossip key, made (32 random bytes) when
// there is none or when renew is set (after a revocation: the revoked node
// knows the old one).
func (sec *security) gossipKey(renew bool) ([]byte, error) {
	// Read first: refreshTrust runs every few seconds, and a write
	// transaction would fsync each time.
	if !renew {
		if k, err := sec.s.st.GetSecure(keyGossip); err == nil && len(k) == 32 {
			return k, nil
		}
	}
	var key []byte
	err := sec.s.st.UpdateSecure(func(tx *store.SecureTx) error {
		if k := tx.Get(keyGossip); len(k) == 32 && !renew {
			key = append([]byte(nil), k...)
			return nil
		}
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return err
		}
		return tx.Put(keyGossip, key)
	})
	return key, err
}

func (sec *security) tlsFailure(reason string) {
	if c := sec.mTLS[reason]; c != nil {
		c.Inc()
	}
}

// adminTLSFailure counts a refused or failed handshake of the admin API.
func (sec *security) adminTLSFailure(reason string) {
	if c := sec.mAdmin[reason]; c != nil {
		c.Inc()
	}
}

// TLSFailures returns the sync port's refused handshakes for reason.
func (s *Server) TLSFailures(reason string) uint64 {
	if s.sec == nil || s.sec.mTLS[reason] == nil {
		return 0
	}
	return s.sec.mTLS[reason].Get()
}

// newSyncTLS: the sync port serves joins (ALPN fogmesh-join/1, server
// authentication only: the joining agent or relay checks the root pin),
// sync streams (mutual TLS with a node certificate) and relay streams
// (ALPN fogmesh-relay/1, mutual TLS with a relay certificate).
func (sec *security) newSyncTLS() *tls.Config {
	mtls := sec.src.ServerConfig(sec.authorizeNode, identity.ALPNSync)
	relay := sec.src.ServerConfig(sec.authorizeRelay, identity.ALPNRelay)
	region := sec.src.ServerConfig(sec.authorizeRegion, identity.ALPNRegion, identity.ALPNRegionSync)
	join := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{identity.ALPNJoin},
		GetCertificate: tlsconfig.GetCertificate(sec.src)}
	return &tls.Config{MinVersion: tls.VersionTLS13, GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		switch {
		case slices.Contains(h.SupportedProtos, identity.ALPNJoin):
			return join, nil
		case slices.Contains(h.SupportedProtos, identity.ALPNRelay):
			return relay, nil
		case slices.Contains(h.SupportedProtos, identity.ALPNRegion), slices.Contains(h.SupportedProtos, identity.ALPNRegionSync):
			return region, nil
		}
		return mtls, nil
	}}
}

func (sec *security) authorizeNode(id spiffeid.ID, _ [][]*x509.Certificate) error {
	if !id.MemberOf(sec.ca.TrustDomain()) {
		return fmt.Errorf("%s is not in trust domain %s", id, sec.ca.TrustDomain())
	}
	if _, _, ok := identity.ParseNodeID(id); !ok {
		return fmt.Errorf("%s is not a node identity", id)
	}
	return nil
}

// adminTLS: the admin API takes an optional client certificate; one of an
// admin identity (spiffe://<td>/admin/<name>) is the admin role.
func (sec *security) adminTLS() *tls.Config {
	verify := tlsconfig.VerifyPeerCertificate(sec.src, func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		// An admin, or a peer replica (its serving certificate: RoleReplica).
		// The admin listener counts a refusal under port="admin" by its
		// identity.HandshakeError's reason (adminhandshake.go).
		if !identity.IsAdminID(sec.ca.TrustDomain(), id) && id != identity.ControlID(sec.ca.TrustDomain()) {
			return &identity.HandshakeError{Reason: identity.ReasonUnauthorized, Err: fmt.Errorf("%s is not an admin identity", id)}
		}
		if sec.src.Denied(id.String()) {
			return &identity.HandshakeError{Reason: identity.ReasonRevoked, Err: fmt.Errorf("%s is revoked", id)}
		}
		for _, ch := range chains {
			if err := sec.adminIssuer(id, ch); err != nil {
				return err
			}
		}
		return nil
	})
	return &tls.Config{MinVersion: tls.VersionTLS13, ClientAuth: tls.RequestClientCert,
		GetCertificate: tlsconfig.GetCertificate(sec.src),
		VerifyPeerCertificate: func(raw [][]byte, chains [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil // a bearer token, then
			}
			return verify(raw, chains)
		}}
}

// adminIssuer refuses an admin certificate (chain: leaf first) that a
// revoked CA issued, or that another region's intermediate issued: a
// regional CA's key must not grant admin rights on the global plane or on
// another region's plane (reason unauthorized; a revoked CA: revoked).
func (sec *security) adminIssuer(id spiffeid.ID, chain []*x509.Certificate) error {
	if err := identity.CheckChains(id, [][]*x509.Certificate{chain}, sec.src.Denied); err != nil {
		return err
	}
	if r := identity.IssuingRegion(chain); r != "" && (sec.region == nil || sec.region.name != r) {
		return &identity.HandshakeError{Reason: identity.ReasonUnauthorized,
			Err: fmt.Errorf("%s was issued by region %s's intermediate CA: admin certificates come from this control plane's own CA", id, r)}
	}
	return nil
}

// issueServing issues the control plane's serving certificate (its key is
// made here, on the control plane host) and appends the roots to its chain
// so that joining agents can check the pin.
func (sec *security) issueServing() error {
	key, err := identity.NewKey()
	if err != nil {
		return err
	}
	opts := identity.IssueOptions{DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}}
	names := append([]string{}, sec.s.cfg.ServerNames...)
	for _, a := range []string{sec.s.cfg.AdminAddr, sec.s.cfg.SyncAddr} {
		if h, _, err := net.SplitHostPort(a); err == nil {
			names = append(names, h)
		}
	}
	for _, n := range names {
		if ip, err := netip.ParseAddr(n); err == nil {
			if !ip.IsUnspecified() && !ip.IsLoopback() {
				opts.IPAddresses = append(opts.IPAddresses, ip.AsSlice())
			}
		} else if n != "" && n != "localhost" && !slices.Contains(opts.DNSNames, n) {
			opts.DNSNames = append(opts.DNSNames, n)
		}
	}
	certs, err := sec.ca.Sign(key.Public(), identity.ControlID(sec.ca.TrustDomain()), opts)
	if err != nil {
		return fmt.Errorf("control: serving certificate: %w", err)
	}
	svid, err := identity.NewSVID(append(certs, sec.ca.Roots()...), key)
	if err != nil {
		return err
	}
	sec.src.SetSVID(svid)
	sec.mu.Lock()
	sec.servedAt, sec.servedFor = time.Now(), sec.ca.Pin()
	sec.mu.Unlock()
	return nil
}

// maintain renews the serving certificate at half-life and pushes the
// trust bundle again when a rotated-out root leaves it.
func (sec *security) maintain(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sec.followCA()
		sec.mu.Lock()
		stale := time.Since(sec.servedAt) > sec.ca.NodeTTL()/2 || sec.servedFor != sec.ca.Pin()
		sec.mu.Unlock()
		if stale {
			if err := sec.issueServing(); err != nil {
				sec.s.log.Error("control: renew serving certificate", "err", err)
			}
		}
		if err := sec.refreshTrust(); err != nil {
			sec.s.log.Error("control: refresh trust", "err", err)
		}
	}
}

// refreshTrust rebuilds the trust message from the CA and the store, and
// wakes every stream's sender (which sends it) if it changed.
func (sec *security) refreshTrust() error {
	td := sec.ca.TrustDomain()
	roots := sec.ca.Roots()
	t := &wire.Trust{TrustDomain: td.Name(), Bundles: map[string][][]byte{td.Name(): identity.DERs(roots)}}
	bundles := []*x509bundle.Bundle{x509bundle.FromX509Authorities(td, roots)}
	kvs, err := sec.s.st.ListSecure(keyTrust)
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		name := strings.TrimPrefix(kv.Key, keyTrust)
		certs, err := identity.ParseBundlePEM(kv.Value)
		if err != nil {
			sec.s.log.Error("control: stored federated bundle unreadable", "trustDomain", name, "err", err)
			continue
		}
		t.Bundles[name] = identity.DERs(certs)
	}
	kvs, err = sec.s.st.ListSecure(keyRevoked)
	if err != nil {
		return err
	}
	if t.GossipKey, err = sec.gossipKey(false); err != nil {
		return err
	}
	for _, kv := range kvs {
		var r revokedRecord
		if json.Unmarshal(kv.Value, &r) == nil {
			t.Revoked = append(t.Revoked, r.ID)
		}
	}
	if sec.region != nil {
		sec.region.mergeTrust(t) // the global plane's deny list and federated bundles
	}
	sort.Strings(t.Revoked)
	t.Revoked = slices.Compact(t.Revoked)
	b, _ := json.Marshal(t)
	sec.mu.Lock()
	defer sec.mu.Unlock()
	if bytes.Equal(b, sec.trustJSON) {
		return nil
	}
	// The control plane verifies agents of its own trust domain only.
	sec.src.SetBundles(bundles...)
	sec.src.SetDenied(t.Revoked)
	sec.trust, sec.trustJSON = t, b
	close(sec.watch)
	sec.watch = make(chan struct{})
	if err := identity.WriteFileAtomic(filepath.Join(sec.s.cfg.StateDir, BundleFile), identity.EncodeCertificatesPEM(roots...), 0o644); err != nil {
		sec.s.log.Error("control: write bundle file", "err", err)
	}
	return nil
}

func (sec *security) currentTrust() (*wire.Trust, <-chan struct{}) {
	sec.mu.Lock()
	defer sec.mu.Unlock()
	return sec.trust, sec.watch
}

func (sec *security) revoked(node string) bool {
	v, err := sec.s.st.GetSecure(keyRevoked + node)
	return err != nil || v != nil // fail closed: an unreadable store revokes
}

// bootstrapAdminToken writes an admin token to StateDir/admin.token on
// first start, so that the operator on this host can use the admin API.
func (sec *security) bootstrapAdminToken() error {
	kvs, err := sec.s.st.ListSecure(keyToken)
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		var r tokenRecord
		if json.Unmarshal(kv.Value, &r) == nil && r.Kind == identity.TokenAdmin {
			return nil
		}
	}
	tok, _, err := sec.createToken(identity.TokenAdmin, "", "", RoleAdmin, 0)
	if err != nil {
		return err
	}
	path := filepath.Join(sec.s.cfg.StateDir, AdminTokenFile)
	if err := identity.WriteFileAtomic(path, []byte(tok+"\n"), 0o600); err != nil {
		return fmt.Errorf("control: write admin token: %w", err)
	}
	sec.s.log.Warn("control: wrote the bootstrap admin token (role admin)", "file", path)
	return nil
}

// createToken stores a new token and returns its wire form. region is a
// join token's region ("": the joining node declares it).
func (sec *security) createToken(kind, site, region, role string, ttl time.Duration) (string, tokenRecord, error) {
	now := time.Now().UTC()
	rec := tokenRecord{Kind: kind, Created: now}
	switch kind {
	case identity.TokenJoin:
		if !siteRE.MatchString(site) {
			return "", rec, fmt.Errorf("site %q is not a DNS label", site)
		}
		if region != "" && !regionRE.MatchString(region) {
			return "", rec, fmt.Errorf("region %q is not a DNS label", region)
		}
		if s := sec.s.cfg; s.Mode == ModeRegional && region != "" && region != s.Region {
			return "", rec, fmt.Errorf("this control plane serves region %s: its join tokens cannot name region %s", s.Region, region)
		}
		if ttl <= 0 {
			ttl = time.Hour
		}
		rec.Site, rec.Region = site, region
	case identity.TokenRelay:
		if ttl <= 0 {
			ttl = time.Hour
		}
	case identity.TokenRegion: // site is the region's name
		if !siteRE.MatchString(site) {
			return "", rec, fmt.Errorf("region %q is not a DNS label", site)
		}
		if !sec.ca.IsRoot() {
			return "", rec, errors.New("this control plane is regional: make region tokens on the global one")
		}
		if ttl <= 0 {
			ttl = time.Hour
		}
		rec.Region = site
	case identity.TokenAdmin:
		if role == "" {
			role = RoleAdmin
		}
		if role != RoleAdmin && role != RoleReadOnly {
			return "", rec, fmt.Errorf("role %q is not %s or %s", role, RoleAdmin, RoleReadOnly)
		}
		rec.Role = role
	default:
		return "", rec, fmt.Errorf("kind %q is not %s, %s, %s or %s", kind, identity.TokenJoin, identity.TokenRelay, identity.TokenRegion, identity.TokenAdmin)
	}
	if ttl > 0 {
		rec.Expires = now.Add(ttl)
	}
	tok, err := identity.NewToken(kind, sec.ca.Pin())
	if err != nil {
		return "", rec, err
	}
	rec.Hash = tok.Hash()
	b, _ := json.Marshal(rec)
	err = sec.s.st.UpdateSecure(func(tx *store.SecureTx) error {
		// Forget expired tokens while here.
		for _, kv := range tx.List(keyToken) {
			var r tokenRecord
			if json.Unmarshal(kv.Value, &r) == nil && !r.Expires.IsZero() && now.After(r.Expires.Add(24*time.Hour)) {
				tx.Delete(kv.Key)
			}
		}
		return tx.Put(keyToken+tok.ID, b)
	})
	if err != nil {
		return "", rec, err
	}
	return tok.String(), rec, nil
}

// adminRole returns the role of an admin bearer token, or an error.
func (sec *security) adminRole(s string) (string, error) {
	tok, err := identity.ParseToken(s)
	if err != nil {
		return "", err
	}
	if tok.Kind != identity.TokenAdmin {
		return "", errors.New("not an admin token")
	}
	kvs, err := sec.s.st.ListSecure(keyToken + tok.ID)
	if err != nil {
		return "", fmt.Errorf("%w: %w", errTokenStore, err)
	}
	for _, kv := range kvs {
		var r tokenRecord
		if kv.Key != keyToken+tok.ID || json.Unmarshal(kv.Value, &r) != nil || r.Kind != identity.TokenAdmin || !tok.MatchesHash(r.Hash) {
			continue
		}
		if !r.Expires.IsZero() && time.Now().After(r.Expires) {
			return "", errors.New("token expired")
		}
		return r.Role, nil
	}
	return "", errors.New("unknown token")
}

// serveJoin answers one join: a token, a node and a CSR in; a node
// certificate and the trust bundle out. Nothing is stored unless every
// check passes; the token is then marked used in the same transaction.
//
// slot is c's handshake slot: evictable until the join's token checks out,
// then pinned. A join the gate evicted is not counted as refused (the
// caller counts it as a handshake failure, ReasonEvicted); its error wraps
// identity.ErrEvicted.
func (sec *security) serveJoin(c net.Conn, slot *identity.GateSlot) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	m, err := wire.NewReader(c).Read()
	refuse := func(err error) error {
		if slot.Evicted() { // closed by the gate: nobody to answer
			return errors.Join(err, identity.ErrEvicted)
		}
		sec.mJoins["refused"].Inc()
		wire.Write(c, &wire.Message{Type: wire.TypeError, Error: "join refused: " + err.Error()})
		return err
	}
	pin := func() bool {
		if !slot.Pin() {
			return false
		}
		if f := sec.joinPinned.Load(); f != nil {
			(*f)()
		}
		return true
	}
	if err != nil {
		return refuse(fmt.Errorf("read: %w", err))
	}
	if m.Type != wire.TypeJoin {
		return refuse(errors.New("expected a join message"))
	}
	tok, err := identity.ParseToken(m.Token)
	if err != nil {
		return refuse(err)
	}
	switch {
	case m.Region != "" && tok.Kind == identity.TokenRegion:
		return sec.serveRegionJoin(c, m, tok, refuse, pin)
	case m.Region != "":
		return refuse(errors.New("a regional control plane joins with a region token ('fogmesh token create -kind region -region NAME'), not a " + tok.Kind + " token"))
	case tok.Kind == identity.TokenRegion:
		return refuse(errors.New("a region token is for 'fogmesh control --mode regional --join-token', not for a node or relay"))
	case m.Relay != "" && tok.Kind == identity.TokenRelay:
		return sec.serveRelayJoin(c, m, tok, refuse, pin)
	case m.Relay != "":
		return refuse(errors.New("a relay joins with a relay token ('fogmesh token create -kind relay'), not a " + tok.Kind + " token"))
	case tok.Kind == identity.TokenRelay:
		return refuse(errors.New("a relay token cannot join a node: it is for 'fogmesh relay -join-token'"))
	case tok.Kind != identity.TokenJoin:
		return refuse(errors.New("not a join token"))
	case m.Node == nil:
		return refuse(errors.New("expected a join message with a node"))
	}
	if err := m.Node.Validate(); err != nil {
		return refuse(fmt.Errorf("node: %w", err))
	}
	if err := sec.s.admitRegion(m.Node); err != nil {
		return refuse(err)
	}
	node, site, region := m.Node.Meta.Name, m.Node.Spec.Site, m.Node.Spec.Region
	csr, err := identity.ParseCSR(m.CSR)
	if err != nil {
		return refuse(err)
	}
	if sec.revoked(node) {
		return refuse(fmt.Errorf("node %s is revoked", node))
	}
	movedFrom, err := sec.s.checkNodeSite(node, site)
	if err != nil {
		return refuse(err)
	}
	// A token of the node's own site must not take over a node that is
	// online: re-joining is for a node that lost its state.
	sec.s.mu.Lock()
	online := sec.s.live[node] != nil && sec.s.live[node].conns > 0
	sec.s.mu.Unlock()
	if online {
		return refuse(fmt.Errorf("node %s is connected; a join cannot take over a node that is online", node))
	}
	// Check the token before signing anything (read-only), so that whoever
	// reaches the port without a valid token costs no CA signature; the
	// transaction below checks again and marks it used.
	now := time.Now()
	rec, err := sec.s.st.GetSecure(keyToken + tok.ID)
	if err != nil {
		return refuse(err)
	}
	if _, err := checkJoinToken(rec, tok, node, site, region, now); err != nil {
		return refuse(fmt.Errorf("token %s: %w", tok.ID, err))
	}
	// The token checks out: the gate may no longer evict this join (an
	// eviction from here on would burn the single-use token for a
	// certificate the node never gets). A connection that sends no valid
	// token stays evictable.
	if !pin() {
		return refuse(identity.ErrEvicted)
	}
	certs, err := sec.ca.SignNodeCSR(csr, site, node)
	if err != nil {
		return refuse(err)
	}
	lifted, regionFrom := false, ""
	err = sec.s.st.UpdateSecure(func(tx *store.SecureTx) error {
		lifted = false
		r, err := checkJoinToken(tx.Get(keyToken+tok.ID), tok, node, site, region, now)
		if err != nil {
			return err
		}
		if regionFrom, err = bindJoinRegionLocked(tx, node, region, tok.ID, now); err != nil { // noderegion.go
			return err
		}
		r.UsedBy = node
		nb, _ := json.Marshal(r)
		if movedFrom != "" {
			old, err := identity.NodeID(sec.ca.TrustDomain(), movedFrom, node)
			if err != nil {
				return err
			}
			b, _ := json.Marshal(revokedRecord{ID: old.String(), Site: movedFrom, At: now.UTC()})
			if err := tx.Put(movedKey(movedFrom, node), b); err != nil {
				return err
			}
		}
		// A join at a site the node once moved away from (by its labels,
		// or deleted and joined again) lifts that site's record: the
		// certificate issued now names that identity.
		if tx.Get(movedKey(site, node)) != nil {
			if err := tx.Delete(movedKey(site, node)); err != nil {
				return err
			}
			lifted = true
		}
		return tx.Put(keyToken+tok.ID, nb)
	})
	if err != nil {
		return refuse(fmt.Errorf("token %s: %w", tok.ID, err))
	}
	if movedFrom != "" || lifted {
		if err := sec.refreshTrust(); err != nil {
			sec.s.log.Error("control: deny list after a node's move", "node", node, "err", err)
		}
	}
	if movedFrom != "" {
		sec.s.Audit(audit.Record{Kind: audit.KindAdmin, Action: "node moved site", Actor: "control", Object: node,
			Reason: fmt.Sprintf("cluster labels: from site %s to %s; the identity at %s is deny-listed", movedFrom, site, movedFrom)})
		sec.s.log.Warn("control: node joined in the site its cluster labels name; its identity at the old site is deny-listed",
			"node", node, "from", movedFrom, "to", site)
	}
	if regionFrom != "" {
		sec.s.regionMoved(node, regionFrom, region, "joined again")
	}
	sec.issued("node", certs[0])
	t, _ := sec.currentTrust()
	sec.mJoins["ok"].Inc()
	sec.s.log.Info("control: node joined", "node", node, "site", site, "region", region, "token", tok.ID, "serial", certs[0].SerialNumber.Text(16))
	return wire.Write(c, &wire.Message{Type: wire.TypeJoined, Certificates: identity.DERs(certs), Trust: t})
}

// checkJoinToken checks a stored token record b against the presented
// token for a node joining at site in region.
func checkJoinToken(b []byte, tok identity.Token, node, site, region string, now time.Time) (tokenRecord, error) {
	var r tokenRecord
	switch {
	case b == nil, json.Unmarshal(b, &r) != nil, r.Kind != identity.TokenJoin, !tok.MatchesHash(r.Hash):
		return r, errors.New("unknown token")
	case r.UsedBy != "":
		return r, errors.New("token already used")
	case !r.Expires.IsZero() && now.After(r.Expires):
		return r, errors.New("token expired")
	case r.Site != site:
		return r, fmt.Errorf("token is for site %s, node %s claims site %s", r.Site, node, site)
	case r.Region != "" && r.Region != region:
		return r, fmt.Errorf("token is for region %s, node %s claims region %s (run its agent with -region %s)", r.Region, node, region, r.Region)
	}
	return r, nil
}

func (sec *security) issued(kind string, cert *x509.Certificate) {
	sec.mIssued.Inc()
	// Every certificate issued goes to the control plane's audit chain,
	// with the region the root marked in it (it vouches for the node's
	// region at every plane: noderegion.go).
	reason := "serial " + cert.SerialNumber.Text(16) + ", until " + cert.NotAfter.UTC().Format(time.RFC3339)
	if r, err := identity.RegionMark(cert); err == nil && r != "" {
		reason += ", region mark " + r
	}
	if err := sec.s.Audit(audit.Record{Kind: audit.KindCert, Action: "issue " + kind, Actor: "control",
		Object: cert.URIs[0].String(), Reason: reason}); err != nil {
		sec.s.log.Error("control: audit certificate issue", "err", err)
	}
	if kind == "node" {
		if _, node, ok := identity.ParseNodeID(spiffeid.RequireFromURI(cert.URIs[0])); ok {
			sec.s.SetAuditKey(node, cert.PublicKey) // the node signs its checkpoints with this key
		}
	}
	if sec.onIssue != nil {
		sec.onIssue(kind, cert.URIs[0].String(), cert)
	}
}

// checkNodeSite refuses a node name registered at another site. Endpoints,
// workload SVIDs (issueSVID) and the identities agents vouch for go by node
// name, so a join token of one site must not get a certificate under the
// name of another site's node, nor may such a certificate register over
// it. A node moves site by being deleted first, or, for a node of a
// cluster source (-kube), by joining with a token of the site its cluster
// labels name: the cluster, which the control plane trusts for its
// registry, says it is there (certSiteLocked).
//
// It returns the site the node moves from ("" if it does not move).
func (s *Server) checkNodeSite(node, site string) (from string, err error) {
	kv, ok, err := s.st.Get(api.KindNode + "/" + node)
	if err != nil {
		return "", fmt.Errorf("node %s: %w", node, err)
	}
	var cur api.Node
	if ok && json.Unmarshal(kv.Value, &cur) == nil && cur.Spec.Site != site {
		if s.clusterSite(node) == site {
			s.log.Info("control: node moves to the site its cluster labels name", "node", node, "from", cur.Spec.Site, "to", site)
			return cur.Spec.Site, nil
		}
		return "", fmt.Errorf("node %s is registered at site %s, not %s (delete it first to move it)", node, cur.Spec.Site, site)
	}
	return "", nil
}

// movedKey is the deny-list record of a node's identity at a site it moved
// away from (keyRevoked + "moved:SITE:NODE": no node name has a ':'). A
// node that moved by its cluster labels (checkNodeSite) leaves behind
// certificates of its old site that are still valid: whoever holds one,
// the node's old agent or a thief of its state, would keep speaking as
// the node there. Joining in the new site deny-lists the old identity;
// moving back to a site lifts that site's record, so certificates of it
// issued before the first move are admitted again until they expire
// (README, "Moving a node to another site").
func movedKey(site, node string) string { return keyRevoked + "moved:" + site + ":" + node }

// renew answers a node's renewal on its mutually authenticated stream.
func (s *Server) renew(st *stream, peer spiffeid.ID, m *wire.Message) error {
	if s.sec == nil || peer.IsZero() {
		return errors.New("renewal needs a mutually authenticated stream")
	}
	if s.sec.revoked(st.node) {
		return errRevoked
	}
	region, err := s.checkRenewalRegion(st.c, st.node)
	if err != nil {
		return err
	}
	csr, err := identity.ParseCSR(m.CSR)
	if err != nil {
		return err
	}
	site, node, _ := identity.ParseNodeID(peer)
	// A regional CA's node renewed from the root keeps its region in the
	// certificate, for every plane (noderegion.go).
	certs, err := s.sec.ca.SignNodeCSRInRegion(csr, site, node, region)
	if err != nil {
		return err
	}
	s.sec.issued("node", certs[0])
	s.log.Info("control: node certificate renewed", "node", node, "serial", certs[0].SerialNumber.Text(16), "notAfter", certs[0].NotAfter)
	return st.write(&wire.Message{Type: wire.TypeCert, Certificates: identity.DERs(certs)})
}

// revokeAdmin puts an admin client certificate's identity on the deny list:
// the admin API refuses it from then on, before it expires. The record's
// key ("admin:NAME") cannot be a node name.
func (s *Server) revokeAdmin(name string) (string, error) {
	if !siteRE.MatchString(name) {
		return "", fmt.Errorf("name %q is not a DNS label", name)
	}
	id, err := identity.AdminID(s.sec.ca.TrustDomain(), name)
	if err != nil {
		return "", err
	}
	if err := s.denyID("admin:"+name, id); err != nil {
		return "", err
	}
	s.Audit(audit.Record{Kind: audit.KindAdmin, Action: "revoke admin", Actor: "admin", Object: id.String()})
	s.log.Warn("control: admin client certificate revoked", "id", id.String())
	return id.String(), nil
}

// revokeNode puts a node on the deny list, pushes it to every agent and
// closes the node's sync streams.
func (s *Server) revokeNode(name string) (string, error) {
	var n api.Node
	kv, ok, err := s.st.Get(api.KindNode + "/" + name)
	if err != nil {
		return "", err
	}
	if !ok || json.Unmarshal(kv.Value, &n) != nil {
		return "", fmt.Errorf("node %q: %w", name, ErrNotFound)
	}
	id, err := identity.NodeID(s.sec.ca.TrustDomain(), n.Spec.Site, name)
	if err != nil {
		return "", err
	}
	b, _ := json.Marshal(revokedRecord{ID: id.String(), Site: n.Spec.Site, At: time.Now().UTC()})
	if err := s.st.UpdateSecure(func(tx *store.SecureTx) error { return tx.Put(keyRevoked+name, b) }); err != nil {
		return "", err
	}
	if _, err := s.sec.gossipKey(true); err != nil { // refreshTrust pushes the new one
		return "", err
	}
	if err := s.sec.refreshTrust(); err != nil {
		return "", err
	}
	s.mu.Lock()
	for c, node := range s.streams {
		if node == name {
			c.Close()
		}
	}
	s.mu.Unlock()
	s.log.Warn("control: node revoked", "node", name, "id", id.String())
	return id.String(), nil
}

// CreateToken makes a join token for site (kind identity.TokenJoin), a
// relay token, a region token for the region named site
// (identity.TokenRegion) or an admin token with role (identity.TokenAdmin),
// valid for ttl (0: 1h for join, relay and region tokens, no expiry for
// admin tokens). The dev demo calls it directly.
func (s *Server) CreateToken(kind, site, role string, ttl time.Duration) (string, error) {
	if s.sec == nil {
		return "", errors.New("control: tokens need the CA (insecure mode)")
	}
	tok, _, err := s.sec.createToken(kind, site, "", role, ttl)
	return tok, err
}

// CreateJoinToken makes a join token for a node of site in region (""
// lets the node declare its region when it joins; either way it is bound
// to it, see noderegion.go), valid for ttl (0: 1h).
func (s *Server) CreateJoinToken(site, region string, ttl time.Duration) (string, error) {
	if s.sec == nil {
		return "", errors.New("control: tokens need the CA (insecure mode)")
	}
	tok, _, err := s.sec.createToken(identity.TokenJoin, site, region, "", ttl)
	return tok, err
}

// BundlePath returns the trust bundle file, "" in insecure mode.
func (s *Server) BundlePath() string {
	if s.sec == nil {
		return ""
	}
	return filepath.Join(s.cfg.StateDir, BundleFile)
}

// CA returns the control plane's CA (nil in insecure mode), for workload
// SVID issuance built on it.
func (s *Server) CA() *identity.CA {
	if s.sec == nil {
		return nil
	}
	return s.sec.ca
}

// OnIssue registers f to be called for every certificate the control plane
// issues (kind "node" today); set it before Serve.
func (s *Server) OnIssue(f func(kind, id string, cert *x509.Certificate)) {
	if s.sec != nil {
		s.sec.onIssue = f
	}
}

var siteRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// issueSVID signs a workload SVID for a node, on its mutually authenticated
// stream, only for an identity that one of the node's own endpoints has: a
// node cannot obtain another node's workload identities. Asked for a
// batch, it signs consecutive SVIDs for the key covering the autonomy
// window (identity.SignWorkloadBatch), the first one returned first.
func (s *Server) issueSVID(node string, peer spiffeid.ID, m *wire.Message) ([][]*x509.Certificate, error) {
	if s.sec == nil || peer.IsZero() {
		return nil, errors.New("workload SVIDs need a mutually authenticated stream")
	}
	if s.sec.revoked(node) {
		return nil, errRevoked
	}
	if m.SVID == nil {
		return nil, errors.New("svid: no identity named")
	}
	ns, sa := m.SVID.Namespace, m.SVID.ServiceAccount
	if !s.nodeHasIdentity(node, ns, sa) {
		return nil, fmt.Errorf("svid: node %s has no endpoint with identity ns/%s/sa/%s", node, ns, sa)
	}
	csr, err := identity.ParseCSR(m.CSR)
	if err != nil {
		return nil, err
	}
	var chains [][]*x509.Certificate
	if m.SVID.Batch {
		chains, err = s.sec.ca.SignWorkloadBatch(csr, ns, sa, 0, batchWindow(s.cfg.AutonomyWindow))
	} else {
		var certs []*x509.Certificate
		certs, err = s.sec.ca.SignWorkloadCSR(csr, ns, sa, 0)
		chains = [][]*x509.Certificate{certs}
	}
	if err != nil {
		return nil, err
	}
	first, last := chains[0][0], chains[len(chains)-1][0]
	s.sec.issued("workload", first)
	s.log.Info("control: workload SVID issued", "node", node, "id", first.URIs[0].String(),
		"serial", first.SerialNumber.Text(16), "notAfter", first.NotAfter, "batch", len(chains), "lastNotAfter", last.NotAfter)
	return chains, nil
}

// nodeHasIdentity reports whether an endpoint on node has the workload
// identity ns/sa, and the service it belongs to allows that identity (and
// the node's site): a node cannot obtain an identity by reporting a made-up
// endpoint.
func (s *Server) nodeHasIdentity(node, ns, sa string) bool {
	eps, _, err := s.reg.list(api.KindEndpoint)
	if err != nil {
		return false
	}
	svcs, _, err := s.reg.list(api.KindService)
	if err != nil {
		return false
	}
	var site string
	if kv, ok, err := s.st.Get(api.KindNode + "/" + node); err == nil && ok {
		var n api.Node
		if json.Unmarshal(kv.Value, &n) == nil {
			site = n.Spec.Site
		}
	}
	for _, o := range eps {
		e := o.(*api.Endpoint)
		acct := e.Spec.ServiceAccount
		if acct == "" {
			acct = e.Spec.Service
		}
		if e.Spec.Node != node || api.NamespaceOr(e.Meta.Namespace) != ns || acct != sa {
			continue
		}
		for _, so := range svcs {
			svc := so.(*api.Service)
			if svc.Meta.Name == e.Spec.Service && api.NamespaceOr(svc.Meta.Namespace) == ns && svc.AllowsAccount(sa) && svc.AllowsSite(site) {
				return true
			}
		}
	}
	return false
}
