package control

import (
	"crypto/ecdsa"
	"crypto/tls"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// dialJoin sends join (its Type set to TypeJoin) on a join connection to
// s, pinned by join.Token as a joining client pins it, and returns the
// answer.
func dialJoin(t *testing.T, s *Server, join *wire.Message) *wire.Message {
	t.Helper()
	p, err := identity.ParseToken(join.Token)
	if err != nil {
		t.Fatal(err)
	}
	jc, err := tls.Dial("tcp", s.SyncAddr(), identity.JoinClientConfig(p.Pin, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer jc.Close()
	jc.SetDeadline(time.Now().Add(5 * time.Second))
	join.Type = wire.TypeJoin
	if err := wire.Write(jc, join); err != nil {
		t.Fatal(err)
	}
	m, err := wire.NewReader(jc).Read()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// joinedSVID is the SVID of key with the certificates of join answer m.
func joinedSVID(t *testing.T, m *wire.Message, key *ecdsa.PrivateKey) *x509svid.SVID {
	t.Helper()
	certs, err := identity.ParseDERs(m.Certificates)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := identity.NewSVID(certs, key)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

// joinAs runs a join with tok for node name at site and returns the answer.
func joinAs(t *testing.T, s *Server, tok, name, site string) *wire.Message {
	t.Helper()
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	return dialJoin(t, s, &wire.Message{Token: tok, CSR: csr,
		Node: &api.Node{Meta: api.Meta{Name: name}, Spec: api.NodeSpec{Site: site, Region: "r"}}})
}

// TestJoinCannotTakeOverNodeOfAnotherSite: a join token is bound to a
// site; it must not get a certificate for the name of a node registered at
// another site (whose endpoints, workload SVIDs and vouched identities go
// by node name), nor may such a certificate register over that node. A
// node of the token's own site may join again.
func TestJoinCannotTakeOverNodeOfAnotherSite(t *testing.T) {
	s := startSecure(t)
	if m, err := syncDial(t, s, signNode(t, s.CA(), "s2", "victim", 0), "s2", "victim"); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("victim: %v %+v", err, m)
	}
	tok, err := s.CreateToken(identity.TokenJoin, "s1", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if m := joinAs(t, s, tok, "victim", "s1"); m.Type != wire.TypeError || !strings.Contains(m.Error, "site s2") {
		t.Fatalf("join of s2's node with an s1 token: %+v", m)
	}
	// The token was not used up by the refusal.
	if m := joinAs(t, s, tok, "newcomer", "s1"); m.Type != wire.TypeJoined {
		t.Fatalf("join of a new node: %+v", m)
	}
	// A certificate for the name at another site cannot register over it.
	if m, err := syncDial(t, s, signNode(t, s.CA(), "s1", "victim", 0), "s1", "victim"); err == nil && m.Type == wire.TypeWelcome {
		t.Fatal("hello moved victim from s2 to s1")
	}
	kv, _, _ := s.st.Get(api.KindNode + "/victim")
	if !strings.Contains(string(kv.Value), `"site":"s2"`) {
		t.Fatalf("victim's record changed: %s", kv.Value)
	}
	// Re-joining at its own site is allowed once the node is offline; not
	// while it is connected.
	online := signNode(t, s.CA(), "s2", "busy", 0)
	src := identity.NewSource()
	src.SetBundles(s.CA().Bundle())
	src.SetSVID(online)
	c, err := tls.Dial("tcp", s.SyncAddr(), src.ClientConfig(identity.AuthorizeID(identity.ControlID(s.CA().TrustDomain())), identity.ALPNSync))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wire.Write(c, &wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapPolicy2},
		Node: &api.Node{Meta: api.Meta{Name: "busy"}, Spec: api.NodeSpec{Site: "s2", Region: "r", MeshAddress: "127.0.0.1:1"}}})
	if m, err := wire.NewReader(c).Read(); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("busy: %v %+v", err, m)
	}
	tokBusy, _ := s.CreateToken(identity.TokenJoin, "s2", "", time.Minute)
	if m := joinAs(t, s, tokBusy, "busy", "s2"); m.Type != wire.TypeError || !strings.Contains(m.Error, "is connected") {
		t.Fatalf("join over an online node: %+v", m)
	}
	waitCount(t, "victim offline", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.live["victim"] == nil || s.live["victim"].conns == 0
	})
	tok2, _ := s.CreateToken(identity.TokenJoin, "s2", "", time.Minute)
	if m := joinAs(t, s, tok2, "victim", "s2"); m.Type != wire.TypeJoined {
		t.Fatalf("re-join at its own site: %+v", m)
	}
}

// TestLabelMoveDenyListsTheOldIdentity: a node of a cluster source whose
// labels name another site joins there with a token of that site; its
// certificate of the old site, still valid, is deny-listed then (the
// control plane refuses it, agents get it in their trust), and the move is
// audited. Moving back lifts the record of the site it returns to.
func TestLabelMoveDenyListsTheOldIdentity(t *testing.T) {
	s := startSecure(t)
	oldCert := signNode(t, s.CA(), "s2", "mover", 0)
	if m, err := syncDial(t, s, oldCert, "s2", "mover"); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("mover at s2: %v %+v", err, m)
	}
	waitCount(t, "mover offline", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.live["mover"] == nil || s.live["mover"].conns == 0
	})
	setSite := func(site string) {
		s.cluster.mu.Lock()
		s.cluster.topo = map[string]NodeTopology{"mover": {Site: site}}
		s.cluster.mu.Unlock()
	}
	denied := func() []string {
		tr, _ := s.sec.currentTrust()
		return tr.Revoked
	}
	oldID := "spiffe://" + s.CA().TrustDomain().Name() + "/site/s2/node/mover"
	newID := "spiffe://" + s.CA().TrustDomain().Name() + "/site/s1/node/mover"
	setSite("s1")
	tok, _ := s.CreateToken(identity.TokenJoin, "s1", "", time.Minute)
	if m := joinAs(t, s, tok, "mover", "s1"); m.Type != wire.TypeJoined {
		t.Fatalf("join at the labelled site: %+v", m)
	}
	if d := denied(); !slices.Contains(d, oldID) || slices.Contains(d, newID) {
		t.Fatalf("deny list after the move: %v, want %s and not %s", d, oldID, newID)
	}
	if m, err := syncDial(t, s, oldCert, "s2", "mover"); err == nil && m.Type == wire.TypeWelcome {
		t.Fatal("the certificate of the old site still streams after the move")
	}
	if m, err := syncDial(t, s, signNode(t, s.CA(), "s1", "mover", 0), "s1", "mover"); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("mover at s1 after its move: %v %+v", err, m)
	}
	if !slices.ContainsFunc(ownRecords(s), func(r audit.Record) bool { return r.Action == "node moved site" && r.Object == "mover" }) {
		t.Error("the move is not in the audit chain")
	}
	waitCount(t, "mover offline again", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.live["mover"] == nil || s.live["mover"].conns == 0
	})
	setSite("s2")
	tok2, _ := s.CreateToken(identity.TokenJoin, "s2", "", time.Minute)
	if m := joinAs(t, s, tok2, "mover", "s2"); m.Type != wire.TypeJoined {
		t.Fatalf("join back at s2: %+v", m)
	}
	if d := denied(); slices.Contains(d, oldID) || !slices.Contains(d, newID) {
		t.Fatalf("deny list after moving back: %v, want %s and not %s", d, newID, oldID)
	}
	// Without labels, a node moves by being deleted and joining again: a
	// join at s1 lifts s1's record too (its new certificate names it).
	setSite("")
	if _, err := s.reg.deleteObj(api.KindNode, "", "mover"); err != nil {
		t.Fatal(err)
	}
	tok3, _ := s.CreateToken(identity.TokenJoin, "s1", "", time.Minute)
	if m := joinAs(t, s, tok3, "mover", "s1"); m.Type != wire.TypeJoined {
		t.Fatalf("join at s1 after a delete: %+v", m)
	}
	if d := denied(); slices.Contains(d, newID) {
		t.Fatalf("deny list after a delete and a join at s1: %v still has %s", d, newID)
	}
}
