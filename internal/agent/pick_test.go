package agent

import (
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
)

func testView(t *testing.T, balancer string) (*Agent, *serviceView) {
	t.Helper()
	self := &api.Node{Meta: api.Meta{Name: "me"}, Spec: api.NodeSpec{Site: "s1", Region: "r1"}}
	res := newResources()
	svc := &api.Service{Meta: api.Meta{Name: "svc", Namespace: "ns"}, Spec: api.ServiceSpec{Balancer: balancer,
		Ports: []api.ServicePort{{Name: "p", Port: 80}}}, Status: api.ServiceStatus{VIPIndex: 1}}
	res.put(svc)
	for _, n := range []struct{ name, site, region string }{{"a", "s1", "r1"}, {"b", "s1", "r1"}, {"c", "s2", "r1"}, {"d", "s9", "r9"}} {
		res.put(&api.Node{Meta: api.Meta{Name: n.name}, Spec: api.NodeSpec{Site: n.site, Region: n.region, MeshAddress: "127.0.0.1:1"},
			Status: api.NodeStatus{Ready: true}})
		res.put(&api.Endpoint{Meta: api.Meta{Name: "e-" + n.name, Namespace: "ns"}, Spec: api.EndpointSpec{Service: "svc", Node: n.name,
			Address: "127.0.0.1", Ports: []api.EndpointPort{{Name: "p", Port: 1}}}, Status: api.EndpointStatus{Healthy: true}})
	}
	v := buildView(self, res, nil, testPrefix4, testPrefix6)
	a := &Agent{cfg: Config{EjectFor: Duration(time.Minute)}}
	return a, v.services["ns/svc"]
}

func order(evs []*endpointView) string {
	s := ""
	for _, e := range evs {
		s += e.ep.Spec.Node
	}
	return s
}

func TestPickTiersAndRoundRobin(t *testing.T) {
	a, sv := testView(t, "round-robin")
	seen := map[string]bool{}
	for i := 0; i < 4; i++ {
		o := order(a.pick(sv, "p"))
		if len(o) != 4 || o[2:] != "cd" {
			t.Fatalf("order %q: site tier (a,b) first, then c (region), then d", o)
		}
		seen[o[:2]] = true
	}
	if !seen["ab"] || !seen["ba"] {
		t.Fatalf("round robin did not rotate within the site tier: %v", seen)
	}
	a.eject(sv.endpoints[0]) // e-a
	a.eject(sv.endpoints[1]) // e-b
	if o := order(a.pick(sv, "p")); o != "cd" {
		t.Fatalf("after ejecting the site tier: %q", o)
	}
	if o := a.pick(sv, "nope"); len(o) != 0 {
		t.Fatalf("unknown port picked %v", o)
	}
}

func TestPickLeastConn(t *testing.T) {
	a, sv := testView(t, "least-conn")
	a.endpointActive("ns/e-a").Add(5)
	for i := 0; i < 3; i++ {
		if o := order(a.pick(sv, "p")); o[:2] != "ba" {
			t.Fatalf("least-conn picked %q, want b (0 active) before a (5)", o)
		}
	}
}
