package control

import (
	"crypto/tls"
	"crypto/x509"
	"slices"
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

// joinIn runs an agent's join with tok for node at site, declaring region,
// and returns the answer and, if it joined, the node's SVID.
func joinIn(t *testing.T, s *Server, tok, node, site, region string) (*wire.Message, *x509svid.SVID) {
	t.Helper()
	key, _ := identity.NewKey()
	p, err := identity.ParseToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	jc, err := tls.Dial("tcp", s.SyncAddr(), identity.JoinClientConfig(p.Pin, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer jc.Close()
	jc.SetDeadline(time.Now().Add(5 * time.Second))
	csr, _ := identity.NewCSR(key)
	if err := wire.Write(jc, &wire.Message{Type: wire.TypeJoin, Token: tok, CSR: csr,
		Node: &api.Node{Meta: api.Meta{Name: node}, Spec: api.NodeSpec{Site: site, Region: region}}}); err != nil {
		t.Fatal(err)
	}
	m, err := wire.NewReader(jc).Read()
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != wire.TypeJoined {
		return m, nil
	}
	var certs []*x509.Certificate
	for _, der := range m.Certificates {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	svid, err := identity.NewSVID(certs, key)
	if err != nil {
		t.Fatal(err)
	}
	return m, svid
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
