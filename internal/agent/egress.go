package agent

import (
	"fmt"
	"net/http"

	"github.com/fogmesh/fogmesh/internal/egress"
)

// Egress masking (issue 5, package egress): a request on an http, http2 or
// grpc port whose chosen endpoint a service's egress rule selects leaves
// this agent with its headers and body masked. The decision is per
// attempt: a request that fails over from a same-site endpoint to a cloud
// one is masked for the cloud one only; a retry sends a body again only
// from its start (l7retry.go keeps bodies of at most 64 KiB for that),
// masked afresh, so a retry never replays a half-read body. A
// body the masker cannot judge is refused before anything is sent (the
// client gets 502 naming the reason, counted as result="rejected").
//
// Metrics:
//
//	fogmesh_egress_masked_fields_total{service,detector}  values masked, by detector, regex name, "json-path" or "header"
//	fogmesh_egress_bodies_total{service,rule,result}      result: masked, failed (malformed, request aborted), rejected (compressed, ambiguous type, upgrade: not sent)

// errEgress wraps egress failures. They are about the request, not the
// endpoint: no ejection, no retry (see upstreamFailure).
var errEgress = egress.ErrMasking

// egressRules returns the service's compiled rules.
func (sv *serviceView) egressRules() []egress.Rule {
	sv.egressOnce.Do(func() { sv.egress = egress.Compile(sv.svc.Spec.Egress) })
	return sv.egress
}

// egressDest places ev for the egress rules.
func egressDest(ev *endpointView) egress.Dest {
	return egress.Dest{SameNode: ev.local || ev.tier == TierNode, SameSite: ev.tier <= TierSite,
		SameRegion: ev.tier <= TierRegion, Site: ev.site, Region: ev.region}
}

// egressRoundTrip sends req to ev through rt, masked by the first egress
// rule of the service that selects ev; unchanged when none does.
func (a *Agent) egressRoundTrip(rt http.RoundTripper, sv *serviceView, ev *endpointView, req *http.Request) (*http.Response, error) {
	if len(sv.svc.Spec.Egress) == 0 {
		return rt.RoundTrip(req)
	}
	svc := sv.svc.Meta.Key()
	return egress.RoundTrip(rt, sv.egressRules(), egressDest(ev), req, egress.Hooks{
		Masked: func(detector string, n int) {
			a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_egress_masked_fields_total{service=%q,detector=%q}`, svc, detector)).Add(n)
		},
		Body: func(rule, result string) {
			a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_egress_bodies_total{service=%q,rule=%q,result=%q}`, svc, rule, result)).Inc()
		},
	})
}
