package agent

import (
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/fogmesh/fogmesh/internal/api"
)

// Route rules: which rule of a service's route a request matches, which
// weighted backend it draws, and its consistent-hash key.

// hashKeyOf returns the request's consistent-hash key ("" if none).
func hashKeyOf(req *http.Request, hk *api.HashKey) string {
	if hk.Header != "" {
		v := ""
		if strings.EqualFold(hk.Header, "host") || strings.EqualFold(hk.Header, ":authority") {
			v = req.Host // Go keeps Host out of the header map; Envoy hashes the authority
		} else {
			v = req.Header.Get(hk.Header)
		}
		if v != "" {
			return v
		}
	}
	if hk.Cookie != "" {
		if c, err := req.Cookie(hk.Cookie); err == nil {
			return c.Value
		}
	}
	if hk.SourceIP {
		if host, _, err := net.SplitHostPort(req.RemoteAddr); err == nil {
			return host
		}
	}
	return ""
}

// matchRule returns the first rule of the service's route that matches req,
// or nil when the service has no route or no rule matches (then every
// endpoint serves, unless the route rejects unmatched requests: routeRule).
func (sv *serviceView) matchRule(req *http.Request) *api.RouteRule {
	rule, _ := sv.routeRule(req)
	return rule
}

// routeRule is matchRule, also reporting whether the request must be
// refused because no rule matched and the route rejects unmatched
// requests (Istio's "no route", 404).
func (sv *serviceView) routeRule(req *http.Request) (rule *api.RouteRule, noRoute bool) {
	if sv.route == nil {
		return nil, false
	}
	rule = sv.firstMatch(req)
	return rule, rule == nil && sv.route.Spec.Unmatched == api.UnmatchedReject
}

func (sv *serviceView) firstMatch(req *http.Request) *api.RouteRule {
	host := req.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	for i := range sv.route.Spec.Rules {
		rule := &sv.route.Spec.Rules[i]
		if len(rule.Match) == 0 {
			return rule
		}
		for _, m := range rule.Match {
			if matches(&m, req, host) && sv.sourceMatches(&m, req) {
				return rule
			}
		}
	}
	return nil
}

func matches(m *api.RouteMatch, req *http.Request, host string) bool {
	if m.Method != "" && m.Method != req.Method {
		return false
	}
	if !m.Path.Matches(req.URL.EscapedPath()) || !m.Host.Matches(host) { // normalised, as authorization sees it
		return false
	}
	for name, sm := range m.Headers {
		v, ok := headerValue(req, name)
		if !ok || !sm.Matches(v) {
			return false
		}
	}
	for name, sm := range m.WithoutHeaders {
		if v, ok := headerValue(req, name); ok && sm.Matches(v) {
			return false
		}
	}
	if len(m.QueryParams) > 0 {
		// Decoded, the first value of a repeated parameter (as Envoy).
		q, _ := url.ParseQuery(req.URL.RawQuery)
		for name, sm := range m.QueryParams {
			v, ok := q[name]
			if !ok || !sm.Matches(v[0]) {
				return false
			}
		}
	}
	return true
}

// headerValue is a match's view of the request header name (lower case):
// its lines joined with ",", and whether it was sent. host (also
// :authority, which the route's validation renames) is the request's
// authority as received, port included, which net/http keeps in req.Host.
func headerValue(req *http.Request, name string) (string, bool) {
	if name == "host" {
		return req.Host, req.Host != ""
	}
	v, ok := req.Header[http.CanonicalHeaderKey(name)]
	if !ok {
		return "", false
	}
	if len(v) == 1 {
		return v[0], true
	}
	return strings.Join(v, ","), true
}

// weightedBackend draws a backend index with probability ∝ weight (a
// weight of 0 is never drawn unless all are 0).
func weightedBackend(bs []api.RouteBackend) int {
	total := 0
	for _, b := range bs {
		total += b.Weight
	}
	if total <= 0 {
		return rand.IntN(len(bs))
	}
	r := rand.IntN(total)
	for i, b := range bs {
		if r -= b.Weight; r < 0 {
			return i
		}
	}
	return len(bs) - 1
}
