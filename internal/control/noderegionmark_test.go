package control

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// forgetNode deletes node's record at the global plane g (as a stale
// node's is) and waits until the regional planes ps no longer hold it.
func forgetNode(t *testing.T, g *Server, node string, ps ...*Server) {
	t.Helper()
	if _, err := g.st.Update(func(tx *store.Tx) error { return tx.Delete(api.KindNode + "/" + node) }); err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		testenv.WaitFor(t, 5*time.Second, node+"'s record gone from a regional plane", func() bool {
			_, ok, err := p.st.Get(api.KindNode + "/" + node)
			return err == nil && !ok
		})
	}
}

// TestRenewedNodeStaysInItsRegionAtEveryPlane: a node of west's CA whose
// certificate the global plane renewed from the root (its regional plane
// down, say) is refused at east's regional plane naming east, with where
// to go, and is admitted where it belongs: the global plane naming west,
// and west's plane. Before, east's plane had no binding for it and the
// root's certificate named no region: its first hello there bound it to
// east, with east's services that are not exported.
func TestRenewedNodeStaysInItsRegionAtEveryPlane(t *testing.T) {
	g := startSecure(t)
	e := regionalPlane(t, g, "east")
	w := regionalPlane(t, g, "west")
	objs, err := api.Decode([]byte(svcDoc("orders", "", 80)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.apply(objs); err != nil {
		t.Fatal(err)
	}
	a := welcomed(t, g, joinAtRegional(t, w, "w3", "west"), "w3", "west")
	fromRoot := renewed(a)
	leave(t, g, a, "w3")
	if r := identity.IssuingRegion(fromRoot.Certificates); r != "" {
		t.Fatalf("the global plane's renewal issued by region %q", r)
	}
	forgetNode(t, g, "w3", e, w)

	a, m := helloIn(t, e, fromRoot, "w3", "s1", "east")
	if m.Type == wire.TypeWelcome {
		t.Fatalf("w3, of west renewed by the global plane, was admitted at east's plane as east; it holds %v", viewOf(a))
	}
	if m.Type != wire.TypeError || !strings.Contains(m.Error, "node w3 is in region west") ||
		!strings.Contains(m.Error, "this control plane serves region east") ||
		!strings.Contains(m.Error, "connect its agent to region west's control plane or the global one") {
		t.Fatalf("refusal at east's plane: %+v", m)
	}
	a.c.Close()

	if _, m := helloIn(t, g, fromRoot, "w3", "s1", "east"); m.Type != wire.TypeError || !strings.Contains(m.Error, "node w3 is in region west") {
		t.Fatalf("hello as east at the global plane: %+v", m)
	}
	leave(t, g, welcomed(t, g, fromRoot, "w3", "west"), "w3")
	// Its record, the global plane's now, goes first (as for any move
	// between planes).
	forgetNode(t, g, "w3", w)
	welcomed(t, w, fromRoot, "w3", "west")
}

// TestRenewedNodeIsNotPlacedByClusterLabels: cluster labels cannot move a
// node of west's CA to east once the global plane renewed its
// certificate from the root, as they cannot while it holds the CA's: its
// hello is refused, naming the labels; labels of west admit it with
// west's view. Before, the root's certificate let the labels place it in
// east, with east's services that are not exported.
func TestRenewedNodeIsNotPlacedByClusterLabels(t *testing.T) {
	g := startSecure(t)
	putEastObjects(t, g)
	a := welcomed(t, g, joinAtRegional(t, regionalPlane(t, g, "west"), "k3", "west"), "k3", "west")
	fromRoot := renewed(a)
	leave(t, g, a, "k3")
	labelsRefuseThenAdmit(t, g, fromRoot, "k3")
}

// TestRegionalCACannotMintARegionMark: a certificate west's intermediate
// signed with a region mark for east is refused at east's plane's
// handshake, before any hello: the mark comes from the root only.
// Before, the mark meant nothing and only the hello was refused.
func TestRegionalCACannotMintARegionMark(t *testing.T) {
	g := startSecure(t)
	e := regionalPlane(t, g, "east")
	w := regionalPlane(t, g, "west")
	caKey, err := identity.ReadKeyFile(filepath.Join(w.cfg.StateDir, regionDirName, regionCAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := identity.NewKey()
	id, _ := identity.NodeID(g.CA().TrustDomain(), "s1", "x1")
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{OrganizationalUnit: []string{"region/east"}},
		URIs:      []*url.URL{id.URL()},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, w.CA().Certificate(), key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	forged, err := identity.NewSVID([]*x509.Certificate{leaf, w.CA().Certificate()}, key)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := syncDial(t, e, forged, "s1", "x1"); err == nil {
		t.Fatalf("a node marked east by west's CA got past east's handshake: %+v", m)
	}
	testenv.WaitFor(t, 5*time.Second, "the refusal counted", func() bool {
		return metricValue(t, e, `fogmesh_tls_handshake_failures_total{port="sync",reason="unauthorized"}`) >= 1
	})
}

// TestStaleRegionMarkCannotUndoAMove: a certificate the global plane
// renewed for a node of west (marked west) does not take the node back
// to west once the operator moved it to east (a join with a token of
// east): the mark is older than the move, as a regional CA's stale
// certificate is, and its hello is refused saying so.
func TestStaleRegionMarkCannotUndoAMove(t *testing.T) {
	g := startSecure(t)
	a := welcomed(t, g, joinAtRegional(t, regionalPlane(t, g, "west"), "m3", "west"), "m3", "west")
	fromRoot := renewed(a)
	leave(t, g, a, "m3")
	pastIssue(t, fromRoot)
	etok, _ := g.CreateJoinToken("s1", "east", time.Minute)
	if _, moved := joinIn(t, g, etok, "m3", "s1", "east"); moved == nil {
		t.Fatal("m3 did not join again in east")
	}
	a, m := helloIn(t, g, fromRoot, "m3", "s1", "west")
	if m.Type == wire.TypeWelcome {
		t.Fatal("m3's certificate marked west, from before its move to east, was admitted as west")
	}
	if m.Type != wire.TypeError || !strings.Contains(m.Error, "node m3 was moved to region east") ||
		!strings.Contains(m.Error, "its certificate from the root marked for region west") {
		t.Fatalf("refusal: %+v", m)
	}
	a.c.Close()
}

// TestRegionMarkIsAudited: the global plane's audit record of a
// certificate it renewed from the root for a node of west names the
// region it marked, as the certificate does: the root vouching for a
// node's region is a grant the audit trail keeps. Before, the record
// was that of any root certificate (ID, serial, expiry).
func TestRegionMarkIsAudited(t *testing.T) {
	g := startSecure(t)
	a := welcomed(t, g, joinAtRegional(t, regionalPlane(t, g, "west"), "u3", "west"), "u3", "west")
	fromRoot := renewed(a)
	serial := fromRoot.Certificates[0].SerialNumber.Text(16)
	recs, err := g.audit.log.ReadFrom(1, 10000)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Action == "issue node" && strings.Contains(r.Reason, "serial "+serial) {
			if !strings.Contains(r.Reason, "region mark west") {
				t.Fatalf("audit record of the marked renewal: %+v; want it to name the region mark west", r)
			}
			return
		}
	}
	t.Fatalf("no audit record of the renewal (serial %s) among %d", serial, len(recs))
}

// TestUnmarkedRenewalNotMarkedAgainstClusterLabels: a node of west's CA
// holding a root's certificate renewed before marks, which cluster
// labels place in east (as they place any root's certificate naming no
// region), asks the global plane to renew it: the renewal is refused,
// naming the labels and what to do, and the node keeps its certificate,
// admitted as before. Before, the global plane marked the renewal west
// from the node's binding: a certificate its next hello was refused with
// ("its cluster labels place it in region east"), issued by the plane
// that was serving it in east.
func TestUnmarkedRenewalNotMarkedAgainstClusterLabels(t *testing.T) {
	g := startSecure(t)
	leave(t, g, welcomed(t, g, joinAtRegional(t, regionalPlane(t, g, "west"), "k4", "west"), "k4", "west"), "k4")
	g.cluster.mu.Lock()
	g.cluster.topo = map[string]NodeTopology{"k4": {Region: "east"}}
	g.cluster.mu.Unlock()
	old := signNode(t, g.CA(), "s1", "k4", 0) // renewed before marks: names no region
	a := welcomed(t, g, old, "k4", "east")
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	if cm := renew(a, csr); cm.Type != wire.TypeError || !strings.Contains(cm.Error, "its cluster labels place it in region east") {
		if cm.Type == wire.TypeCert {
			certs, _ := identity.ParseDERs(cm.Certificates)
			mark, _ := identity.RegionMark(certs[0])
			t.Fatalf("k4, labelled east, renewed with region mark %q", mark)
		}
		t.Fatalf("renewal: %+v", cm)
	}
	leave(t, g, a, "k4")
	welcomed(t, g, old, "k4", "east")
}
