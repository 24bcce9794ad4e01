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

// TestEffectivePolicyPorts: a port's settings apply before the subset's,
// a subset's port's alone (Istio's merge: a port's settings do not
// inherit); a port's pool counts apart.
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
		{"b", "web", "edge-aware", 1, "shop/db|b|web"}, // the subset's port's alone: the service's balancer
		{"b", "", "least-conn", 50, "shop/db"},
	} {
		d := effectivePolicy(sv, c.subset, c.port)
		if d.svc.Spec.Balancer != c.balancer || d.svc.Spec.CircuitBreaker.MaxConnections != c.maxConns || d.limitKey != c.limitKey {
			t.Errorf("(%q, %q): balancer %s, maxConnections %d, limitKey %q; want %s, %d, %q", c.subset, c.port,
				d.svc.Spec.Balancer, d.svc.Spec.CircuitBreaker.MaxConnections, d.limitKey, c.balancer, c.maxConns, c.limitKey)
		}
	}
}

// TestEffectivePolicyPortsDoNotInherit: Istio: "Traffic settings specified
// at the destination-level will not be inherited when overridden by
// port-level settings, i.e. default values will be applied to fields
// omitted in port-level traffic policies" (reviewer's case: port 9090
// with a loadBalancer only kept the top level's pool and hash key).
func TestEffectivePolicyPortsDoNotInherit(t *testing.T) {
	objs, _, err := api.DecodeWithWarnings([]byte(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r, namespace: shop}
spec:
  host: r
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
    connectionPool: {http: {http2MaxRequests: 10}}
    outlierDetection: {consecutive5xxErrors: 3}
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: v1
    labels: {v: "1"}
    trafficPolicy:
      connectionPool: {tcp: {maxConnections: 7}}
      portLevelSettings:
      - port: {number: 8080}
        outlierDetection: {consecutive5xxErrors: 9}
`))
	if err != nil {
		t.Fatal(err)
	}
	p := objs[0].(*api.DestinationPolicy)
	svc := &api.Service{Meta: api.Meta{Name: "r", Namespace: "shop"}, Spec: api.ServiceSpec{
		Balancer: "edge-aware", Locality: api.LocalityTiers, Ports: []api.ServicePort{{Name: "web", Port: 8080}, {Name: "admin", Port: 9090}}}}
	sv := &serviceView{svc: withPolicy(svc, &p.Spec), base: svc, limitKey: "shop/r"}
	sv.dests = destViews(sv, p)
	d := effectivePolicy(sv, "", "admin").svc.Spec
	if d.CircuitBreaker.MaxRequests != 0 {
		t.Errorf("port 9090 (loadBalancer only) inherited the top-level connectionPool: maxRequests %d; Istio applies defaults", d.CircuitBreaker.MaxRequests)
	}
	if d.HashKey != nil || d.Balancer != "round-robin" {
		t.Errorf("port 9090: balancer %q, hash key %+v; want round-robin, none", d.Balancer, d.HashKey)
	}
	if d.Locality != api.LocalityNone {
		t.Errorf("port 9090 (no outlierDetection) prefers the nearest locality (%q); Istio: none", d.Locality)
	}
	if d.OutlierDetection.ConsecutiveErrors != -1 {
		t.Errorf("port 9090 inherited the top-level outlierDetection %+v; Istio: off", d.OutlierDetection)
	}
	if w := effectivePolicy(sv, "", "web").svc.Spec; w.CircuitBreaker.MaxRequests != 10 || w.HashKey == nil {
		t.Errorf("port 8080 (no port settings) lost the top level's: %+v", w)
	}
	// Subset v1 on 9090: the top level with 9090's merged in, then v1's pool.
	if s := effectivePolicy(sv, "v1", "admin").svc.Spec; s.CircuitBreaker.MaxConnections != 7 || s.HashKey != nil || s.OutlierDetection.ConsecutiveErrors != -1 {
		t.Errorf("v1 on 9090: %+v; want maxConnections 7, no hash key, detection off", s)
	}
	// Subset v1 on 8080: only its port's entry (outlierDetection 9).
	if s := effectivePolicy(sv, "v1", "web").svc.Spec; s.CircuitBreaker.MaxConnections != 0 || s.HashKey != nil || s.OutlierDetection.ConsecutiveErrors != 9 {
		t.Errorf("v1 on 8080: %+v; want no pool limits, no hash key, consecutive errors 9", s)
	}
}
