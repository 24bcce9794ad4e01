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
	sv.bySubset = subsetViews(sv, p)
	if effectivePolicy(sv, "") != sv || effectivePolicy(sv, "v1") != sv || effectivePolicy(sv, "nope") != sv {
		t.Fatal("without a subset policy the service's view is in force")
	}
	v2 := effectivePolicy(sv, "v2").svc.Spec
	if v2.Balancer != "round-robin" || v2.OutlierDetection.ConsecutiveErrors != 2 ||
		v2.CircuitBreaker != (api.CircuitBreaker{MaxConnections: 1, ConnectTimeout: api.Duration(250 * time.Millisecond)}) ||
		v2.Timeouts.Connect != api.Duration(250*time.Millisecond) || v2.HashKey == nil {
		t.Fatalf("v2: %+v", v2)
	}
	if k := effectivePolicy(sv, "v2").limitKey; k != "shop/r|v2" {
		t.Errorf("v2 counts apart: limitKey %q", k)
	}
	v3 := effectivePolicy(sv, "v3")
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
