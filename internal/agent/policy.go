package agent

import (
	"net"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
)

// The traffic policy in force for a request: the service's own settings,
// overridden by its DestinationPolicy's, then by the policy of the subset
// a route sends the request to (Istio's subsets[].trafficPolicy:
// "policies specified for subsets will not take effect until a route rule
// explicitly sends traffic to this subset"). A port's policy (Istio's
// portLevelSettings) does not inherit: "Traffic settings specified at the
// destination-level will not be inherited when overridden by port-level
// settings, i.e. default values will be applied to fields omitted in
// port-level traffic policies". So a top-level port's settings start from
// the service's own (balancer, hash key, locality, outlier detection,
// circuit breaker and connect timeout) before the subset's apply, and a
// subset's port's are, alone over the service's own, all that applies
// (Istio's MergeTrafficPolicy). Balancing, outlier detection, the circuit
// breaker and the upstream pools all read sv.svc.Spec, so each (subset,
// port) with settings of its own gets a view of its own whose svc carries
// the merged settings (destViews), and effectivePolicy is where a
// request's view is chosen.

// destKey names a destination within a service: a subset ("": none) and a
// service port by name ("": any).
type destKey struct{ subset, port string }

// effectivePolicy returns the view whose svc.Spec is the traffic policy in
// force for requests to subset ("": the service as a whole) on port (the
// service port's name): balancer, hash key, outlier detection, circuit
// breaker and pool settings. Endpoints are not filtered: the caller keeps
// the subset's (withLabels).
func effectivePolicy(sv *serviceView, subset, port string) *serviceView {
	for _, k := range [...]destKey{{subset, port}, {subset, ""}, {"", port}} {
		if d := sv.dests[k]; d != nil {
			return d
		}
	}
	return sv
}

// withPolicy returns a copy of svc with what p sets overridden (each set
// field replaces the service's whole, as Istio merges a subset's
// trafficPolicy into the DestinationRule's). Everything it sets is what a
// port's policy replaces (portPolicy).
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
	if p.Locality != "" {
		out.Spec.Locality = p.Locality
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

// portPolicy is a port's policy pp in force: over base, the service's
// own settings (before any policy), not the destination's (Istio: port-
// level settings do not inherit).
func portPolicy(base *api.Service, pp *api.DestinationPolicySpec) *api.Service {
	return withPolicy(base, pp)
}

// portPolicies returns a policy's port policies by service port name
// (ports the service does not have are left out).
func portPolicies(svc *api.Service, pps []api.PortPolicy) map[string]*api.DestinationPolicySpec {
	var m map[string]*api.DestinationPolicySpec
	for i := range pps {
		for _, sp := range svc.Spec.Ports {
			if sp.Port == pps[i].Port {
				if m == nil {
					m = map[string]*api.DestinationPolicySpec{}
				}
				m[sp.Name] = &pps[i].Policy
			}
		}
	}
	return m
}

// destViews builds the views of the destinations of sv with settings of
// their own under p, once sv is complete (its endpoints sorted), sv.svc
// already carrying p's own settings (sv.base: the service before them;
// nil: sv.svc). A destination whose circuit breaker
// is set at its subset or port level counts its requests apart (Istio: a
// subset, and a port, is a cluster of its own).
func destViews(sv *serviceView, p *api.DestinationPolicy) map[destKey]*serviceView {
	var m map[destKey]*serviceView
	add := func(k destKey, svc *api.Service, ownPool bool) {
		d := &serviceView{
			svc: svc, route: sv.route, subsets: sv.subsets, sessions: sv.sessions,
			vip4: sv.vip4, vip6: sv.vip6, endpoints: sv.endpoints, callerLabels: sv.callerLabels,
			limitKey: sv.limitKey,
			destKey:  sv.svc.Meta.Key() + "|" + k.subset + "|" + k.port, destSubset: k.subset,
		}
		if ownPool {
			d.limitKey, d.limitSubset = sv.limitKey+"|"+k.subset+"|"+k.port, k.subset
		}
		if m == nil {
			m = map[destKey]*serviceView{}
		}
		m[k] = d
	}
	base := sv.base
	if base == nil {
		base = sv.svc
	}
	top := portPolicies(sv.svc, p.Spec.Ports)
	for port, pp := range top {
		add(destKey{"", port}, portPolicy(base, pp), pp.CircuitBreaker != nil)
	}
	for _, ss := range p.Spec.Subsets {
		if ss.Policy == nil {
			continue
		}
		add(destKey{ss.Name, ""}, withPolicy(sv.svc, ss.Policy), ss.Policy.CircuitBreaker != nil)
		own := portPolicies(sv.svc, ss.Policy.Ports)
		ports := map[string]bool{}
		for port := range top {
			ports[port] = true
		}
		for port := range own {
			ports[port] = true
		}
		for port := range ports {
			svc, pool := sv.svc, ss.Policy.CircuitBreaker != nil
			if pp := top[port]; pp != nil {
				svc = portPolicy(base, pp)
				pool = pool || pp.CircuitBreaker != nil
			}
			svc = withPolicy(svc, ss.Policy)
			if pp := own[port]; pp != nil { // only the subset's port's
				svc = portPolicy(base, pp)
				pool = ss.Policy.CircuitBreaker != nil || pp.CircuitBreaker != nil
			}
			add(destKey{ss.Name, port}, svc, pool)
		}
	}
	return m
}

// eachDestination calls f for every service view and every destination
// view of v: everything an upstream pool may have been made for.
func (v *view) eachDestination(f func(sv *serviceView)) {
	for _, sv := range v.services {
		f(sv)
		for _, d := range sv.dests {
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
