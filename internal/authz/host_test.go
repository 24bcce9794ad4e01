package authz

import (
	"net/http"
	"testing"
)

// hostReq is an HTTP request with authority host: net/http keeps the Host
// header (HTTP/2's :authority) out of Header, in Request.Host.
func hostReq(host string, hdr ...string) *Request {
	r := httpReq(other, "GET", "/", hdr...)
	r.Host = host
	return r
}

// TestHostConditions: request.headers[host] and request.headers[:authority]
// (any case) match the request's authority, as in Istio, where Envoy keeps
// both as :authority. Before, they read Header["Host"], which is never
// there: a DENY on a host allowed everything.
func TestHostConditions(t *testing.T) {
	for _, key := range []string{"request.headers[host]", "request.headers[Host]", "request.headers[:authority]", "request.headers[:Authority]"} {
		deny := compile(t,
			pol("shop", "allow-all", `{service: orders, rules: [{}]}`),
			pol("shop", "deny-host", `{service: orders, action: DENY, rules: [{when: [{key: "`+key+`", values: ["admin.example.com", "admin.example.com:*", "*.internal"]}]}]}`))
		allow := compile(t, pol("shop", "only-api", `{service: orders, rules: [{when: [{key: "`+key+`", values: ["api.example.com*"], notValues: ["*:8443"]}]}]}`))
		for _, c := range []struct {
			e     *Engine
			name  string
			req   *Request
			allow bool
		}{
			{deny, "denied host", hostReq("admin.example.com"), false},
			{deny, "denied host with port", hostReq("admin.example.com:8080"), false},
			{deny, "denied host in another case", hostReq("ADMIN.Example.COM"), false},
			{deny, "denied suffix", hostReq("db.internal"), false},
			{deny, "denied suffix in another case", hostReq("db.INTERNAL"), false},
			{deny, "other host", hostReq("shop.example.com"), true},
			{deny, "no host (HTTP/1.0)", hostReq(""), true},
			{deny, "a Host key in Header is not the authority", hostReq("shop.example.com", "Host", "admin.example.com"), true},
			{allow, "allowed host", hostReq("api.example.com"), true},
			{allow, "allowed host, port", hostReq("API.example.com:80"), true},
			{allow, "notValues", hostReq("api.example.com:8443"), false},
			{allow, "other host", hostReq("admin.example.com"), false},
			{allow, "no host", hostReq(""), false},
			{allow, "tcp: never known", tcpReq(other), false},
			{deny, "tcp under deny: matches as if absent", tcpReq(other), false},
		} {
			if d := c.e.Decide(c.req); d.Allow != c.allow {
				t.Errorf("%s: %s: got %+v, want allow=%v", key, c.name, d, c.allow)
			}
		}
	}
}

// TestHostNotValuesOnly: a condition with notValues only matches a request
// without an authority, as a header condition matches a missing header.
func TestHostNotValuesOnly(t *testing.T) {
	e := compile(t, pol("shop", "a", `{service: orders, rules: [{when: [{key: "request.headers[host]", notValues: ["admin.*"]}]}]}`))
	for host, want := range map[string]bool{"": true, "shop": true, "admin.x": false, "ADMIN.x": false} {
		if d := e.Decide(hostReq(host)); d.Allow != want {
			t.Errorf("host %q: got %+v, want allow=%v", host, d, want)
		}
	}
}

func TestHostDecisionDoesNotAllocate(t *testing.T) {
	e := compile(t, pol("shop", "a", `{service: orders, action: DENY, rules: [{when: [{key: "request.headers[host]", values: ["admin.*", "*.internal", "x.example.com"]}]}]}`))
	r := hostReq("Shop.Example.com:8080")
	r.Header = http.Header{"X-Env": {"prod"}}
	if n := testing.AllocsPerRun(100, func() { e.Decide(r) }); n != 0 {
		t.Fatalf("%v allocs per decision", n)
	}
}

// TestOperationHosts: to.hosts and to.notHosts match the request's
// authority as sent (port included), ignoring case, as Istio's
// operation.hosts.
func TestOperationHosts(t *testing.T) {
	allow := compile(t, pol("shop", "hosts", `{service: orders, rules: [{to: [{hosts: ["shop.example.com", "shop.example.com:*", "*.eu.example.com"]}]}]}`))
	deny := compile(t,
		pol("shop", "allow-all", `{service: orders, rules: [{}]}`),
		pol("shop", "not-hosts", `{service: orders, action: DENY, rules: [{to: [{notHosts: ["*.example.com"]}]}]}`))
	for _, c := range []struct {
		e     *Engine
		name  string
		req   *Request
		allow bool
	}{
		{allow, "listed host", hostReq("shop.example.com"), true},
		{allow, "listed host, other case, port", hostReq("Shop.Example.com:8080"), true},
		{allow, "suffix", hostReq("a.EU.example.com"), true},
		{allow, "suffix with a port is another string", hostReq("a.eu.example.com:80"), false},
		{allow, "other host", hostReq("admin.example.com"), false},
		{allow, "no host", hostReq(""), false},
		{allow, "tcp", tcpReq(other), false},
		{deny, "in notHosts' complement", hostReq("shop.example.org"), false},
		{deny, "in notHosts", hostReq("shop.EXAMPLE.com"), true},
	} {
		if d := c.e.Decide(c.req); d.Allow != c.allow {
			t.Errorf("%s: got %+v, want allow=%v", c.name, d, c.allow)
		}
	}
}
