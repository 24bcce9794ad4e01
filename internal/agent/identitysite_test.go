package agent

import (
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
)

// TestServiceSitesBoundRemoteEndpoints: a service's spec.identity.sites
// bounds where its endpoints may run. The control plane checks an agent's
// endpoints when they are registered, but one registered before the
// service existed (or before its sites were narrowed) stays stored and
// reaches every agent: such an endpoint must neither be routed to nor let
// its node vouch for the service's identity.
func TestServiceSitesBoundRemoteEndpoints(t *testing.T) {
	self := &api.Node{Meta: api.Meta{Name: "me"}, Spec: api.NodeSpec{Site: "s1", Region: "r1"}}
	res := newResources()
	res.put(&api.Service{Meta: api.Meta{Name: "pay", Namespace: "prod"}, Spec: api.ServiceSpec{
		Ports:    []api.ServicePort{{Name: "http", Port: 80}},
		Identity: &api.ServiceIdentity{Sites: []string{"cloud"}}}, Status: api.ServiceStatus{VIPIndex: 1}})
	for _, n := range []struct{ name, site string }{{"in", "cloud"}, {"out", "shop"}} {
		res.put(&api.Node{Meta: api.Meta{Name: n.name}, Spec: api.NodeSpec{Site: n.site, Region: "r1", MeshAddress: "127.0.0.1:1"},
			Status: api.NodeStatus{Ready: true}})
		res.put(&api.Endpoint{Meta: api.Meta{Name: "pay-" + n.name, Namespace: "prod"}, Spec: api.EndpointSpec{Service: "pay", Node: n.name,
			Address: "127.0.0.1", Ports: []api.EndpointPort{{Name: "http", Port: 1}}, ServiceAccount: "pay"}, Status: api.EndpointStatus{Healthy: true}})
	}
	v := buildView(self, res, nil, testPrefix4, testPrefix6, "fogmesh.local")
	id := "spiffe://fogmesh.local/ns/prod/sa/pay"
	if !v.nodeIDs["in"][id] {
		t.Errorf("node in an allowed site may not vouch for %s", id)
	}
	if v.nodeIDs["out"][id] {
		t.Errorf("node out, at site shop which spec.identity.sites does not allow, may vouch for %s", id)
	}
	var got []string
	for _, ev := range v.services["prod/pay"].endpoints {
		got = append(got, ev.ep.Meta.Name)
	}
	if len(got) != 1 || got[0] != "pay-in" {
		t.Errorf("endpoints routed to: %v, want only pay-in (pay-out's site is not allowed)", got)
	}
}
