package control

import (
	"crypto/tls"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// relayJoin sends a relay's join for name with tok (any kind) and returns
// the answer and the key.
func relayJoin(t *testing.T, s *Server, tok, name string) (*wire.Message, *x509svid.SVID) {
	t.Helper()
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	m := dialJoin(t, s, &wire.Message{Token: tok, CSR: csr, Relay: name})
	if m.Type != wire.TypeJoined {
		return m, nil
	}
	return m, joinedSVID(t, m, key)
}

// TestRelayJoinTokenKinds: the control plane itself (whatever the client
// checks) refuses a node's join token for a relay and a relay token for a
// node; a relay token gets a relay certificate once, with the trust
// document minus the gossip key.
func TestRelayJoinTokenKinds(t *testing.T) {
	s := startSecure(t)
	join, _ := s.CreateToken(identity.TokenJoin, "s1", "", time.Minute)
	rtok, err := s.CreateToken(identity.TokenRelay, "", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rtok, "fmr1.") {
		t.Fatalf("relay token %q", rtok)
	}
	if m, _ := relayJoin(t, s, join, "r1"); m.Type != wire.TypeError || !strings.Contains(m.Error, "relay joins with a relay token") {
		t.Fatalf("relay with a join token: %+v", m)
	}
	if m := joinAs(t, s, rtok, "n1", "s1"); m.Type != wire.TypeError || !strings.Contains(m.Error, "relay token cannot join a node") {
		t.Fatalf("node with a relay token: %+v", m)
	}
	if m, _ := relayJoin(t, s, rtok, "Not_A_Label"); m.Type != wire.TypeError || !strings.Contains(m.Error, "DNS label") {
		t.Fatalf("bad relay name: %+v", m)
	}
	m, svid := relayJoin(t, s, rtok, "r1")
	if m.Type != wire.TypeJoined {
		t.Fatalf("relay join: %+v", m)
	}
	if svid.ID.String() != "spiffe://"+s.CA().TrustDomain().Name()+"/relay/r1" {
		t.Fatalf("relay certificate for %s", svid.ID)
	}
	full, _ := s.sec.currentTrust()
	if len(full.GossipKey) == 0 || m.Trust == nil || len(m.Trust.GossipKey) != 0 || len(m.Trust.Bundles) == 0 {
		t.Fatalf("relay's trust %+v (the mesh has a gossip key: %v)", m.Trust, len(full.GossipKey) > 0)
	}
	if m, _ := relayJoin(t, s, rtok, "r2"); m.Type != wire.TypeError || !strings.Contains(m.Error, "already used") {
		t.Fatalf("reused relay token: %+v", m)
	}
	// The join token was not used up by the refusals: a node still joins.
	if m := joinAs(t, s, join, "n1", "s1"); m.Type != wire.TypeJoined {
		t.Fatalf("node join: %+v", m)
	}
}

// TestRelayStream: a relay certificate opens a relay stream (and only a
// relay certificate: not a node's; nor may a relay open a node's sync
// stream); the control plane pushes the trust document at once and again
// when a node is revoked, answers heartbeats and renews the certificate.
func TestRelayStream(t *testing.T) {
	s := startSecure(t)
	rtok, _ := s.CreateToken(identity.TokenRelay, "", "", time.Minute)
	_, rsvid := relayJoin(t, s, rtok, "r1")
	dial := func(svid *x509svid.SVID, alpn string) (*tls.Conn, error) {
		src := identity.NewSource()
		src.SetBundles(s.CA().Bundle())
		src.SetSVID(svid)
		cfg := src.ClientConfig(identity.AuthorizeID(identity.ControlID(s.CA().TrustDomain())), alpn)
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", s.SyncAddr(), cfg)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		// TLS 1.3: a refused client certificate shows on the first read.
		if _, err := wire.NewReader(c).Read(); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	if c, err := dial(signNode(t, s.CA(), "s1", "n1", 0), identity.ALPNRelay); err == nil {
		c.Close()
		t.Fatal("a node certificate opened a relay stream")
	}
	if m, err := syncDial(t, s, rsvid, "relay", "r1"); err == nil && m.Type == wire.TypeWelcome {
		t.Fatal("a relay certificate opened a node's sync stream")
	}

	src := identity.NewSource()
	src.SetBundles(s.CA().Bundle())
	src.SetSVID(rsvid)
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", s.SyncAddr(),
		src.ClientConfig(identity.AuthorizeID(identity.ControlID(s.CA().TrustDomain())), identity.ALPNRelay))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := wire.NewReader(c)
	m, err := r.Read()
	if err != nil || m.Type != wire.TypeTrust || len(m.Trust.GossipKey) != 0 {
		t.Fatalf("first frame %v %+v", err, m)
	}
	// A registered node is revoked: the new deny list is pushed.
	if m, err := syncDial(t, s, signNode(t, s.CA(), "s1", "victim", 0), "s1", "victim"); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("victim: %v %+v", err, m)
	}
	id, err := s.revokeNode("victim")
	if err != nil {
		t.Fatal(err)
	}
	for {
		m, err := r.Read()
		if err != nil {
			t.Fatalf("waiting for the revocation: %v", err)
		}
		if m.Type == wire.TypeTrust && slices.Contains(m.Trust.Revoked, id) {
			if len(m.Trust.GossipKey) != 0 {
				t.Fatal("gossip key sent to a relay")
			}
			break
		}
	}
	if err := wire.Write(c, &wire.Message{Type: wire.TypeHeartbeat}); err != nil {
		t.Fatal(err)
	}
	if m, err := r.Read(); err != nil || m.Type != wire.TypeHeartbeat {
		t.Fatalf("heartbeat answer %v %+v", err, m)
	}
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	if err := wire.Write(c, &wire.Message{Type: wire.TypeRenew, CSR: csr}); err != nil {
		t.Fatal(err)
	}
	m, err = r.Read()
	if err != nil || m.Type != wire.TypeCert {
		t.Fatalf("renew answer %v %+v", err, m)
	}
	certs, _ := identity.ParseDERs(m.Certificates)
	if svid, err := identity.NewSVID(certs, key); err != nil || svid.ID != rsvid.ID {
		t.Fatalf("renewed %v %v", svid, err)
	}
	// Anything else ends the stream.
	wire.Write(c, &wire.Message{Type: wire.TypeHello, Node: &api.Node{}})
	for {
		m, err := r.Read()
		if err != nil {
			break
		}
		if m.Type == wire.TypeError {
			continue
		}
	}
}
