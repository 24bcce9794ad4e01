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
	w := regionalPlane(t, g, "west")
	old := joinAtRegional(t, w, "n1", "west")
	if identity.IssuingRegion(old.Certificates) != "west" {
		t.Fatal("n1 did not join at west's plane")
	}
	leave(t, g, welcomed(t, g, old, "n1", "west"), "n1")
	// Certificates carry whole seconds: the move comes a second after
	// the old certificate was issued.
	pastIssue(t, old)
	etok, _ := g.CreateJoinToken("s1", "east", time.Minute)
	_, moved := joinIn(t, g, etok, "n1", "s1", "east")
	if moved == nil {
		t.Fatal("n1 did not join again in east")
	}

	a, m := helloIn(t, g, old, "n1", "s1", "west")
	if m.Type == wire.TypeWelcome {
		t.Fatal("n1's certificate from before its move to east was admitted as west")
	}
	if m.Type != wire.TypeError || !strings.Contains(m.Error, "node n1 was moved to region east") {
		t.Fatalf("refusal: %+v", m)
	}
	a.c.Close()
	leave(t, g, welcomed(t, g, moved, "n1", "east"), "n1")

	// Joined again at west's plane after the move: its new certificate
	// moves it back.
	pastIssue(t, moved)
	back := joinAtRegional(t, w, "n1", "west")
	welcomed(t, g, back, "n1", "west")
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
	svid := joinAtRegional(t, regionalPlane(t, g, "west"), "n2", "west")
	fs.failWhen(func(tx *store.SecureTx) error {
		if tx.Get(keyNodeRegion+"n2") != nil {
			return errStoreFault
		}
		return nil
	})
	a := welcomed(t, g, svid, "n2", "west")
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	if cm := renew(a, csr); cm.Type == wire.TypeCert {
		certs, _ := identity.ParseDERs(cm.Certificates)
		renewed, _ := identity.NewSVID(certs, key)
		leave(t, g, a, "n2")
		fs.failWhen(nil)
		if _, err := g.st.Update(func(tx *store.Tx) error { return tx.Delete(api.KindNode + "/n2") }); err != nil {
			t.Fatal(err)
		}
		_, m := helloIn(t, g, renewed, "n2", "s1", "east")
		t.Fatalf("renewed from the root without n2's binding to west; its hello as east then: %s %s", m.Type, m.Error)
	} else if !strings.Contains(cm.Error, "region west") {
		t.Fatalf("renewal refusal: %+v", cm)
	}
	// Once the store records it, the renewal goes through.
	fs.failWhen(nil)
	if cm := renew(a, csr); cm.Type != wire.TypeCert {
		t.Fatalf("renewal with the store back: %+v", cm)
	}
}

// TestRevokedRegionTakesItsRenewedNodes: a node of west's CA whose
// certificate the global plane renewed from the root still descends from
// west's CA (its certificate's mark and its binding say so): once region
// west is revoked, its open stream is closed, its handshake is refused
// (the mark names a revoked region), a root's certificate without the
// mark (renewed before marks) is refused at its hello and its renewal,
// and it can come back only by joining again. Before, the root's
// certificate outlived the revocation and was renewed for good: a node
// minted by a compromised regional CA, renewed once at the global plane,
// survived the region's revocation.
func TestRevokedRegionTakesItsRenewedNodes(t *testing.T) {
	// Heartbeats far apart: a stream that ends within the test's wait was
	// closed, not dropped as silent.
	g := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 10 * time.Second})
	svid := joinAtRegional(t, regionalPlane(t, g, "west"), "n3", "west")
	a := welcomed(t, g, svid, "n3", "west")
	fromRoot := renewed(a)
	leave(t, g, a, "n3")
	a = welcomed(t, g, fromRoot, "n3", "west")

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
	if m, err := syncDial(t, g, fromRoot, "s1", "n3"); err == nil {
		t.Fatalf("n3's certificate renewed from west's, marked west, past the handshake after west was revoked: %+v", m)
	}
	testenv.WaitFor(t, 5*time.Second, "the refusal counted as revoked", func() bool {
		return metricValue(t, g, `fogmesh_tls_handshake_failures_total{port="sync",reason="revoked"}`) >= 1
	})
	// Renewed before marks: the binding holds it.
	a, m := helloIn(t, g, signNode(t, g.CA(), "s1", "n3", 0), "n3", "s1", "west")
	if m.Type == wire.TypeWelcome {
		key, _ := identity.NewKey()
		csr, _ := identity.NewCSR(key)
		cm := renew(a, csr)
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
	welcomed(t, g, back, "n3", "east")
}

// TestRevokedRegionTakesRenewalsOfTokenBoundNodes: a node bound to west
// by a join with a token at the global plane, that then holds a
// certificate of west's CA (joined at west's plane, or minted there by
// whoever holds that CA) and has it renewed at the global plane, is
// refused once west is revoked, like any node renewed from west's CA:
// with the renewal's mark at the handshake, with a root's certificate
// renewed before marks at its hello. Before, its binding by the token hid
// where the renewed certificate came from.
func TestRevokedRegionTakesRenewalsOfTokenBoundNodes(t *testing.T) {
	g := startSecure(t)
	w := regionalPlane(t, g, "west")
	gtok, _ := g.CreateJoinToken("s1", "west", time.Minute)
	if _, first := joinIn(t, g, gtok, "n4", "s1", "west"); first == nil {
		t.Fatal("n4 did not join at the global plane")
	}
	svid := joinAtRegional(t, w, "n4", "west")
	a := welcomed(t, g, svid, "n4", "west")
	fromRoot := renewed(a)
	leave(t, g, a, "n4")
	if _, err := g.revokeRegion("west"); err != nil {
		t.Fatal(err)
	}
	if m, err := syncDial(t, g, fromRoot, "s1", "n4"); err == nil {
		t.Fatalf("n4's certificate renewed from west's CA's, marked west, past the handshake after west was revoked: %+v", m)
	}
	testenv.WaitFor(t, 5*time.Second, "the refusal counted as revoked", func() bool {
		return metricValue(t, g, `fogmesh_tls_handshake_failures_total{port="sync",reason="revoked"}`) >= 1
	})
	if _, m := helloIn(t, g, signNode(t, g.CA(), "s1", "n4", 0), "n4", "s1", "west"); m.Type != wire.TypeError || !strings.Contains(m.Error, "region west's CA, which is revoked") {
		t.Fatalf("n4's root certificate without a mark, after west was revoked: %+v", m)
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
	joinAt := func(region string) *x509svid.SVID {
		t.Helper()
		svid := joinAtRegional(t, regionalPlane(t, g, region), "n5", region)
		if identity.IssuingRegion(svid.Certificates) != region {
			t.Fatalf("n5 did not join at %s's plane", region)
		}
		leave(t, g, welcomed(t, g, svid, "n5", region), "n5")
		pastIssue(t, svid)
		return svid
	}
	oldWest := joinAt("west")
	oldEast := joinAt("east")
	gtok, _ := g.CreateJoinToken("s1", "west", time.Minute)
	if _, moved := joinIn(t, g, gtok, "n5", "s1", "west"); moved == nil {
		t.Fatal("n5 did not join again in west")
	}

	a := welcomed(t, g, oldWest, "n5", "west")
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	renew(a, csr)
	leave(t, g, a, "n5")

	a, m := helloIn(t, g, oldEast, "n5", "s1", "east")
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
	w := regionalPlane(t, g, "west")
	tok, _ := g.CreateJoinToken("s1", "east", time.Minute)
	_, first := joinIn(t, g, tok, "m7", "s1", "east")
	if first == nil {
		t.Fatal("m7 did not join at the global plane")
	}
	leave(t, g, welcomed(t, g, first, "m7", "east"), "m7")
	testenv.WaitFor(t, 5*time.Second, "m7's record at west's plane", func() bool {
		_, ok, err := w.st.Get(api.KindNode + "/m7")
		return err == nil && ok
	})

	moved := joinAtRegional(t, w, "m7", "west")
	_, m := helloIn(t, w, moved, "m7", "s1", "west")
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
	welcomed(t, w, moved, "m7", "west")
}
