package control

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

func startSecure(t *testing.T) *Server {
	t.Helper()
	s := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond})
	return s
}

func signNode(t *testing.T, ca *identity.CA, site, node string, ttl time.Duration) *x509svid.SVID {
	t.Helper()
	key, _ := identity.NewKey()
	id, _ := identity.NodeID(ca.TrustDomain(), site, node)
	certs, err := ca.Sign(key.Public(), id, identity.IssueOptions{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	svid, _ := identity.NewSVID(certs, key)
	return svid
}

// asIsClientConfig is a client config for s's sync port that presents
// svid as it is, also expired: a Source withholds an expired certificate,
// an old agent or a hostile peer would not.
func asIsClientConfig(s *Server, svid *x509svid.SVID, alpn string) *tls.Config {
	src := identity.NewSource()
	src.SetBundles(s.CA().Bundle())
	src.SetSVID(svid)
	cfg := src.ClientConfig(identity.AuthorizeID(identity.ControlID(s.CA().TrustDomain())), alpn)
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	return cfg
}

// syncDial connects to the sync port as svid (nil: no certificate) and
// sends hello; it returns the first answer or the error.
func syncDial(t *testing.T, s *Server, svid *x509svid.SVID, site, node string) (*wire.Message, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{identity.ALPNSync}}
	if svid != nil {
		cfg = asIsClientConfig(s, svid, identity.ALPNSync)
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", s.SyncAddr(), cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	n := &api.Node{Meta: api.Meta{Name: node}, Spec: api.NodeSpec{Site: site, Region: "r", MeshAddress: "127.0.0.1:1"}}
	if err := wire.Write(c, &wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapPolicy2}, Node: n}); err != nil {
		return nil, err
	}
	return wire.NewReader(c).Read()
}

func waitCount(t *testing.T, what string, f func() bool) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if f() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestSyncPortRefusals: the sync port refuses a peer without a
// certificate, with one from another CA, an expired one, a revoked one,
// one whose hello names another node, and plaintext; each is counted.
func TestSyncPortRefusals(t *testing.T) {
	s := startSecure(t)
	ca := s.CA()
	if m, err := syncDial(t, s, signNode(t, ca, "s1", "good", 0), "s1", "good"); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("good node: %v %+v", err, m)
	}
	other, _ := identity.OpenCA(identity.CAConfig{Dir: t.TempDir()})
	cases := []struct {
		name   string
		svid   *x509svid.SVID
		reason string
	}{
		{"no certificate", nil, identity.ReasonNoCertificate},
		{"another CA", signNode(t, other, "s1", "x", 0), identity.ReasonUnknownAuthority},
		{"expired", signNode(t, ca, "s1", "x", time.Nanosecond), identity.ReasonExpired},
	}
	for _, c := range cases {
		time.Sleep(time.Millisecond)
		if m, err := syncDial(t, s, c.svid, "s1", "x"); err == nil && m.Type == wire.TypeWelcome {
			t.Fatalf("%s: welcomed", c.name)
		}
		waitCount(t, c.name, func() bool { return s.TLSFailures(c.reason) == 1 })
	}
	// A certificate for "good" cannot hello as another node.
	if m, err := syncDial(t, s, signNode(t, ca, "s1", "good", 0), "s1", "evil"); err == nil && m.Type != wire.TypeError {
		t.Fatalf("impersonation: %+v", m)
	}
	waitCount(t, "unauthorized", func() bool { return s.TLSFailures(identity.ReasonUnauthorized) == 1 })
	// Revoked.
	if _, err := s.revokeNode("good"); err != nil {
		t.Fatal(err)
	}
	if m, err := syncDial(t, s, signNode(t, ca, "s1", "good", 0), "s1", "good"); err == nil && m.Type == wire.TypeWelcome {
		t.Fatal("revoked node welcomed")
	}
	waitCount(t, "revoked", func() bool { return s.TLSFailures(identity.ReasonRevoked) == 1 })
	// Plaintext.
	c, err := net.Dial("tcp", s.SyncAddr())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("\x00\x00\x00\x10{\"type\":\"hello\"}"))
	c.Close()
	waitCount(t, "plaintext", func() bool { return s.TLSFailures(identity.ReasonNotTLS) == 1 })
	// Join refuses the revoked node too.
	tok, err := s.CreateToken(identity.TokenJoin, "s1", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := identity.ParseToken(tok)
	jc, err := tls.Dial("tcp", s.SyncAddr(), identity.JoinClientConfig(p.Pin, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer jc.Close()
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	wire.Write(jc, &wire.Message{Type: wire.TypeJoin, Token: tok, CSR: csr,
		Node: &api.Node{Meta: api.Meta{Name: "good"}, Spec: api.NodeSpec{Site: "s1", Region: "r"}}})
	m, err := wire.NewReader(jc).Read()
	if err != nil || m.Type != wire.TypeError || !strings.Contains(m.Error, "revoked") {
		t.Fatalf("join of a revoked node: %v %+v", err, m)
	}
}

// TestWorkloadSVIDOnlyForOwnEndpoints: on its mTLS stream a node gets an
// SVID for the identity of an endpoint it hosts, and is refused one for
// another node's workload, for an unknown identity, for an identity its
// endpoint's service does not allow, and with a bad CSR.
func TestWorkloadSVIDOnlyForOwnEndpoints(t *testing.T) {
	s := startSecure(t)
	objs, err := api.Decode([]byte(`[
{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"orders","namespace":"shop"},"spec":{"ports":[{"name":"http","port":80}],"identity":{"serviceAccounts":["orders-sa"]}}},
{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"cart","namespace":"shop"},"spec":{"ports":[{"name":"http","port":80}]}},
{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"cart-a","namespace":"shop"},"spec":{"service":"cart","node":"a","address":"10.0.0.3","ports":[{"name":"http","port":8080}],"serviceAccount":"root"}},
{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"pay","namespace":"shop"},"spec":{"ports":[{"name":"http","port":80}]}},
{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"orders-a","namespace":"shop"},"spec":{"service":"orders","node":"a","address":"10.0.0.1","ports":[{"name":"http","port":8080}],"serviceAccount":"orders-sa"}},
{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"pay-b","namespace":"shop"},"spec":{"service":"pay","node":"b","address":"10.0.0.2","ports":[{"name":"http","port":8080}]}}]`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.reg.apply(objs); err != nil {
		t.Fatal(err)
	}
	svid := signNode(t, s.CA(), "s1", "a", time.Hour)
	src := identity.NewSource()
	src.SetBundles(s.CA().Bundle())
	src.SetSVID(svid)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", s.SyncAddr(),
		src.ClientConfig(identity.AuthorizeID(identity.ControlID(s.CA().TrustDomain())), identity.ALPNSync))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	n := &api.Node{Meta: api.Meta{Name: "a"}, Spec: api.NodeSpec{Site: "s1", Region: "r", MeshAddress: "127.0.0.1:1"}}
	if err := wire.Write(c, &wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapPolicy2}, Node: n}); err != nil {
		t.Fatal(err)
	}
	r := wire.NewReader(c)
	welcome, err := r.Read()
	if err != nil || !slices.Contains(welcome.Features, wire.FeatureSVID) {
		t.Fatalf("welcome %+v %v: want feature svid", welcome, err)
	}
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	ask := func(nonce, ns, sa string, csr []byte) *wire.Message {
		t.Helper()
		if err := wire.Write(c, &wire.Message{Type: wire.TypeSVID, Nonce: nonce, CSR: csr,
			SVID: &wire.SVIDRequest{Namespace: ns, ServiceAccount: sa}}); err != nil {
			t.Fatal(err)
		}
		for {
			m, err := r.Read()
			if err != nil {
				t.Fatal(err)
			}
			if m.Type == wire.TypeSVIDIssued && m.Nonce == nonce {
				return m
			}
		}
	}
	m := ask("1", "shop", "orders-sa", csr)
	if m.Error != "" || len(m.Certificates) == 0 {
		t.Fatalf("own identity refused: %+v", m)
	}
	certs, _ := identity.ParseDERs(m.Certificates)
	if got := certs[0].URIs[0].String(); got != "spiffe://fogmesh.local/ns/shop/sa/orders-sa" {
		t.Fatalf("issued %s", got)
	}
	// A batch: the one key, consecutive SVIDs covering the autonomy
	// window (72 h) and a ninth more, each half a TTL after the one before.
	if !slices.Contains(welcome.Features, wire.FeatureSVIDBatch) {
		t.Fatalf("welcome features %v: want %s", welcome.Features, wire.FeatureSVIDBatch)
	}
	if err := wire.Write(c, &wire.Message{Type: wire.TypeSVID, Nonce: "b", CSR: csr,
		SVID: &wire.SVIDRequest{Namespace: "shop", ServiceAccount: "orders-sa", Batch: true}}); err != nil {
		t.Fatal(err)
	}
	var batch *wire.Message
	for batch == nil {
		m, err := r.Read()
		if err != nil {
			t.Fatal(err)
		}
		if m.Type == wire.TypeSVIDIssued && m.Nonce == "b" {
			batch = m
		}
	}
	ders, err := wire.SVIDChains(batch)
	if err != nil || batch.Error != "" {
		t.Fatalf("batch: %v %s", err, batch.Error)
	}
	if want := identity.WorkloadBatchSize(time.Hour, 81*time.Hour); len(ders) != want {
		t.Fatalf("batch of %d SVIDs, want %d", len(ders), want)
	}
	var prev *x509.Certificate
	for i, d := range ders {
		cs, err := identity.ParseDERs(d)
		if err != nil {
			t.Fatal(err)
		}
		leaf := cs[0]
		if leaf.URIs[0].String() != "spiffe://fogmesh.local/ns/shop/sa/orders-sa" || !key.PublicKey.Equal(leaf.PublicKey) {
			t.Fatalf("SVID %d of the batch is for %s or another key", i, leaf.URIs[0])
		}
		if prev != nil && leaf.NotBefore.Sub(prev.NotBefore) != 30*time.Minute {
			t.Fatalf("SVID %d starts %s after the one before", i, leaf.NotBefore.Sub(prev.NotBefore))
		}
		prev = leaf
	}
	if time.Until(prev.NotAfter) < 81*time.Hour {
		t.Fatalf("the batch ends at %s", prev.NotAfter)
	}
	for _, c := range []struct {
		nonce, ns, sa string
		csr           []byte
		want          string
	}{
		{"2", "shop", "pay", csr, "no endpoint with identity"},
		{"3", "shop", "nobody", csr, "no endpoint with identity"},
		{"5", "shop", "root", csr, "no endpoint with identity"}, // on node a, but service cart does not allow it
		{"4", "shop", "orders-sa", []byte("not a csr"), "bad certificate request"},
	} {
		if m := ask(c.nonce, c.ns, c.sa, c.csr); !strings.Contains(m.Error, c.want) || len(m.Certificates) != 0 {
			t.Errorf("%s/%s: answer %+v, want refusal naming %q", c.ns, c.sa, m, c.want)
		}
	}
}

// TestGossipKeyStableUntilRevoke: refreshing trust (every 5 s in maintain)
// neither changes the gossip key nor writes to the store; revoking a node
// replaces the key, which the revoked node knew.
func TestGossipKeyStableUntilRevoke(t *testing.T) {
	s := startSecure(t)
	k1, _ := s.sec.currentTrust()
	if len(k1.GossipKey) != 32 {
		t.Fatalf("gossip key of %d bytes", len(k1.GossipKey))
	}
	db := filepath.Join(s.cfg.StateDir, "fogmesh.db")
	before, _ := os.Stat(db)
	for range 3 {
		if err := s.sec.refreshTrust(); err != nil {
			t.Fatal(err)
		}
	}
	if after, _ := os.Stat(db); !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
		t.Fatalf("refreshing trust wrote to the store (%v -> %v)", before.ModTime(), after.ModTime())
	}
	if m, err := syncDial(t, s, signNode(t, s.CA(), "s1", "gone", 0), "s1", "gone"); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("register gone: %v %+v", err, m)
	}
	if _, err := s.revokeNode("gone"); err != nil {
		t.Fatal(err)
	}
	k2, _ := s.sec.currentTrust()
	if bytes.Equal(k1.GossipKey, k2.GossipKey) || len(k2.GossipKey) != 32 {
		t.Fatal("revoking a node kept the gossip key")
	}
}

// TestLifetimeValidation: node TTL, workload TTL and autonomy window that
// would not carry a site through its autonomy window are refused with a
// reason; defaults fill in.
func TestLifetimeValidation(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"window above half the node TTL", Config{NodeTTL: 100 * time.Hour, AutonomyWindow: 72 * time.Hour}, "exceeds half the nodeTTL"},
		{"workload TTL too short", Config{WorkloadTTL: time.Minute, AutonomyWindow: 72 * time.Hour}, "too short for autonomyWindow"},
		{"workload TTL below 2s", Config{WorkloadTTL: time.Second}, "below 2s"},
		{"negative", Config{AutonomyWindow: -time.Hour}, "negative"},
	} {
		c.cfg.StateDir = t.TempDir()
		if err := c.cfg.validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	cfg := Config{StateDir: t.TempDir()}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.NodeTTL != 7*24*time.Hour || cfg.WorkloadTTL != time.Hour || cfg.AutonomyWindow != 72*time.Hour {
		t.Fatalf("defaults: node %s workload %s window %s", cfg.NodeTTL, cfg.WorkloadTTL, cfg.AutonomyWindow)
	}
	short := Config{StateDir: t.TempDir(), NodeTTL: 20 * time.Second}
	if err := short.validate(); err != nil || short.AutonomyWindow != 10*time.Second {
		t.Fatalf("a 20 s node TTL: window %s, %v", short.AutonomyWindow, err)
	}
	if _, err := New(Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0", NodeTTL: 10 * 24 * time.Hour}); err == nil ||
		!strings.Contains(err.Error(), "must exceed the node TTL") {
		t.Fatalf("a 10-day node TTL with the default rotation overlap: %v", err)
	}
}
