package agent

import (
	"maps"
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
)

// TestIdentityLabels: a caller's labels are those every workload of its
// identity on the node carries, so a sourceLabels match never holds for a
// workload that lacks them.
func TestIdentityLabels(t *testing.T) {
	ep := func(name, svc string, labels map[string]string) api.Endpoint {
		return api.Endpoint{Meta: api.Meta{Name: name, Namespace: "shop", Labels: labels}, Spec: api.EndpointSpec{Service: svc}}
	}
	got := identityLabels("fogmesh.local", []api.Endpoint{
		ep("pp-1", "productpage", map[string]string{"app": "productpage", "version": "v1"}),
		ep("pp-2", "productpage", map[string]string{"app": "productpage", "version": "v2"}),
		ep("rv-1", "reviews", map[string]string{"app": "reviews"}),
	})
	want := map[string]map[string]string{
		"spiffe://fogmesh.local/ns/shop/sa/productpage": {"app": "productpage"},
		"spiffe://fogmesh.local/ns/shop/sa/reviews":     {"app": "reviews"},
	}
	if !maps.EqualFunc(got, want, maps.Equal) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for id, ns := range map[string]string{"spiffe://fogmesh.local/ns/shop/sa/x": "shop", "spiffe://td/ns/a": "a", "spiffe://td/x": "", "": ""} {
		if got := identityNamespace(id); got != ns {
			t.Errorf("identityNamespace(%q) = %q, want %q", id, got, ns)
		}
	}
}
