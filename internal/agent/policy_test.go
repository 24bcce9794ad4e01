package agent

import (
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
)

// TestEffectivePolicy: a subset's policy overrides the service's, field by
// field as Istio merges a subset's trafficPolicy (each set field replaces
// the whole), only for that subset; a subset without one, or no subset,
// gets the service's view.
func TestEffectivePolicy(t *testing.T) {
	svc := &api.Service{Meta: api.Meta{Name: "r", Namespace: "shop"}, Spec: api.ServiceSpec{
		Balancer: "consistent-hash", HashKey: &api.HashKey{Header: "x-user"},
		Timeouts:         api.Timeouts{Connect: api.Duration(time.Second)},
		OutlierDetection: api.OutlierDetection{ConsecutiveErrors: 7},
		CircuitBreaker:   api.CircuitBreaker{MaxConnections: 100, MaxPendingRequests: 10},
	}}
	sv := &serviceView{svc: svc, limitKey: "shop/r", endpoints: []*endpointView{{key: "shop/a"}}}
	p := &api.DestinationPolicy{Spec: api.DestinationPolicySpec{Subsets: []api.Subset{
		{Name: "v1", Labels: map[string]string{"version": "v1"}},
		{Name: "v2", Labels: map[string]string{"version": "v2"}, Policy: &api.DestinationPolicySpec{
			Balancer:         "round-robin",
			OutlierDetection: &api.OutlierDetection{ConsecutiveErrors: 2},
			CircuitBreaker:   &api.CircuitBreaker{MaxConnections: 1, ConnectTimeout: api.Duration(250 * time.Millisecond)},
		}},
		{Name: "v3", Labels: map[string]string{"version": "v3"}, Policy: &api.DestinationPolicySpec{MinHealthyShare: 0.5}},
	}}}
	sv.dests = destViews(sv, p)
	if effectivePolicy(sv, "", "web") != sv || effectivePolicy(sv, "v1", "web") != sv || effectivePolicy(sv, "nope", "") != sv {
		t.Fatal("without a subset policy the service's view is in force")
	}
	v2 := effectivePolicy(sv, "v2", "web").svc.Spec
	if v2.Balancer != "round-robin" || v2.OutlierDetection.ConsecutiveErrors != 2 ||
		v2.CircuitBreaker != (api.CircuitBreaker{MaxConnections: 1, ConnectTimeout: api.Duration(250 * time.Millisecond)}) ||
		v2.Timeouts.Connect != api.Duration(250*time.Millisecond) || v2.HashKey == nil {
		t.Fatalf("v2: %+v", v2)
	}
	if d := effectivePolicy(sv, "v2", "web"); d.limitKey != "shop/r|v2|" || d.limitSubset != "v2" {
		t.Errorf("v2 counts apart: limitKey %q, subset %q", d.limitKey, d.limitSubset)
	}
	v3 := effectivePolicy(sv, "v3", "")
	if v3.svc.Spec.MinHealthyShare != 0.5 || v3.svc.Spec.Balancer != "consistent-hash" || v3.svc.Spec.CircuitBreaker.MaxConnections != 100 {
		t.Fatalf("v3 keeps what it does not set: %+v", v3.svc.Spec)
	}
	if v3.limitKey != "shop/r" || len(v3.endpoints) != 1 {
		t.Errorf("v3 shares the service's counters (%q) and endpoints (%d)", v3.limitKey, len(v3.endpoints))
	}
	if svc.Spec.Balancer != "consistent-hash" || svc.Spec.Timeouts.Connect != api.Duration(time.Second) {
		t.Error("the service's own spec changed")
	}
}

// TestLimits: which slots, queue and cap a circuit breaker gives a port,
// in fogmesh's model and in Envoy's.
func TestLimits(t *testing.T) {
	for _, c := range []struct {
		cb                     api.CircuitBreaker
		proto                  string
		slots, pending, reqCap int
	}{
		{api.CircuitBreaker{MaxRequests: 5, MaxPendingRequests: 2}, "http", 5, 2, 0},
		{api.CircuitBreaker{MaxRequests: 5, MaxConnections: 2}, "http", 2, 0, 0},
		{api.CircuitBreaker{MaxRequests: 5, MaxConnections: 2}, "grpc", 5, 0, 0},
		{api.CircuitBreaker{MaxConnections: 2}, "http2", 0, 0, 0},
		{api.CircuitBreaker{PendingFor: "connections", MaxConnections: 1, MaxPendingRequests: 1}, "http", 1, 1, 0},
		{api.CircuitBreaker{PendingFor: "connections", MaxConnections: 1}, "http", 1, int(^uint(0) >> 1), 0},
		{api.CircuitBreaker{PendingFor: "connections", MaxConnections: 1, MaxRequests: 3}, "http2", 0, int(^uint(0) >> 1), 3},
	} {
		s, p, r := limits(c.cb, c.proto)
		if s != c.slots || p != c.pending || r != c.reqCap {
			t.Errorf("%+v on %s: %d slots, %d pending, cap %d; want %d, %d, %d", c.cb, c.proto, s, p, r, c.slots, c.pending, c.reqCap)
		}
	}
}

// TestEffectivePolicyPorts: a port's settings apply after the policy's and
// before the subset's, a subset's port's last (Istio's merge); a port's
// pool counts apart.
func TestEffectivePolicyPorts(t *testing.T) {
	svc := &api.Service{Meta: api.Meta{Name: "db", Namespace: "shop"}, Spec: api.ServiceSpec{
		Ports:          []api.ServicePort{{Name: "sql", Port: 5432}, {Name: "web", Port: 8080}},
		Balancer:       "edge-aware",
		CircuitBreaker: api.CircuitBreaker{MaxConnections: 50},
	}}
	sv := &serviceView{svc: svc, limitKey: "shop/db"}
	cb := func(n int) *api.CircuitBreaker { return &api.CircuitBreaker{MaxConnections: n} }
	p := &api.DestinationPolicy{Spec: api.DestinationPolicySpec{
		Ports: []api.PortPolicy{{Port: 5432, Policy: api.DestinationPolicySpec{CircuitBreaker: cb(5), Balancer: "random"}}, {Port: 9999}},
		Subsets: []api.Subset{
			{Name: "a", Labels: map[string]string{"v": "a"}},
			{Name: "b", Labels: map[string]string{"v": "b"}, Policy: &api.DestinationPolicySpec{Balancer: "least-conn",
				Ports: []api.PortPolicy{{Port: 8080, Policy: api.DestinationPolicySpec{CircuitBreaker: cb(1)}}}}},
		},
	}}
	sv.dests = destViews(sv, p)
	for _, c := range []struct {
		subset, port string
		balancer     string
		maxConns     int
		limitKey     string
	}{
		{"", "web", "edge-aware", 50, "shop/db"},
		{"", "sql", "random", 5, "shop/db||sql"},
		{"a", "sql", "random", 5, "shop/db||sql"}, // no policy of its own: the port's
		{"b", "sql", "least-conn", 5, "shop/db|b|sql"},
		{"b", "web", "least-conn", 1, "shop/db|b|web"},
		{"b", "", "least-conn", 50, "shop/db"},
	} {
		d := effectivePolicy(sv, c.subset, c.port)
		if d.svc.Spec.Balancer != c.balancer || d.svc.Spec.CircuitBreaker.MaxConnections != c.maxConns || d.limitKey != c.limitKey {
			t.Errorf("(%q, %q): balancer %s, maxConnections %d, limitKey %q; want %s, %d, %q", c.subset, c.port,
				d.svc.Spec.Balancer, d.svc.Spec.CircuitBreaker.MaxConnections, d.limitKey, c.balancer, c.maxConns, c.limitKey)
		}
	}
}
