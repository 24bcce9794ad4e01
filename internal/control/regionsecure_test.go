package control

import (
	"crypto/ecdsa"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
)

// TestSecureRegionReplicates: in secure mode (the default) a regional
// plane that joined with a region token replicates over mutual TLS with
// its region certificate: its exported service reaches the global plane
// and the global plane's service reaches it. The replication ALPN refuses
// a node certificate, and revoking the region ends the link.
func TestSecureRegionReplicates(t *testing.T) {
	g := startSecure(t)
	tok, _ := g.CreateToken(identity.TokenRegion, "east", "", time.Minute)
	r, err := startRegional(t, t.TempDir(), "east", g.SyncAddr(), tok)
	if err != nil {
		t.Fatal(err)
	}
	apply := func(s *Server, doc string) {
		t.Helper()
		objs, err := api.Decode([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.reg.apply(objs); err != nil {
			t.Fatal(err)
		}
	}
	apply(r, svcDoc("orders", `,"export":["*"]`, 80))
	apply(g, svcDoc("catalog", "", 81))
	waitHeld(t, g, "Service/demo/orders", "east", nil)
	waitHeld(t, r, "Service/demo/catalog", "", nil)
	if st := r.Upstream(); !st.Connected {
		t.Fatalf("upstream status %+v", st)
	}
	// The region's own audit chain goes up on the link, with the key
	// that signs its checkpoints.
	if err := r.Audit(audit.Record{Kind: audit.KindAdmin, Actor: "test", Action: "apply", Object: "Service/demo/orders"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the region's own chain at the global plane", func() bool {
		last, _ := r.audit.log.Last()
		seq, _, _ := g.heldChain(r.cfg.Name)
		return last > 0 && seq == last
	})
	g.mu.Lock()
	gotKey := g.audit.keys[r.cfg.Name]
	g.mu.Unlock()
	if want := r.cfg.AuditSigner.Public().(*ecdsa.PublicKey); gotKey == nil || !want.Equal(gotKey) {
		t.Fatalf("the global plane holds key %v for %s, want the region's audit key", gotKey, r.cfg.Name)
	}

	// A node of the global root may not open a replication link.
	node, _ := g.CA().NodeSource("s1", "n1")
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", g.SyncAddr(),
		node.ClientConfig(identity.AuthorizeID(identity.ControlID(g.CA().TrustDomain())), identity.ALPNRegionSync))
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1)) // TLS 1.3: the refusal comes with the first read
		c.Close()
	}
	if err == nil {
		t.Fatal("a node certificate opened a region replication link")
	}

	if _, err := g.revokeRegion("east"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the revoked region's replication link to drop", func() bool { return !r.Upstream().Connected })
	apply(r, svcDoc("late", `,"export":["*"]`, 82))
	// The region redials at once and is refused at the handshake (TLS
	// 1.3: the client learns it at its first read).
	waitFor(t, 20*time.Second, "the redial to be refused", func() bool {
		st := r.Upstream()
		return !st.Connected && strings.Contains(st.Error, "bad certificate")
	})
	if held(g, "Service/demo/late") != nil {
		t.Fatal("a revoked region's change reached the global plane")
	}
}
