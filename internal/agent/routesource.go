package agent

import (
	"net/http"
	"strings"

	"github.com/fogmesh/fogmesh/internal/api"
)

// Route matches on the calling workload (api.RouteMatch SourceLabels and
// SourceNamespace, Istio's sourceLabels and sourceNamespace). The agent
// that routes a request is the caller's own, and the caller's identity is
// the one found for its connection at accept (localid.go: its address,
// and its attest selectors when it declares them). Labels are per
// identity: the labels every workload of this node with that identity
// carries, so a match never holds for a caller that does not carry them.

// setCallerLabels gives the services whose route matches on the caller the
// labels of this node's workloads by identity.
func setCallerLabels(v *view, td string, local []api.Endpoint) {
	var labels map[string]map[string]string
	for _, sv := range v.services {
		if sv.route == nil || !routeHasSource(sv.route) {
			continue
		}
		if labels == nil {
			labels = identityLabels(td, local)
		}
		sv.callerLabels = labels
	}
}

func routeHasSource(r *api.Route) bool {
	for i := range r.Spec.Rules {
		for j := range r.Spec.Rules[i].Match {
			if r.Spec.Rules[i].Match[j].HasSource() {
				return true
			}
		}
	}
	return false
}

// identityLabels maps each identity of this node's workloads to the labels
// all of its workloads carry (their intersection).
func identityLabels(td string, local []api.Endpoint) map[string]map[string]string {
	out := map[string]map[string]string{}
	for i := range local {
		id := api.EndpointID(td, &local[i])
		have, seen := out[id]
		if !seen {
			have = map[string]string{}
			for k, v := range local[i].Meta.Labels {
				have[k] = v
			}
			out[id] = have
			continue
		}
		for k, v := range have {
			if w, ok := local[i].Meta.Labels[k]; !ok || w != v {
				delete(have, k)
			}
		}
	}
	return out
}

// sourceMatches reports whether the caller of req satisfies m's source
// conditions (true when m has none).
func (sv *serviceView) sourceMatches(m *api.RouteMatch, req *http.Request) bool {
	if !m.HasSource() {
		return true
	}
	id := connIdentityFrom(req.Context())
	if id == "" {
		return false
	}
	if m.SourceNamespace != "" && identityNamespace(id) != m.SourceNamespace {
		return false
	}
	labels := sv.callerLabels[id]
	for k, v := range m.SourceLabels {
		if w, ok := labels[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// identityNamespace returns <ns> of spiffe://<td>/ns/<ns>/sa/<sa>, or "".
func identityNamespace(id string) string {
	_, rest, ok := strings.Cut(strings.TrimPrefix(id, "spiffe://"), "/ns/")
	if !ok {
		return ""
	}
	ns, _, _ := strings.Cut(rest, "/")
	return ns
}
