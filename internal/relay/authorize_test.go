package relay

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestAuthorizeRelay: agents accept a relay identity or a node identity
// (relays run from files) of their trust domain, and nothing else the mesh
// CA issues: not a workload, an admin or the control plane.
func TestAuthorizeRelay(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("mesh.test")
	auth := AuthorizeRelay(td)
	for id, ok := range map[string]bool{
		"spiffe://mesh.test/relay/r1":           true,
		"spiffe://mesh.test/site/relay/node/r1": true,
		"spiffe://mesh.test/ns/demo/sa/web":     false,
		"spiffe://mesh.test/admin/alice":        false,
		"spiffe://mesh.test/control":            false,
		"spiffe://mesh.test/relay/r1/extra":     false,
		"spiffe://other.test/relay/r1":          false,
	} {
		err := auth(spiffeid.RequireFromString(id), nil)
		if (err == nil) != ok {
			t.Errorf("%s: err %v, want accepted=%v", id, err, ok)
		}
	}
}
