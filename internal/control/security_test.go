package control

import (
	"context"
	"crypto/tls"
	"net"
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
	s, err := New(Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Serve(context.Background()); close(done) }()
	t.Cleanup(func() { s.Close(); <-done })
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

// syncDial connects to the sync port as svid (nil: no certificate) and
// sends hello; it returns the first answer or the error.
func syncDial(t *testing.T, s *Server, svid *x509svid.SVID, site, node string) (*wire.Message, error) {
	src := identity.NewSource()
	src.SetBundles(s.CA().Bundle())
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{identity.ALPNSync}}
	if svid != nil {
		src.SetSVID(svid)
		cfg = src.ClientConfig(identity.AuthorizeID(identity.ControlID(s.CA().TrustDomain())), identity.ALPNSync)
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", s.SyncAddr(), cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	n := &api.Node{Meta: api.Meta{Name: node}, Spec: api.NodeSpec{Site: site, Region: "r", MeshAddress: "127.0.0.1:1"}}
	if err := wire.Write(c, &wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Node: n}); err != nil {
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
