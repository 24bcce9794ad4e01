package authz

import "testing"

// TestMeshWidePolicies: a policy with meshWide (an Istio policy in the
// root namespace) selects in every namespace, alone or beside the
// namespace's and the service's own policies.
func TestMeshWidePolicies(t *testing.T) {
	denyDelete := pol("istio-system", "no-delete", "{meshWide: true, action: DENY, rules: [{to: [{methods: [DELETE]}]}]}")
	denyOrdersPut := pol("istio-system", "no-put", "{meshWide: true, service: orders, action: DENY, rules: [{to: [{methods: [PUT]}]}]}")
	nsAllowGet := pol("shop", "get-only", "{rules: [{to: [{methods: [GET, DELETE, PUT]}]}]}")
	svcAllowPost := pol("shop", "orders-post", "{service: orders, rules: [{to: [{methods: [POST]}]}]}")
	sameNSOnly := pol("istio-system", "local", "{action: DENY, rules: [{to: [{methods: [PATCH]}]}]}")
	req := func(ns, svc, method string) *Request {
		r := httpReq(frontend, method, "/")
		r.Namespace, r.Service = ns, svc
		return r
	}
	for _, c := range []struct {
		name  string
		docs  []string
		req   *Request
		allow bool
	}{
		{"mesh-wide deny, no other policy", []string{denyDelete}, req("shop", "orders", "DELETE"), false},
		{"mesh-wide deny, other method", []string{denyDelete}, req("shop", "orders", "GET"), true},
		{"mesh-wide deny, other namespace", []string{denyDelete}, req("web", "front", "DELETE"), false},
		{"mesh-wide deny beside namespace allow", []string{denyDelete, nsAllowGet}, req("shop", "cart", "DELETE"), false},
		{"namespace allow beside mesh-wide deny", []string{denyDelete, nsAllowGet}, req("shop", "cart", "GET"), true},
		{"mesh-wide deny beside service allow", []string{denyDelete, svcAllowPost}, req("shop", "orders", "DELETE"), false},
		{"service allow beside mesh-wide deny", []string{denyDelete, svcAllowPost}, req("shop", "orders", "POST"), true},
		{"mesh-wide service deny", []string{denyOrdersPut}, req("web", "orders", "PUT"), false},
		{"mesh-wide service deny, other service", []string{denyOrdersPut}, req("web", "cart", "PUT"), true},
		{"mesh-wide service deny beside namespace allow", []string{denyOrdersPut, nsAllowGet}, req("shop", "orders", "PUT"), false},
		{"mesh-wide service deny and mesh-wide deny", []string{denyOrdersPut, denyDelete}, req("web", "orders", "DELETE"), false},
		{"not mesh-wide: own namespace only", []string{sameNSOnly}, req("shop", "orders", "PATCH"), true},
	} {
		d := compile(t, c.docs...).Decide(c.req)
		if d.Allow != c.allow {
			t.Errorf("%s: %+v, want allow=%v", c.name, d, c.allow)
		}
	}
}

// TestHeaderConditionJoinsValues: a header sent twice matches as its
// values joined with "," (Istio, Envoy); a DENY rule also matches one value
// alone (it denies at least what Istio denies).
func TestHeaderConditionJoinsValues(t *testing.T) {
	allow := compile(t, pol("shop", "tok", `{service: orders, rules: [{when: [{key: "request.headers[x-token]", values: ["a,b", "c"]}]}]}`))
	deny := compile(t, pol("shop", "tok", `{service: orders, action: DENY, rules: [{when: [{key: "request.headers[x-token]", values: ["bad"]}]}]}`))
	denyNot := compile(t, pol("shop", "tok", `{service: orders, action: DENY, rules: [{when: [{key: "request.headers[x-token]", notValues: ["good"]}]}]}`))
	for _, c := range []struct {
		name  string
		e     *Engine
		hdr   []string
		allow bool
	}{
		{"allow joined", allow, []string{"X-Token", "a", "X-Token", "b"}, true},
		{"allow single", allow, []string{"X-Token", "c"}, true},
		{"allow: one value of two is not the joined value", allow, []string{"X-Token", "c", "X-Token", "d"}, false},
		{"allow: a alone", allow, []string{"X-Token", "a"}, false},
		{"allow: absent", allow, nil, false},
		{"deny single", deny, []string{"X-Token", "bad"}, false},
		{"deny: one bad value of two still denies", deny, []string{"X-Token", "ok", "X-Token", "bad"}, false},
		{"deny: good", deny, []string{"X-Token", "ok"}, true},
		{"deny notValues: good", denyNot, []string{"X-Token", "good"}, true},
		{"deny notValues: joined is not good", denyNot, []string{"X-Token", "good", "X-Token", "good"}, false},
	} {
		d := c.e.Decide(httpReq(frontend, "GET", "/", c.hdr...))
		if d.Allow != c.allow {
			t.Errorf("%s: %+v, want allow=%v", c.name, d, c.allow)
		}
	}
}

// TestHeaderPresenceMatchesEmptyValue: "*" in a header condition is
// Istio's presence match (Envoy present_match), which a header sent with an
// empty value satisfies: "X-Debug:" must not walk around a DENY on the
// header's presence, nor pass an ALLOW that requires its absence.
func TestHeaderPresenceMatchesEmptyValue(t *testing.T) {
	deny := compile(t, pol("shop", "dbg", `{service: orders, action: DENY, rules: [{when: [{key: "request.headers[x-debug]", values: ["*"]}]}]}`))
	allowAbsent := compile(t, pol("shop", "dbg", `{service: orders, rules: [{when: [{key: "request.headers[x-debug]", notValues: ["*"]}]}]}`))
	for _, c := range []struct {
		name  string
		e     *Engine
		hdr   []string
		allow bool
	}{
		{"deny present", deny, []string{"X-Debug", "1"}, false},
		{"deny present, empty", deny, []string{"X-Debug", ""}, false},
		{"deny absent", deny, nil, true},
		{"allow absent", allowAbsent, nil, true},
		{"allow absent: present, empty", allowAbsent, []string{"X-Debug", ""}, false},
		{"allow absent: present", allowAbsent, []string{"X-Debug", "1"}, false},
	} {
		d := c.e.Decide(httpReq(frontend, "GET", "/", c.hdr...))
		if d.Allow != c.allow {
			t.Errorf("%s: %+v, want allow=%v", c.name, d, c.allow)
		}
	}
}
