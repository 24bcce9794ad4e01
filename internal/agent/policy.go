package agent

import (
	"net"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
)

// The traffic policy in force for a request: the service's own settings,
// overridden by its DestinationPolicy, overridden again by the policy of
// the subset a route sends the request to (Istio's
// subsets[].trafficPolicy: "policies specified for subsets will not take
// effect until a route rule explicitly sends traffic to this subset").
// Balancing, outlier detection, the circuit breaker and the upstream pools
// all read sv.svc.Spec, so a subset with a policy of its own gets a view of
// its own whose svc carries the merged settings (subsetView), and
// effectivePolicy is where a request's view is chosen.

// effectivePolicy returns the view whose svc.Spec is the traffic policy in
// force for requests sent to subset of sv ("": the service as a whole):
// balancer, hash key, outlier detection, circuit breaker and pool
// settings. Endpoints are not filtered: the caller keeps the subset's
// (withLabels).
func effectivePolicy(sv *serviceView, subset string) *serviceView {
	if d := sv.bySubset[subset]; d != nil {
		return d
	}
	return sv
}

// withPolicy returns a copy of svc with what p sets overridden (each set
// field replaces the service's whole, as Istio merges a subset's
// trafficPolicy into the DestinationRule's).
func withPolicy(svc *api.Service, p *api.DestinationPolicySpec) *api.Service {
	out := *svc
	if p.Balancer != "" {
		out.Spec.Balancer = p.Balancer
	}
	if p.MinHealthyShare > 0 {
		out.Spec.MinHealthyShare = p.MinHealthyShare
	}
	if p.HashKey != nil {
		out.Spec.HashKey = p.HashKey
	}
	if p.OutlierDetection != nil {
		out.Spec.OutlierDetection = *p.OutlierDetection
	}
	if cb := p.CircuitBreaker; cb != nil {
		out.Spec.CircuitBreaker = *cb
		if cb.ConnectTimeout > 0 {
			out.Spec.Timeouts.Connect = cb.ConnectTimeout
		}
	}
	return &out
}

// subsetViews builds the views of p's subsets that have a policy of their
// own, once sv is complete (its endpoints sorted). A subset with its own
// circuit breaker counts its requests apart from the service's (Istio: a
// subset is a cluster of its own).
func subsetViews(sv *serviceView, p *api.DestinationPolicy) map[string]*serviceView {
	var m map[string]*serviceView
	for _, ss := range p.Spec.Subsets {
		if ss.Policy == nil {
			continue
		}
		d := &serviceView{
			svc: withPolicy(sv.svc, ss.Policy), route: sv.route, subsets: sv.subsets, sessions: sv.sessions,
			vip4: sv.vip4, vip6: sv.vip6, endpoints: sv.endpoints, callerLabels: sv.callerLabels,
			limitKey: sv.limitKey,
		}
		if ss.Policy.CircuitBreaker != nil {
			d.limitKey = sv.svc.Meta.Key() + "|" + ss.Name
		}
		if m == nil {
			m = map[string]*serviceView{}
		}
		m[ss.Name] = d
	}
	return m
}

// eachDestination calls f for every service view and every subset view
// of v: everything an upstream pool may have been made for.
func (v *view) eachDestination(f func(sv *serviceView)) {
	for _, sv := range v.services {
		f(sv)
		for _, d := range sv.bySubset {
			f(d)
		}
	}
}

// keepAliveConfig is Go's form of a circuit breaker's tcpKeepalive (nil:
// Go's default, 15 s idle and interval); a zero field keeps the system's
// setting, as Istio's does.
func keepAliveConfig(ka *api.TCPKeepalive) net.KeepAliveConfig {
	if ka == nil {
		return net.KeepAliveConfig{}
	}
	orSystem := func(d api.Duration) time.Duration {
		if d <= 0 {
			return -1
		}
		return time.Duration(d)
	}
	probes := ka.Probes
	if probes <= 0 {
		probes = -1
	}
	return net.KeepAliveConfig{Enable: true, Idle: orSystem(ka.Time), Interval: orSystem(ka.Interval), Count: probes}
}
