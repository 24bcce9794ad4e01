package relay

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// TestRelayRefusesRevokedRegion: a relay trusting the global root accepts
// a node certified by a regional intermediate, and refuses it (reason
// revoked) once the region is on its deny list, while nodes of the root
// still connect.
func TestRelayRefusesRevokedRegion(t *testing.T) {
	f := newFixture(t, nil)
	key, _ := identity.NewKey()
	der, _ := identity.NewCSR(key)
	csr, _ := identity.ParseCSR(der)
	inter, err := f.ca.SignIntermediateCSR(csr, "east", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	east, err := identity.OpenIntermediateCA(identity.CAConfig{}, []*x509.Certificate{inter}, key, f.ca.Roots())
	if err != nil {
		t.Fatal(err)
	}
	if c, err := f.dial(source(t, east, "site-e", "e1")); err != nil {
		t.Fatalf("a node of the region before its revocation: %v", err)
	} else {
		c.Close()
	}
	region, _ := identity.RegionID(f.td, "east")
	f.srv.SetDenied([]string{region.String()})
	if _, err := f.dial(source(t, east, "site-e", "e2")); err == nil {
		t.Fatal("a node of the revoked region connected")
	}
	waitFor(t, "revoked counted", func() bool { return f.metric(refused(identity.ReasonRevoked)) == 1 })
	if c, err := f.dial(source(t, f.ca, "site-a", "a1")); err != nil {
		t.Fatalf("a node of the root after the region's revocation: %v", err)
	} else {
		c.Close()
	}
}
