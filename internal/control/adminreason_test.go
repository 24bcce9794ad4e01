package control

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// TestAdminUnauthorizedCertCounted: a client certificate of the trust
// domain that is not an admin identity (a node's), and an admin one that
// a regional intermediate issued, are refused by the admin API and counted
// as port="admin",reason="unauthorized", not "other".
func TestAdminUnauthorizedCertCounted(t *testing.T) {
	s := startSecure(t)
	rkey, _ := identity.NewKey()
	der, _ := identity.NewCSR(rkey)
	csr, _ := identity.ParseCSR(der)
	inter, err := s.CA().SignIntermediateCSR(csr, "east", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	east, err := identity.OpenIntermediateCA(identity.CAConfig{}, []*x509.Certificate{inter}, rkey, s.CA().Roots())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(s.CA().Roots()[0])
	td := s.CA().TrustDomain()
	node, _ := identity.NodeID(td, "s1", "n1")
	admin, _ := identity.AdminID(td, "ops")
	for i, tc := range []struct {
		what string
		ca   *identity.CA
		id   spiffeid.ID
	}{
		{"a node's certificate", s.CA(), node},
		{"an admin certificate of a regional intermediate", east, admin},
	} {
		key, _ := identity.NewKey()
		certs, err := tc.ca.Sign(key.Public(), tc.id, identity.IssueOptions{TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots,
			Certificates: []tls.Certificate{{Certificate: identity.DERs(certs), PrivateKey: key}}}}}
		if resp, err := c.Get("https://" + s.AdminAddr() + "/v1/trust"); err == nil {
			resp.Body.Close()
			t.Fatalf("%s was served: %d", tc.what, resp.StatusCode)
		}
		waitFor(t, 5*time.Second, tc.what+` counted as port="admin",reason="unauthorized"`, func() bool {
			return adminRefused(t, s, identity.ReasonUnauthorized) == i+1
		})
		if n := adminRefused(t, s, identity.ReasonOther); n != 0 {
			t.Fatalf(`%s: %d refusals counted as port="admin",reason="other", want 0`, tc.what, n)
		}
	}
}
