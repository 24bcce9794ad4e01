package control

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// regionalPlane starts region's control plane under the global plane g,
// with a region token g issued.
func regionalPlane(t *testing.T, g *Server, region string) *Server {
	t.Helper()
	rtok, _ := g.CreateToken(identity.TokenRegion, region, "", time.Minute)
	p, err := startRegional(t, t.TempDir(), region, g.SyncAddr(), rtok)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// joinAtRegional joins node at site s1 at p, region's regional plane,
// with a token of p's, and returns its SVID (of region's CA).
func joinAtRegional(t *testing.T, p *Server, node, region string) *x509svid.SVID {
	t.Helper()
	tok, _ := p.CreateJoinToken("s1", "", time.Minute)
	m, svid := joinIn(t, p, tok, node, "s1", region)
	if svid == nil {
		t.Fatalf("%s did not join at %s's plane: %+v", node, region, m)
	}
	return svid
}

// welcomed opens node's stream at s with a hello naming region, and
// fails the test unless s welcomes it.
func welcomed(t *testing.T, s *Server, svid *x509svid.SVID, node, region string) *agentConn {
	t.Helper()
	a, m := helloIn(t, s, svid, node, "s1", region)
	if m.Type != wire.TypeWelcome {
		t.Fatalf("%s as %s: %+v", node, region, m)
	}
	return a
}

// renew asks for a certificate for csr on a's stream and returns the
// answer: a certificate, or an error.
func renew(a *agentConn, csr []byte) *wire.Message {
	a.t.Helper()
	a.send(&wire.Message{Type: wire.TypeRenew, CSR: csr})
	return readUntil(a.t, a.r, "the renewal's answer", func(m *wire.Message) bool { return m.Type == wire.TypeCert || m.Type == wire.TypeError })
}

// renewed renews on a's stream with a new key, and fails the test unless
// the control plane issues a certificate; it returns the new SVID.
func renewed(a *agentConn) *x509svid.SVID {
	a.t.Helper()
	key, _ := identity.NewKey()
	csr, _ := identity.NewCSR(key)
	cm := renew(a, csr)
	certs, _ := identity.ParseDERs(cm.Certificates)
	svid, err := identity.NewSVID(certs, key)
	if cm.Type != wire.TypeCert || err != nil {
		a.t.Fatalf("renewal: %+v %v", cm, err)
	}
	return svid
}

// leave closes a, node's stream at s, and waits until s has no stream
// of node's.
func leave(t *testing.T, s *Server, a *agentConn, node string) {
	t.Helper()
	a.c.Close()
	offline(t, s, node)
}

// pastIssue waits until a second past svid's issue: certificates carry
// whole seconds, so a binding made from now on is later than svid.
func pastIssue(t *testing.T, svid *x509svid.SVID) {
	t.Helper()
	testenv.WaitFor(t, 5*time.Second, "a second past a certificate", func() bool {
		return time.Now().After(svid.Certificates[0].NotBefore.Add(identity.ClockSkew + time.Second))
	})
}
