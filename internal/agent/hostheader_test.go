package agent

import (
	"net/http"
	"testing"
)

// hostHeaderCases: the Host header is :authority (Envoy keeps one header
// for both), so Istio's request.headers[host] and [:authority] conditions
// and VirtualService header matches on host and :authority see the
// request's authority. net/http moves Host out of the header map, and
// fogmesh used to look for it there: the DENY below allowed everything
// and the route sent every request to v1.
var hostHeaderCases = []istioCase{
	{name: "VirtualService header match on host and :authority", docs: vsDoc(`  http:
  - match: [{headers: {host: {exact: canary.example.com}}}, {headers: {":authority": {prefix: "beta."}}}]
    route: [{destination: {host: SVC, subset: v2}}]
  - route: [{destination: {host: SVC, subset: v1}}]
`), reqs: []istioReq{
		{target: "/", header: http.Header{"Host": {"canary.example.com"}}, n: 5, want: "v2"},
		{target: "/", header: http.Header{"Host": {"beta.example.com:8080"}}, n: 5, want: "v2"},
		{target: "/", header: http.Header{"Host": {"shop.example.com"}}, n: 5, want: "v1"},
		{target: "/", n: 5, want: "v1"},
	}},
	{name: "DENY on request.headers[host]", docs: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: SVC-no-admin, namespace: demo}
spec:
  selector: {matchLabels: {app: SVC}}
  action: DENY
  rules: [{when: [{key: "request.headers[host]", values: [admin.example.com, "admin.example.com:*"]}]}]
`, reqs: []istioReq{
		{target: "/", header: http.Header{"Host": {"admin.example.com"}}, n: 3, want: "403"},
		{target: "/", header: http.Header{"Host": {"admin.example.com:8080"}}, n: 3, want: "403"},
		{target: "/", header: http.Header{"Host": {"ADMIN.example.com"}}, n: 3, want: "403"},
		{target: "/", header: http.Header{"Host": {"shop.example.com"}}, n: 3, want: "200"},
		{target: "/", n: 3, want: "200"},
	}},
	// :authority used to be refused as a condition key (the policy then
	// denied everything it selects); an Istio document's was ignored, so
	// its DENY rule denied everything.
	{name: "DENY on request.headers[:authority]", docs: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: SVC-no-internal, namespace: demo}
spec:
  selector: {matchLabels: {app: SVC}}
  action: DENY
  rules: [{when: [{key: "request.headers[:authority]", values: ["*.internal"]}]}]
`, reqs: []istioReq{
		{target: "/", header: http.Header{"Host": {"db.internal"}}, n: 3, want: "403"},
		{target: "/", header: http.Header{"Host": {"db.INTERNAL"}}, n: 3, want: "403"},
		{target: "/", header: http.Header{"Host": {"shop.example.com"}}, n: 3, want: "200"},
		{target: "/", n: 3, want: "200"},
	}},
	// to.operation.hosts and notHosts (Istio's): the authority as sent,
	// port included, case ignored. They used to be skipped: the ALLOW rule
	// was dropped (denying everything), the DENY's condition ignored.
	{name: "ALLOW on operation.hosts, DENY on operation.notHosts", docs: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: SVC-hosts, namespace: demo}
spec:
  selector: {matchLabels: {app: SVC}}
  rules: [{to: [{operation: {hosts: ["shop.example.com", "shop.example.com:*", "*.shop.example.com"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: SVC-not-hosts, namespace: demo}
spec:
  selector: {matchLabels: {app: SVC}}
  action: DENY
  rules: [{to: [{operation: {notHosts: ["*.example.com", "shop.example.com:*"]}}]}]
`, reqs: []istioReq{
		{target: "/", header: http.Header{"Host": {"shop.example.com"}}, n: 3, want: "200"},
		{target: "/", header: http.Header{"Host": {"SHOP.example.com:8080"}}, n: 3, want: "200"},
		{target: "/", header: http.Header{"Host": {"eu.shop.example.com"}}, n: 3, want: "200"},
		{target: "/", header: http.Header{"Host": {"admin.example.com"}}, n: 3, want: "403"},
		{target: "/", header: http.Header{"Host": {"shop.example.org"}}, n: 3, want: "403"},
	}},
}

// TestIstioHostHeader runs hostHeaderCases through a client and a server
// agent over HTTP/1.1 and h2c: the route is the client agent's, the
// policy the server agent's (on the mesh stream).
func TestIstioHostHeader(t *testing.T) {
	runIstioConformanceOn(t, confNet{srvOctet: 223, cliOctet: 225, basePort: 19580}, hostHeaderCases)
}
