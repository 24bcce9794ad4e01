package relay

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestRelayClosesRevokedRegionsOpenConnections: revoking a region (its
// intermediate's ID on the deny list) closes the open control connections
// of the nodes it certified, as revoking a node closes that node's, while
// a node of the root stays connected.
func TestRelayClosesRevokedRegionsOpenConnections(t *testing.T) {
	f := newFixture(t, nil)
	key, _ := identity.NewKey()
	der, _ := identity.NewCSR(key)
	csr, _ := identity.ParseCSR(der)
	inter, err := f.ca.SignIntermediateCSR(csr, "west", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	west, err := identity.OpenIntermediateCA(identity.CAConfig{}, []*x509.Certificate{inter}, key, f.ca.Roots())
	if err != nil {
		t.Fatal(err)
	}
	w1, err := f.dial(source(t, west, "site-w", "w1"))
	if err != nil {
		t.Fatal(err)
	}
	defer w1.Close()
	a1 := f.node("site-a", "a1")
	region, _ := identity.RegionID(f.td, "west")
	f.srv.SetDenied([]string{region.String()})
	testenv.WaitFor(t, 5*time.Second, "the revoked region's node disconnected", func() bool {
		select {
		case <-w1.Done():
			return true
		default:
			return false
		}
	})
	if _, err := a1.c.Ping(ctx20(t)); err != nil {
		t.Fatalf("the root's node lost its connection: %v", err)
	}
	if got := f.metric(refused(ReasonRevokedLive)); got != 1 {
		t.Errorf("revoked_live counted %v times, want 1", got)
	}
}
