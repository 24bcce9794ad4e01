package control

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestStaleRegionalCertificateCannotUndoAMove: a node of west's CA that
// the operator moves to east (it joins again at the global plane with a
// token of east) cannot move itself back with the certificate west's CA
// issued it before the move: that hello is refused, and its new
// certificate keeps working as east. Before, the old certificate's hello
// moved the binding back to west (admitted with west's view, where the
// operator had taken it out), and the node's current certificate was then
// refused as east: the operator's move was undone by the node, and a
// renewal on that stream kept it in west for good.
func TestStaleRegionalCertificateCannotUndoAMove(t *testing.T) {
	g := startSecure(t)
	rtok, _ := g.CreateToken(identity.TokenRegion, "west", "", time.Minute)
	w, err := startRegional(t, t.TempDir(), "west", g.SyncAddr(), rtok)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := w.CreateJoinToken("s1", "", time.Minute)
	_, old := joinIn(t, w, tok, "n1", "s1", "west")
	if old == nil || identity.IssuingRegion(old.Certificates) != "west" {
		t.Fatal("n1 did not join at west's plane")
	}
	a, m := helloIn(t, g, old, "n1", "s1", "west")
	if m.Type != wire.TypeWelcome {
		t.Fatalf("n1 of west's CA as west: %+v", m)
	}
	a.c.Close()
	offline(t, g, "n1")
	// Certificates carry whole seconds: the move comes a second after
	// the old certificate was issued.
	issued := old.Certificates[0].NotBefore.Add(identity.ClockSkew)
	testenv.WaitFor(t, 5*time.Second, "a second past the old certificate", func() bool {
		return time.Now().After(issued.Add(time.Second))
	})
	etok, _ := g.CreateJoinToken("s1", "east", time.Minute)
	_, moved := joinIn(t, g, etok, "n1", "s1", "east")
	if moved == nil {
		t.Fatal("n1 did not join again in east")
	}

	a, m = helloIn(t, g, old, "n1", "s1", "west")
	if m.Type == wire.TypeWelcome {
		t.Fatal("n1's certificate from before its move to east was admitted as west")
	}
	if m.Type != wire.TypeError || !strings.Contains(m.Error, "node n1 was moved to region east") {
		t.Fatalf("refusal: %+v", m)
	}
	a.c.Close()
	a, m = helloIn(t, g, moved, "n1", "s1", "east")
	if m.Type != wire.TypeWelcome {
		t.Fatalf("n1's current certificate as east: %+v", m)
	}
	a.c.Close()
	offline(t, g, "n1")

	// Joined again at west's plane after the move: its new certificate
	// moves it back.
	testenv.WaitFor(t, 5*time.Second, "a second past the move", func() bool {
		return time.Now().After(moved.Certificates[0].NotBefore.Add(identity.ClockSkew + time.Second))
	})
	tok, _ = w.CreateJoinToken("s1", "", time.Minute)
	_, back := joinIn(t, w, tok, "n1", "s1", "west")
	if back == nil {
		t.Fatal("n1 did not join again at west's plane")
	}
	if _, m := helloIn(t, g, back, "n1", "s1", "west"); m.Type != wire.TypeWelcome {
		t.Fatalf("n1's certificate from west's CA after the move back: %+v", m)
	}
}

// TestRenewalWaitsForTheRegionalBinding: the global plane renews a node
// of west's CA from the root (a certificate naming no region) only once
// the node's binding to west is recorded. While the store cannot record
// it, the hello is served (its certificate says west) but the renewal is
// refused, so the node keeps its certificate from west's CA. Before, the
// renewal went through, and once its node record was gone (deleted as a
// stale node's is) the node's next hello, with the root's certificate and
// no binding, bound it to whatever region it named.
func TestRenewalWaitsForTheRegionalBinding(t *testing.T) {
	dir := t.TempDir()
	bst, err := store.Open(filepath.Join(dir, "fogmesh.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fs := &faultStore{Backend: bst}
	g := serveControl(t, Config{StateDir: dir, AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, Store: fs})
	rtok, _ := g.CreateToken(identity.TokenRegion, "west", "", time.Minute)
	w, err := startRegional(t, t.TempDir(), "west", g.SyncAddr(), rtok)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := w.CreateJoinToken("s1", "", time.Minute)
	_, svid := joinIn(t, w, tok, "n2", "s1", "west")
	if svid == nil {
		t.Fatal("n2 did not join at west's plane")
	}
	fs.failWhen(func(tx *store.SecureTx) error {
		if tx.Get(keyNodeRegion+"n2") != nil {
			return errStoreFault
		}
		return nil
	})
	a, m := helloIn(t, g, svid, "n2", "s1", "west")
	if m.Type != wire.TypeWelcome {
		t.Fatalf("n2 of west's CA as west, its binding not recorded: %+v", m)
	}
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	a.send(&wire.Message{Type: wire.TypeRenew, CSR: csr})
	cm := readUntil(t, a.r, "the renewal's answer", func(m *wire.Message) bool { return m.Type == wire.TypeCert || m.Type == wire.TypeError })
	if cm.Type == wire.TypeCert {
		certs, _ := identity.ParseDERs(cm.Certificates)
		renewed, _ := identity.NewSVID(certs, key)
		a.c.Close()
		offline(t, g, "n2")
		fs.failWhen(nil)
		if _, err := g.st.Update(func(tx *store.Tx) error { return tx.Delete(api.KindNode + "/n2") }); err != nil {
			t.Fatal(err)
		}
		_, m := helloIn(t, g, renewed, "n2", "s1", "east")
		t.Fatalf("renewed from the root without n2's binding to west; its hello as east then: %s %s", m.Type, m.Error)
	}
	if !strings.Contains(cm.Error, "region west") {
		t.Fatalf("renewal refusal: %+v", cm)
	}
	// Once the store records it, the renewal goes through.
	fs.failWhen(nil)
	a.send(&wire.Message{Type: wire.TypeRenew, CSR: csr})
	cm = readUntil(t, a.r, "the renewal's answer", func(m *wire.Message) bool { return m.Type == wire.TypeCert || m.Type == wire.TypeError })
	if cm.Type != wire.TypeCert {
		t.Fatalf("renewal with the store back: %+v", cm)
	}
}

// TestRevokedRegionTakesItsRenewedNodes: a node of west's CA whose
// certificate the global plane renewed from the root still descends from
// west's CA (its binding says so): once region west is revoked, its hello
// and its renewal are refused, and it can come back only by joining again.
// Before, the root's certificate outlived the revocation and was renewed
// for good: a node minted by a compromised regional CA, renewed once at
// the global plane, survived the region's revocation.
func TestRevokedRegionTakesItsRenewedNodes(t *testing.T) {
	// Heartbeats far apart: a stream that ends within the test's wait was
	// closed, not dropped as silent.
	g := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 10 * time.Second})
	rtok, _ := g.CreateToken(identity.TokenRegion, "west", "", time.Minute)
	w, err := startRegional(t, t.TempDir(), "west", g.SyncAddr(), rtok)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := w.CreateJoinToken("s1", "", time.Minute)
	_, svid := joinIn(t, w, tok, "n3", "s1", "west")
	if svid == nil {
		t.Fatal("n3 did not join at west's plane")
	}
	a, m := helloIn(t, g, svid, "n3", "s1", "west")
	if m.Type != wire.TypeWelcome {
		t.Fatalf("n3 of west's CA as west: %+v", m)
	}
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	a.send(&wire.Message{Type: wire.TypeRenew, CSR: csr})
	cm := readUntil(t, a.r, "renewed certificate", func(m *wire.Message) bool { return m.Type == wire.TypeCert || m.Type == wire.TypeError })
	certs, _ := identity.ParseDERs(cm.Certificates)
	renewed, err := identity.NewSVID(certs, key)
	if cm.Type != wire.TypeCert || err != nil {
		t.Fatalf("renewal at the global plane: %+v %v", cm, err)
	}
	a.c.Close()
	offline(t, g, "n3")
	a, m = helloIn(t, g, renewed, "n3", "s1", "west")
	if m.Type != wire.TypeWelcome {
		t.Fatalf("n3's renewed certificate as west: %+v", m)
	}

	if _, err := g.revokeRegion("west"); err != nil {
		t.Fatal(err)
	}
	// Its open stream is closed.
	a.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, err := a.r.Read(); err != nil {
			if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
				t.Fatal("n3's stream, of a certificate renewed from west's, still open after west was revoked")
			}
			break
		}
	}
	offline(t, g, "n3")
	a, m = helloIn(t, g, renewed, "n3", "s1", "west")
	if m.Type == wire.TypeWelcome {
		a.send(&wire.Message{Type: wire.TypeRenew, CSR: csr})
		cm := readUntil(t, a.r, "renewal", func(m *wire.Message) bool { return m.Type == wire.TypeCert || m.Type == wire.TypeError })
		t.Fatalf("n3's root certificate, renewed from west's, admitted after west was revoked (a renewal then: %s %s)", cm.Type, cm.Error)
	}
	if m.Type != wire.TypeError || !strings.Contains(m.Error, "region west's CA, which is revoked") {
		t.Fatalf("refusal: %+v", m)
	}
	// A join with a token of the global plane takes it back.
	gtok, _ := g.CreateJoinToken("s1", "east", time.Minute)
	_, back := joinIn(t, g, gtok, "n3", "s1", "east")
	if back == nil {
		t.Fatal("n3 did not join again at the global plane")
	}
	if _, m := helloIn(t, g, back, "n3", "s1", "east"); m.Type != wire.TypeWelcome {
		t.Fatalf("n3 joined again in east: %+v", m)
	}
}

// TestRevokedRegionTakesRenewalsOfTokenBoundNodes: a node bound to west
// by a join with a token at the global plane, that then holds a
// certificate of west's CA (joined at west's plane, or minted there by
// whoever holds that CA) and has it renewed at the global plane, is
// refused once west is revoked, like any node renewed from west's CA.
// Before, its binding by the token hid where the renewed certificate
// came from.
func TestRevokedRegionTakesRenewalsOfTokenBoundNodes(t *testing.T) {
	g := startSecure(t)
	rtok, _ := g.CreateToken(identity.TokenRegion, "west", "", time.Minute)
	w, err := startRegional(t, t.TempDir(), "west", g.SyncAddr(), rtok)
	if err != nil {
		t.Fatal(err)
	}
	gtok, _ := g.CreateJoinToken("s1", "west", time.Minute)
	if _, first := joinIn(t, g, gtok, "n4", "s1", "west"); first == nil {
		t.Fatal("n4 did not join at the global plane")
	}
	tok, _ := w.CreateJoinToken("s1", "", time.Minute)
	_, svid := joinIn(t, w, tok, "n4", "s1", "west")
	if svid == nil {
		t.Fatal("n4 did not join at west's plane")
	}
	a, m := helloIn(t, g, svid, "n4", "s1", "west")
	if m.Type != wire.TypeWelcome {
		t.Fatalf("n4 of west's CA as west: %+v", m)
	}
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	a.send(&wire.Message{Type: wire.TypeRenew, CSR: csr})
	cm := readUntil(t, a.r, "renewed certificate", func(m *wire.Message) bool { return m.Type == wire.TypeCert || m.Type == wire.TypeError })
	certs, _ := identity.ParseDERs(cm.Certificates)
	renewed, err := identity.NewSVID(certs, key)
	if cm.Type != wire.TypeCert || err != nil {
		t.Fatalf("renewal at the global plane: %+v %v", cm, err)
	}
	a.c.Close()
	offline(t, g, "n4")
	if _, err := g.revokeRegion("west"); err != nil {
		t.Fatal(err)
	}
	if _, m := helloIn(t, g, renewed, "n4", "s1", "west"); m.Type != wire.TypeError || !strings.Contains(m.Error, "region west's CA, which is revoked") {
		t.Fatalf("n4's certificate renewed from west's CA's, after west was revoked: %+v", m)
	}
}

// TestRenewalKeepsTheMoveTime: a renewal at the global plane with an old
// certificate of the node's region does not take the binding back to
// before the operator's last move. n5 was in west (west's CA), then in
// east (east's CA), then moved back to west with a token at the global
// plane. Both old certificates predate that move; the west one matches
// its region and may be renewed, but the east one must stay refused.
// Before, the renewal rewrote the binding as "regional CA west" dated by
// the old west certificate, older than the east one, which then moved
// the node to east: the operator's move undone with two stale
// certificates.
func TestRenewalKeepsTheMoveTime(t *testing.T) {
	g := startSecure(t)
	planes := map[string]*Server{}
	for _, r := range []string{"west", "east"} {
		rtok, _ := g.CreateToken(identity.TokenRegion, r, "", time.Minute)
		p, err := startRegional(t, t.TempDir(), r, g.SyncAddr(), rtok)
		if err != nil {
			t.Fatal(err)
		}
		planes[r] = p
	}
	after := func(svid *x509svid.SVID) {
		t.Helper()
		testenv.WaitFor(t, 5*time.Second, "a second past a certificate", func() bool {
			return time.Now().After(svid.Certificates[0].NotBefore.Add(identity.ClockSkew + time.Second))
		})
	}
	joinAt := func(region string) *x509svid.SVID {
		t.Helper()
		tok, _ := planes[region].CreateJoinToken("s1", "", time.Minute)
		_, svid := joinIn(t, planes[region], tok, "n5", "s1", region)
		if svid == nil || identity.IssuingRegion(svid.Certificates) != region {
			t.Fatalf("n5 did not join at %s's plane", region)
		}
		a, m := helloIn(t, g, svid, "n5", "s1", region)
		if m.Type != wire.TypeWelcome {
			t.Fatalf("n5 of %s's CA as %s: %+v", region, region, m)
		}
		a.c.Close()
		offline(t, g, "n5")
		after(svid)
		return svid
	}
	oldWest := joinAt("west")
	oldEast := joinAt("east")
	gtok, _ := g.CreateJoinToken("s1", "west", time.Minute)
	if _, moved := joinIn(t, g, gtok, "n5", "s1", "west"); moved == nil {
		t.Fatal("n5 did not join again in west")
	}

	a, m := helloIn(t, g, oldWest, "n5", "s1", "west")
	if m.Type != wire.TypeWelcome {
		t.Fatalf("n5's old certificate of west's CA as west: %+v", m)
	}
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	a.send(&wire.Message{Type: wire.TypeRenew, CSR: csr})
	readUntil(t, a.r, "the renewal's answer", func(m *wire.Message) bool { return m.Type == wire.TypeCert || m.Type == wire.TypeError })
	a.c.Close()
	offline(t, g, "n5")

	a, m = helloIn(t, g, oldEast, "n5", "s1", "east")
	if m.Type == wire.TypeWelcome {
		t.Fatal("n5's certificate of east's CA, from before its move to west, was admitted as east")
	}
	if m.Type != wire.TypeError || !strings.Contains(m.Error, "node n5 was moved to region west") {
		t.Fatalf("refusal: %+v", m)
	}
	a.c.Close()
}

// TestMoveToRegionalPlaneSaysWhatHoldsIt: a node that registered at the
// global plane and then joins a regional plane (a documented way to move
// it) is refused at that plane's hello while the global plane owns its
// record, which the region holds too. The agent is told why and what to
// do: delete the node's record at the plane that owns it. Before, the
// stream was closed with no answer (the agent saw EOF) and only the
// regional plane's log, at info, said why.
func TestMoveToRegionalPlaneSaysWhatHoldsIt(t *testing.T) {
	g := startSecure(t)
	rtok, _ := g.CreateToken(identity.TokenRegion, "west", "", time.Minute)
	w, err := startRegional(t, t.TempDir(), "west", g.SyncAddr(), rtok)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := g.CreateJoinToken("s1", "east", time.Minute)
	_, first := joinIn(t, g, tok, "m7", "s1", "east")
	if first == nil {
		t.Fatal("m7 did not join at the global plane")
	}
	a, m := helloIn(t, g, first, "m7", "s1", "east")
	if m.Type != wire.TypeWelcome {
		t.Fatalf("m7 at the global plane: %+v", m)
	}
	a.c.Close()
	offline(t, g, "m7")
	testenv.WaitFor(t, 5*time.Second, "m7's record at west's plane", func() bool {
		_, ok, err := w.st.Get(api.KindNode + "/m7")
		return err == nil && ok
	})

	wtok, _ := w.CreateJoinToken("s1", "", time.Minute)
	_, moved := joinIn(t, w, wtok, "m7", "s1", "west")
	if moved == nil {
		t.Fatal("m7 did not join at west's plane")
	}
	_, m = helloIn(t, w, moved, "m7", "s1", "west")
	if m.Type != wire.TypeError || !strings.Contains(m.Error, "owned by another control plane, the global control plane") ||
		!strings.Contains(m.Error, "fogmesh delete node m7") {
		t.Fatalf("m7 at west's plane, its record the global plane's: %+v", m)
	}

	// As it says: deleted at the global plane, it registers at west's.
	if _, err := g.reg.deleteObj(api.KindNode, "", "m7"); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "m7's record gone from west's plane", func() bool {
		_, ok, err := w.st.Get(api.KindNode + "/m7")
		return err == nil && !ok
	})
	if _, m := helloIn(t, w, moved, "m7", "s1", "west"); m.Type != wire.TypeWelcome {
		t.Fatalf("m7 at west's plane once its record was deleted at the global one: %+v", m)
	}
}
