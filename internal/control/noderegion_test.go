package control

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// joinIn runs an agent's join with tok for node at site, declaring region,
// and returns the answer and, if it joined, the node's SVID.
func joinIn(t *testing.T, s *Server, tok, node, site, region string) (*wire.Message, *x509svid.SVID) {
	t.Helper()
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	m := dialJoin(t, s, &wire.Message{Token: tok, CSR: csr,
		Node: &api.Node{Meta: api.Meta{Name: node}, Spec: api.NodeSpec{Site: site, Region: region}}})
	if m.Type != wire.TypeJoined {
		return m, nil
	}
	return m, joinedSVID(t, m, key)
}

// helloIn opens node's mutually authenticated sync stream with a hello
// naming region, and returns the stream and the control plane's first
// frame (a welcome, or an error).
func helloIn(t *testing.T, s *Server, svid *x509svid.SVID, node, site, region string) (*agentConn, *wire.Message) {
	t.Helper()
	c, err := tls.Dial("tcp", s.SyncAddr(), asIsClientConfig(s, svid, identity.ALPNSync))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a := &agentConn{t: t, c: c, r: wire.NewReader(c)}
	a.send(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapPolicy2}, Node: &api.Node{
		Meta: api.Meta{Name: node}, Spec: api.NodeSpec{Site: site, Region: region, MeshAddress: "127.0.0.1:1"}}})
	return a, a.recv()
}

// putEastObjects stores region east's objects as its link would: a
// service only east sees (secret) and one exported to west (shared), an
// endpoint of each on east's node e1.
func putEastObjects(t *testing.T, s *Server) {
	t.Helper()
	objs := []api.Object{
		&api.Node{Meta: api.Meta{Name: "e1", Owner: "east"}, Spec: api.NodeSpec{Site: "e-site", Region: "east", MeshAddress: "127.0.0.1:2"}},
		&api.Service{Meta: api.Meta{Name: "secret", Namespace: "demo", Owner: "east"}, Spec: api.ServiceSpec{Ports: []api.ServicePort{{Name: "tcp", Port: 80}}}},
		&api.Service{Meta: api.Meta{Name: "shared", Namespace: "demo", Owner: "east"}, Spec: api.ServiceSpec{Ports: []api.ServicePort{{Name: "tcp", Port: 80}}, Export: []string{"west"}}},
		&api.Endpoint{Meta: api.Meta{Name: "secret-1", Namespace: "demo", Owner: "east"}, Spec: api.EndpointSpec{Service: "secret", Node: "e1", Address: "127.0.0.2", Ports: []api.EndpointPort{{Name: "tcp", Port: 9000}}}},
		&api.Endpoint{Meta: api.Meta{Name: "shared-1", Namespace: "demo", Owner: "east"}, Spec: api.EndpointSpec{Service: "shared", Node: "e1", Address: "127.0.0.2", Ports: []api.EndpointPort{{Name: "tcp", Port: 9001}}}},
	}
	for _, o := range objs {
		if err := validate(o); err != nil {
			t.Fatalf("test object %s: %v", api.ObjectKey(o), err)
		}
	}
	if _, err := s.st.Update(func(tx *store.Tx) error {
		for _, o := range objs {
			if err := putLocked(tx, o); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// viewOf subscribes a and returns the names of its first full update.
func viewOf(a *agentConn) []string {
	a.t.Helper()
	a.send(&wire.Message{Type: wire.TypeSubscribe})
	return names(a.recvUpdate())
}

// TestHelloCannotClaimAnotherRegion: a node enrolled in region west (its
// join declared west) that names region east in its hello to the global
// plane is refused, with an error naming both regions and how to move
// it; it gets none of east's objects. Before, its hello's region was
// taken as it came: it was admitted with east's view, east's unexported
// service and endpoint in it. Named as west it is admitted and gets what
// east exports to west only.
func TestHelloCannotClaimAnotherRegion(t *testing.T) {
	s := startSecure(t)
	putEastObjects(t, s)
	tok, err := s.CreateToken(identity.TokenJoin, "s1", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	_, svid := joinIn(t, s, tok, "w1", "s1", "west")
	if svid == nil {
		t.Fatal("w1 did not join")
	}
	a, m := helloIn(t, s, svid, "w1", "s1", "east")
	if m.Type == wire.TypeWelcome {
		got := viewOf(a)
		t.Fatalf("w1, enrolled in west, claimed east and was admitted; it holds %v (secret: %v)", got,
			slices.Contains(got, "Service demo/secret") || slices.Contains(got, "Endpoint demo/secret-1"))
	}
	if m.Type != wire.TypeError || !strings.Contains(m.Error, "region west") || !strings.Contains(m.Error, "east") ||
		!strings.Contains(m.Error, "-region east") {
		t.Fatalf("refusal: %+v", m)
	}
	if v := metricValue(t, s, "fogmesh_control_node_region_refusals_total"); v != 1 {
		t.Errorf("refusals counted: %v, want 1", v)
	}
	a, m = helloIn(t, s, svid, "w1", "s1", "west")
	if m.Type != wire.TypeWelcome {
		t.Fatalf("w1 as west: %+v", m)
	}
	got := viewOf(a)
	if slices.Contains(got, "Service demo/secret") || slices.Contains(got, "Endpoint demo/secret-1") ||
		!slices.Contains(got, "Service demo/shared") || !slices.Contains(got, "Endpoint demo/shared-1") {
		t.Fatalf("w1 as west holds %v; want shared and its endpoint, not secret", got)
	}
	testenv.WaitFor(t, 5*time.Second, "w1's record in region west", func() bool {
		kv, ok, _ := s.st.Get(api.KindNode + "/w1")
		return ok && strings.Contains(string(kv.Value), `"region":"west"`)
	})
}

// offline waits until node has no stream at s (a join needs that).
func offline(t *testing.T, s *Server, node string) {
	t.Helper()
	testenv.WaitFor(t, 5*time.Second, node+" offline", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.live[node] == nil || s.live[node].conns == 0
	})
}

// TestJoinTokenRegion: a join token that names a region (POST /v1/tokens,
// as `fogmesh token create -site S -region R`) joins only a node declaring
// that region, without being used up by a refusal; the node is bound to
// it, across a restart of the control plane.
func TestJoinTokenRegion(t *testing.T) {
	dir := t.TempDir()
	s := startSecureIn(t, dir)
	putEastObjects(t, s)
	admin, err := os.ReadFile(filepath.Join(dir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "https://"+s.AdminAddr()+"/v1/tokens",
		strings.NewReader(`{"kind":"join","site":"s1","region":"east","ttl":"1m"}`))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(admin)))
	resp, err := adminHTTP(t, s).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tr TokenResponse
	if err := json.NewDecoder(resp.Body).Decode(&tr); err != nil || resp.StatusCode != http.StatusOK || tr.Region != "east" {
		t.Fatalf("token create: %d %v %+v", resp.StatusCode, err, tr)
	}
	resp.Body.Close()
	if m, _ := joinIn(t, s, tr.Token, "e2", "s1", "west"); m.Type != wire.TypeError ||
		!strings.Contains(m.Error, "token is for region east, node e2 claims region west") {
		t.Fatalf("join declaring west with an east token: %+v", m)
	}
	m, svid := joinIn(t, s, tr.Token, "e2", "s1", "east")
	if svid == nil {
		t.Fatalf("join declaring east: %+v", m)
	}
	if _, m := helloIn(t, s, svid, "e2", "s1", "west"); m.Type != wire.TypeError || !strings.Contains(m.Error, "node e2 is in region east, its hello names region west") {
		t.Fatalf("hello as west: %+v", m)
	}
	a, m := helloIn(t, s, svid, "e2", "s1", "east")
	if m.Type != wire.TypeWelcome {
		t.Fatalf("hello as east: %+v", m)
	}
	if got := viewOf(a); !slices.Contains(got, "Service demo/secret") {
		t.Fatalf("e2 in east holds %v, without east's secret", got)
	}
	a.c.Close()
	s.Close()

	s = startSecureIn(t, dir)
	if _, m := helloIn(t, s, svid, "e2", "s1", "west"); m.Type != wire.TypeError || !strings.Contains(m.Error, "in region east") {
		t.Fatalf("hello as west after a restart: %+v", m)
	}
	if _, m := helloIn(t, s, svid, "e2", "s1", "east"); m.Type != wire.TypeWelcome {
		t.Fatalf("hello as east after a restart: %+v", m)
	}
}

// TestNodeMovesRegionByJoiningAgain: a node of west moves to east by
// joining again (offline) with a token of east: it is then bound to east,
// gets east's view, and its hello as west is refused; the move is
// audited. A region a regional control plane does not serve cannot be
// named by its tokens.
func TestNodeMovesRegionByJoiningAgain(t *testing.T) {
	s := startSecure(t)
	putEastObjects(t, s)
	tok, _ := s.CreateJoinToken("s1", "west", time.Minute)
	_, svid := joinIn(t, s, tok, "mover", "s1", "west")
	leave(t, s, welcomed(t, s, svid, "mover", "west"), "mover")
	tok, _ = s.CreateJoinToken("s1", "east", time.Minute)
	m, svid := joinIn(t, s, tok, "mover", "s1", "east")
	if svid == nil {
		t.Fatalf("join again in east: %+v", m)
	}
	// The audit log writes its records on its own goroutine.
	testenv.WaitFor(t, 5*time.Second, "the move in the audit chain", func() bool {
		return slices.ContainsFunc(ownRecords(s), func(r audit.Record) bool { return r.Action == "node moved region" && r.Object == "mover" })
	})
	if _, m := helloIn(t, s, svid, "mover", "s1", "west"); m.Type != wire.TypeError || !strings.Contains(m.Error, "in region east") {
		t.Fatalf("hello as west after the move: %+v", m)
	}
	a := welcomed(t, s, svid, "mover", "east")
	if got := viewOf(a); !slices.Contains(got, "Service demo/secret") {
		t.Fatalf("mover in east holds %v, without east's secret", got)
	}
}

// TestUnboundNodeTakesItsRegisteredRegion: a node with no binding (it
// joined before bindings were kept) is bound to the region of its stored
// record at its next hello, and a hello naming another is refused; a
// node neither bound nor stored is bound to the region its first hello
// names.
func TestUnboundNodeTakesItsRegisteredRegion(t *testing.T) {
	s := startSecure(t)
	putEastObjects(t, s)
	if err := s.reg.registerNode(&api.Node{Meta: api.Meta{Name: "old"}, Spec: api.NodeSpec{Site: "s1", Region: "west", MeshAddress: "127.0.0.1:1"}}); err != nil {
		t.Fatal(err)
	}
	cert := signNode(t, s.CA(), "s1", "old", 0)
	if _, m := helloIn(t, s, cert, "old", "s1", "east"); m.Type != wire.TypeError || !strings.Contains(m.Error, "node old is in region west") {
		t.Fatalf("hello of a west node as east: %+v", m)
	}
	if _, m := helloIn(t, s, cert, "old", "s1", "west"); m.Type != wire.TypeWelcome {
		t.Fatalf("hello as west: %+v", m)
	}
	fresh := signNode(t, s.CA(), "s1", "fresh", 0)
	a, m := helloIn(t, s, fresh, "fresh", "s1", "north")
	if m.Type != wire.TypeWelcome {
		t.Fatalf("first hello of an unknown node: %+v", m)
	}
	a.c.Close()
	offline(t, s, "fresh")
	if _, m := helloIn(t, s, fresh, "fresh", "s1", "east"); m.Type != wire.TypeError || !strings.Contains(m.Error, "in region north") {
		t.Fatalf("second hello naming another region: %+v", m)
	}
}

// TestClusterLabelsPlaceTheRegion: cluster labels naming a region place
// the node there whatever its hello names (the control plane trusts its
// cluster source for the registry), and its view is that region's.
// Before, the stream's view took the hello's region even when the labels
// placed the node elsewhere.
func TestClusterLabelsPlaceTheRegion(t *testing.T) {
	s := startSecure(t)
	putEastObjects(t, s)
	tok, _ := s.CreateJoinToken("s1", "west", time.Minute)
	_, svid := joinIn(t, s, tok, "k1", "s1", "west")
	setRegion := func(region string) {
		s.cluster.mu.Lock()
		s.cluster.topo = map[string]NodeTopology{"k1": {Region: region}}
		s.cluster.mu.Unlock()
	}
	setRegion("west")
	a, m := helloIn(t, s, svid, "k1", "s1", "east")
	if m.Type != wire.TypeWelcome {
		t.Fatalf("labelled node: %+v", m)
	}
	if got := viewOf(a); slices.Contains(got, "Service demo/secret") || !slices.Contains(got, "Service demo/shared") {
		t.Fatalf("k1, labelled west, hello east, holds %v; want west's view", got)
	}
	a.c.Close()
	offline(t, s, "k1")
	setRegion("east")
	a, m = helloIn(t, s, svid, "k1", "s1", "west")
	if m.Type != wire.TypeWelcome {
		t.Fatalf("labelled node: %+v", m)
	}
	if got := viewOf(a); !slices.Contains(got, "Service demo/secret") {
		t.Fatalf("k1, labelled east, holds %v; want east's view", got)
	}
}

// TestRegionalPlaneJoinsItsRegionOnly: a regional control plane's join
// tokens cannot name another region, and a join declaring another region
// is refused there (before, the node joined and only its hello was
// refused).
func TestRegionalPlaneJoinsItsRegionOnly(t *testing.T) {
	r := regionalPlane(t, startSecure(t), "east")
	if _, err := r.CreateJoinToken("s1", "west", time.Minute); err == nil || !strings.Contains(err.Error(), "serves region east") {
		t.Fatalf("a west token at east's plane: %v", err)
	}
	tok, err := r.CreateJoinToken("s1", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := joinIn(t, r, tok, "n1", "s1", "west"); m.Type != wire.TypeError || !strings.Contains(m.Error, "this control plane serves region east") {
		t.Fatalf("join declaring west at east's plane: %+v", m)
	}
	if m, svid := joinIn(t, r, tok, "n1", "s1", "east"); svid == nil {
		t.Fatalf("join declaring east: %+v", m)
	}
}

// TestRegionalCertificateFixesTheRegion: a node enrolled at region
// west's control plane (its certificate issued by west's intermediate CA)
// that connects straight to the global plane naming region east is
// refused, with an error naming west's CA; it is bound to west, not to
// the region its first hello names, so as west it gets west's view, and a
// certificate the global plane renews for it (issued by the root, marked
// for west) keeps it in west. Before, its first hello bound it to
// east: it held east's unexported service, and so did every certificate
// renewed for it.
func TestRegionalCertificateFixesTheRegion(t *testing.T) {
	g := startSecure(t)
	putEastObjects(t, g)
	svid := joinAtRegional(t, regionalPlane(t, g, "west"), "w1", "west")
	if identity.IssuingRegion(svid.Certificates) != "west" {
		t.Fatalf("join at west's plane: issued by region %q", identity.IssuingRegion(svid.Certificates))
	}
	a, m := helloIn(t, g, svid, "w1", "s1", "east")
	if m.Type == wire.TypeWelcome {
		got := viewOf(a)
		t.Fatalf("w1, of west's CA, named east at the global plane and was admitted; it holds %v (secret: %v)", got,
			slices.Contains(got, "Service demo/secret") || slices.Contains(got, "Endpoint demo/secret-1"))
	}
	if m.Type != wire.TypeError || !strings.Contains(m.Error, "node w1 is in region west (its certificate was issued by region west's CA), its hello names region east") ||
		!strings.Contains(m.Error, "-region west") {
		t.Fatalf("refusal: %+v", m)
	}
	if v := metricValue(t, g, "fogmesh_control_node_region_refusals_total"); v != 1 {
		t.Errorf("refusals counted: %v, want 1", v)
	}

	a = welcomed(t, g, svid, "w1", "west")
	fromRoot := renewed(a)
	leave(t, g, a, "w1")
	if r := identity.IssuingRegion(fromRoot.Certificates); r != "" {
		t.Fatalf("the global plane's renewal issued by region %q", r)
	}
	if _, m := helloIn(t, g, fromRoot, "w1", "s1", "east"); m.Type != wire.TypeError || !strings.Contains(m.Error, "node w1 is in region west") {
		t.Fatalf("hello as east with the root's renewal: %+v", m)
	}
	a = welcomed(t, g, fromRoot, "w1", "west")
	if got := viewOf(a); slices.Contains(got, "Service demo/secret") || !slices.Contains(got, "Service demo/shared") {
		t.Fatalf("w1 as west holds %v; want shared, not secret", got)
	}
}

// TestRegionalPlaneRefusesAnotherRegionsNode: a node of west's CA
// that connects to east's regional plane naming east is refused there: a
// regional plane's nodes are in its region, and this one's certificate
// says west. Before, east's plane admitted it (its hello named east) with
// east's view, east's unexported service in it.
func TestRegionalPlaneRefusesAnotherRegionsNode(t *testing.T) {
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
	svid := joinAtRegional(t, w, "w2", "west")
	a, m := helloIn(t, e, svid, "w2", "s1", "east")
	if m.Type == wire.TypeWelcome {
		t.Fatalf("w2, of west's CA, was admitted at east's plane as east; it holds %v", viewOf(a))
	}
	if m.Type != wire.TypeError || !strings.Contains(m.Error, "node w2 is in region west (its certificate was issued by region west's CA)") {
		t.Fatalf("refusal: %+v", m)
	}
	// What to do here: its agent with -region west would be refused by
	// this plane as well.
	if !strings.Contains(m.Error, "this control plane serves region east") || strings.Contains(m.Error, "run its agent with -region west") {
		t.Fatalf("refusal at east's plane says: %s", m.Error)
	}
}

// TestRegionalCertificateOverridesClusterLabels: cluster labels that
// place a node of west's CA in east refuse its hello (its certificate
// says west), whatever the hello names; labels placing it in west admit
// it with west's view. Before, the labels placed it in east, with east's
// unexported service.
func TestRegionalCertificateOverridesClusterLabels(t *testing.T) {
	g := startSecure(t)
	putEastObjects(t, g)
	svid := joinAtRegional(t, regionalPlane(t, g, "west"), "k2", "west")
	labelsRefuseThenAdmit(t, g, svid, "k2")
}

// labelsRefuseThenAdmit: node, of west (svid), is refused when cluster
// labels place it in east, whatever its hello names, and admitted with
// west's view when they place it in west (putEastObjects' services).
func labelsRefuseThenAdmit(t *testing.T, g *Server, svid *x509svid.SVID, node string) {
	t.Helper()
	setRegion := func(region string) {
		g.cluster.mu.Lock()
		g.cluster.topo = map[string]NodeTopology{node: {Region: region}}
		g.cluster.mu.Unlock()
	}
	setRegion("east")
	a, m := helloIn(t, g, svid, node, "s1", "west")
	if m.Type == wire.TypeWelcome {
		t.Fatalf("%s, of west, labelled east, was admitted; it holds %v", node, viewOf(a))
	}
	if m.Type != wire.TypeError || !strings.Contains(m.Error, "its cluster labels place it in region east") {
		t.Fatalf("refusal: %+v", m)
	}
	a.c.Close()
	setRegion("west")
	a, m = helloIn(t, g, svid, node, "s1", "east")
	if m.Type != wire.TypeWelcome {
		t.Fatalf("%s labelled west: %+v", node, m)
	}
	if got := viewOf(a); slices.Contains(got, "Service demo/secret") || !slices.Contains(got, "Service demo/shared") {
		t.Fatalf("%s labelled west holds %v; want west's view", node, got)
	}
}

// TestIssuingRegionIsTheVerifiedChains: the region of a node's CA is
// read from the chain its certificate verifies on. A root-issued node of
// east that sends west's intermediate besides its chain stays in east
// (its hello as west refused); the same node enrolled again at west's
// plane (a certificate of west's CA) is moved to west by its hello there
// (audited), and its old certificate from the root is then west's too.
func TestIssuingRegionIsTheVerifiedChains(t *testing.T) {
	g := startSecure(t)
	putEastObjects(t, g)
	w := regionalPlane(t, g, "west")
	tok, _ := g.CreateJoinToken("s1", "east", time.Minute)
	_, old := joinIn(t, g, tok, "m1", "s1", "east")
	if old == nil {
		t.Fatal("m1 did not join in east")
	}
	padded := &x509svid.SVID{ID: old.ID, PrivateKey: old.PrivateKey,
		Certificates: append(slices.Clip(old.Certificates), w.CA().Certificate())}
	if identity.IssuingRegion(padded.Certificates) != "west" {
		t.Fatal("the padded chain does not name west's CA")
	}
	if _, m := helloIn(t, g, padded, "m1", "s1", "west"); m.Type != wire.TypeError || !strings.Contains(m.Error, "node m1 is in region east, its hello names region west") {
		t.Fatalf("hello as west with west's CA sent besides a root chain: %+v", m)
	}

	moved := joinAtRegional(t, w, "m1", "west")
	a := welcomed(t, g, moved, "m1", "west")
	// The audit log writes its records on its own goroutine.
	testenv.WaitFor(t, 5*time.Second, "the move in the audit chain", func() bool {
		return slices.ContainsFunc(ownRecords(g), func(r audit.Record) bool {
			return r.Action == "node moved region" && r.Object == "m1" && strings.Contains(r.Reason, "region west's CA")
		})
	})
	leave(t, g, a, "m1")
	if _, m := helloIn(t, g, old, "m1", "s1", "east"); m.Type != wire.TypeError || !strings.Contains(m.Error, "node m1 is in region west") {
		t.Fatalf("the root's certificate of m1 as east after the move: %+v", m)
	}
}
