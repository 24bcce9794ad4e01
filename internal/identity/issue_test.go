package identity

import (
	"crypto/x509"
	"testing"
)

// TestIssueSource: a node or relay Source issued straight from the CA
// holds that identity, chains to the CA and trusts its bundle; a bad name
// is refused.
func TestIssueSource(t *testing.T) {
	ca, err := OpenCA(CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	n, err := ca.NodeSource("shop-1", "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := NodeID(ca.TrustDomain(), "shop-1", "edge-1")
	if got := n.SVID().ID; got != want {
		t.Fatalf("node source is %s, want %s", got, want)
	}
	r, err := ca.RelaySource("r1")
	if err != nil {
		t.Fatal(err)
	}
	wantR, _ := RelayID(ca.TrustDomain(), "r1")
	if got := r.SVID().ID; got != wantR {
		t.Fatalf("relay source is %s, want %s", got, wantR)
	}
	for _, s := range []*Source{n, r} {
		if _, err := s.GetX509BundleForTrustDomain(ca.TrustDomain()); err != nil {
			t.Fatalf("source does not trust its CA: %v", err)
		}
		if !chainsToAny(s.SVID().Certificates[0], ca.Roots()) {
			t.Fatal("certificate does not chain to the CA")
		}
	}
	if _, err := ca.NodeSource("", "x"); err == nil {
		t.Fatal("empty site accepted")
	}
	if _, err := ca.RelaySource(""); err == nil {
		t.Fatal("empty relay name accepted")
	}
}

func chainsToAny(leaf *x509.Certificate, roots []*x509.Certificate) bool {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}
