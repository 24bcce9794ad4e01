package api

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func TestIstioCanaryTranslation(t *testing.T) {
	b, err := os.ReadFile("../../examples/istio-canary.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, warnings, err := DecodeWithWarnings(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 {
		t.Fatalf("got %d objects", len(objs))
	}
	r := objs[0].(*Route)
	if r.Meta.Key() != "shop/reviews" || r.Spec.Service != "reviews" || len(r.Spec.Rules) != 2 {
		t.Fatalf("route %+v", r)
	}
	if m := r.Spec.Rules[0].Match[0].Headers["end-user"]; m.Exact != "jason" || r.Spec.Rules[0].Backends[0].Subset != "v2" {
		t.Fatalf("rule 0 %+v", r.Spec.Rules[0])
	}
	r1 := r.Spec.Rules[1]
	if r1.Backends[0].Weight != 90 || r1.Backends[1].Weight != 10 || r1.Timeout.String() != "5s" ||
		r1.Retries == nil || *r1.Retries != (RetryPolicy{Attempts: 2, On: "gateway-error,connect-failure", Methods: RetryMethodsAny}) {
		t.Fatalf("rule 1 %+v", r1)
	}
	p := objs[1].(*DestinationPolicy)
	if p.Meta.Key() != "shop/reviews" || p.Spec.Balancer != "least-conn" || len(p.Spec.Subsets) != 2 || p.Spec.Subsets[1].Labels["version"] != "v2" {
		t.Fatalf("policy %+v", p)
	}
	if od := p.Spec.OutlierDetection; od == nil || od.ConsecutiveErrors != 3 || od.BaseEjectionTime.String() != "15s" || od.MaxEjectedPercent != 50 {
		t.Fatalf("outlier detection %+v", p.Spec.OutlierDetection)
	}
	if r1.Name != "" || r.Spec.Rules[0].Name != "jason-to-v2" {
		t.Fatalf("rule names %q %q", r.Spec.Rules[0].Name, r1.Name)
	}
	if m := r1.Mirror; m == nil || m.Subset != "v2" || m.Service != "" || m.MirrorPercent() != 5 {
		t.Fatalf("mirror %+v", r1.Mirror)
	}
	if f := r1.Fault; f == nil || f.Delay == nil || f.Delay.FixedDelay.String() != "2s" || f.Delay.Percent != 10 || f.Abort != nil {
		t.Fatalf("fault %+v", r1.Fault)
	}
	if cb := p.Spec.CircuitBreaker; cb == nil || cb.MaxRequests != 1000 || cb.MaxPendingRequests != 100 {
		t.Fatalf("circuit breaker %+v", p.Spec.CircuitBreaker)
	}
	all := strings.Join(warnings, "\n")
	if len(warnings) != 1 || !strings.Contains(all, "spec.trafficPolicy.tls is not supported") {
		t.Errorf("want exactly the tls warning, got:\n%s", all)
	}
}

func TestIstioErrors(t *testing.T) {
	vs := func(spec string) string {
		return "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\nspec:\n" + spec
	}
	for _, c := range []struct{ doc, want string }{
		{vs("  hosts: ['*.shop']\n  http: [{route: [{destination: {host: r}}]}]\n"), "spec.hosts[0]"},
		{vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: ratings}}]}]\n"), "spec.http[0].route[0].destination.host"},
		{vs("  hosts: [reviews]\n  http: [{redirect: {uri: /x}}]\n"), "spec.http[0].route"},
		{vs("  hosts: [reviews]\n  http: [{match: [{uri: {suffix: x}}], route: [{destination: {host: reviews}}]}]\n"), "spec.http[0].match[0].uri.suffix"},
		{vs("  hosts: [reviews]\n  http: [{match: [{uri: {regex: '('}}], route: [{destination: {host: reviews}}]}]\n"), "regex"},
		{vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}], timeout: soon}]\n"), "spec.http[0].timeout"},
		{vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}], retries: {attempts: 2, retryOn: '5xx,teapot'}}]\n"), `spec.http[0].retries.retryOn: "teapot" is not a retry condition`},
		{vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}], retries: {attempts: 2, retryOn: '5xx,600'}}]\n"), "spec.http[0].retries.retryOn: status code 600"},
		{vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}], retries: {attempts: -1}}]\n"), "spec.http[0].retries.attempts"},
		{vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}], retries: {attempts: 1.5}}]\n"), "spec.http[0].retries.attempts"},
		{vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}], retries: {attempts: 2, perTryTimeout: 500us}}]\n"), "spec.http[0].retries.perTryTimeout"},
		{vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}], retries: {attempts: 2, perTryTimeout: soon}}]\n"), "spec.http[0].retries.perTryTimeout"},
		{vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}], retries: [2]}]\n"), "spec.http[0].retries"},
		{"apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n", "only VirtualService and DestinationRule"},
		{"apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: r, trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}}\n", "PASSTHROUGH"},
		{vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}], fault: {abort: {grpcStatus: SOMETIMES}}}]\n"), "spec.http[0].fault.abort.grpcStatus"},
		{vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}], fault: {delay: {fixedDelay: 1s, percentage: {value: 120}}}}]\n"), "spec.rules[0].fault.delay.percent"},
		{vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}], mirror: {host: reviews.other}}]\n"), "spec.http[0].mirror.host"},
		{vs("  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}], mirror: {host: a}, mirrors: [{destination: {host: b}}]}]\n"), "spec.http[0].mirrors"},
	} {
		if _, _, err := DecodeWithWarnings([]byte(c.doc)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s\ngot %v, want an error naming %q", c.doc, err, c.want)
		}
	}
}

func TestRouteValidation(t *testing.T) {
	for _, c := range []struct{ doc, want string }{
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[]}}`, "spec.rules"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[{"backends":[]}]}}`, "spec.rules[0].backends"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[{"match":[{"path":{"exact":"/a","prefix":"/b"}}],"backends":[{}]}]}}`, "spec.rules[0].match[0].path"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"DestinationPolicy","metadata":{"name":"p"},"spec":{"service":"s","subsets":[{"name":"v1"}]}}`, "spec.subsets[0].labels"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"DestinationPolicy","metadata":{"name":"p"},"spec":{"service":"s","circuitBreaker":{"maxPendingRequests":-1}}}`, "spec.circuitBreaker.maxPendingRequests"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[{"backends":[{}],"mirror":{"percent":5}}]}}`, "spec.rules[0].mirror"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[{"backends":[{}],"mirror":{"subset":"v2","percent":101}}]}}`, "spec.rules[0].mirror.percent"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[{"backends":[{}],"fault":{}}]}}`, "spec.rules[0].fault"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[{"backends":[{}],"fault":{"delay":{"percent":5}}}]}}`, "spec.rules[0].fault.delay.fixedDelay"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[{"backends":[{}],"fault":{"abort":{"httpStatus":99,"percent":5}}}]}}`, "spec.rules[0].fault.abort.httpStatus"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[{"backends":[{}],"fault":{"abort":{"grpcStatus":17,"percent":5}}}]}}`, "spec.rules[0].fault.abort.grpcStatus"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[{"backends":[{}],"fault":{"abort":{"percent":5}}}]}}`, "spec.rules[0].fault.abort"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"timeouts":{"idle":"-1s"}}}`, "spec.timeouts.idle"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"timeouts":{"requestBody":"-1s"}}}`, "spec.timeouts.requestBody"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"timeouts":{"send":"-1s"}}}`, "spec.timeouts.send"},
		{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"a"},"spec":{"ports":[{"port":1}],"balancer":"ring"}}`, "spec.balancer"},
	} {
		if _, err := Decode([]byte(c.doc)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("got %v, want an error naming %q", err, c.want)
		}
	}
	objs, err := Decode([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[{"match":[{"path":{"regex":"/v[0-9]+/.*"},"method":"get"}],"backends":[{"subset":"v2"}]}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	m := objs[0].(*Route).Spec.Rules[0].Match[0]
	if m.Method != "GET" || !m.Path.Matches("/v2/items") || m.Path.Matches("/x/v2/items") {
		t.Fatalf("match %+v", m)
	}
}

func TestIstioConsistentHash(t *testing.T) {
	objs, warnings, err := DecodeWithWarnings([]byte("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: shop}\nspec:\n  host: cart\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpCookie: {name: user, ttl: 0s}, minimumRingSize: 1024}\n"))
	if err != nil {
		t.Fatal(err)
	}
	p := objs[0].(*DestinationPolicy)
	if p.Spec.Balancer != "consistent-hash" || p.Spec.HashKey == nil || p.Spec.HashKey.Cookie != "user" {
		t.Fatalf("%+v", p.Spec)
	}
	all := strings.Join(warnings, "\n")
	if !strings.Contains(all, "consistentHash.httpCookie.ttl") || !strings.Contains(all, "consistentHash.minimumRingSize") {
		t.Fatalf("warnings:\n%s", all)
	}
}

// TestIstioMirrorFaultMaglev: the other spellings of mirror (mirrors[0],
// another service), fault abort by gRPC status name and the legacy
// integer percent, and consistentHash.maglev.
func TestIstioMirrorFaultMaglev(t *testing.T) {
	doc := `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - name: main
    route: [{destination: {host: reviews}}]
    mirrors: [{destination: {host: reviews-next.shop.svc.cluster.local, port: {number: 80}}, percentage: {value: 12.5}}, {destination: {host: other}}]
    fault:
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 50}}
      delay: {fixedDelay: 100ms, percent: 3}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 1021}}
`
	objs, warnings, err := DecodeWithWarnings([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	rule := objs[0].(*Route).Spec.Rules[0]
	if m := rule.Mirror; rule.Name != "main" || m == nil || m.Service != "reviews-next" || m.Subset != "" || m.MirrorPercent() != 12.5 {
		t.Fatalf("rule %+v mirror %+v", rule, rule.Mirror)
	}
	if f := rule.Fault; f == nil || f.Abort == nil || f.Abort.GRPCStatus != 14 || f.Abort.Percent != 50 || f.Delay == nil || f.Delay.Percent != 3 {
		t.Fatalf("fault %+v", rule.Fault)
	}
	p := objs[1].(*DestinationPolicy)
	if p.Spec.Balancer != "maglev" || p.Spec.HashKey.Header != "x-user" {
		t.Fatalf("policy %+v", p.Spec)
	}
	all := strings.Join(warnings, "\n")
	for _, want := range []string{"spec.http[0].mirrors[1:]", "maglev.tableSize 1021 is ignored"} {
		if !strings.Contains(all, want) {
			t.Errorf("no warning %q in:\n%s", want, all)
		}
	}
}

// TestIstioTranslationNeverWidens: every field fogmesh cannot evaluate
// skips what holds it, with a warning naming it, and never leaves a rule
// that matches more than the document says (issue 11).
func TestIstioTranslationNeverWidens(t *testing.T) {
	vs := func(spec string) string {
		return "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\nspec:\n  hosts: [reviews]\n" + spec
	}
	v1, v2 := "{destination: {host: reviews, subset: v1}}", "{destination: {host: reviews, subset: v2}}"
	for _, c := range []struct {
		name, doc string
		warn      []string // substrings, each in some warning
		check     func(r *Route) string
	}{
		{"no default route rejects unmatched", vs("  http: [{match: [{uri: {prefix: /a}}], route: [" + v2 + "]}]\n"), nil,
			func(r *Route) string {
				if r.Spec.Unmatched != UnmatchedReject {
					return "unmatched is " + r.Spec.Unmatched
				}
				return ""
			}},
		{"sourceLabels and sourceNamespace translate", vs("  http:\n  - match: [{sourceLabels: {app: productpage}, sourceNamespace: shop}]\n    route: [" + v2 + "]\n  - route: [" + v1 + "]\n"), nil,
			func(r *Route) string {
				if m := r.Spec.Rules[0].Match[0]; len(r.Spec.Rules) != 2 || m.SourceLabels["app"] != "productpage" || m.SourceNamespace != "shop" {
					return fmt.Sprintf("rules %+v", r.Spec.Rules)
				}
				return ""
			}},
		{"scheme skips the rule", vs("  http:\n  - match: [{scheme: {exact: https}}]\n    route: [" + v2 + "]\n  - route: [" + v1 + "]\n"),
			[]string{"spec.http[0].match[0] is skipped: spec.http[0].match[0].scheme", "spec.http[0] is skipped"},
			func(r *Route) string {
				if len(r.Spec.Rules) != 1 || r.Spec.Rules[0].Backends[0].Subset != "v1" {
					return fmt.Sprintf("rules %+v", r.Spec.Rules)
				}
				return ""
			}},
		{"one skipped match of two keeps the other", vs("  http:\n  - match: [{port: 8080}, {uri: {exact: /x}}]\n    route: [" + v2 + "]\n"),
			[]string{"spec.http[0].match[0] is skipped: spec.http[0].match[0].port"},
			func(r *Route) string {
				if len(r.Spec.Rules) != 1 || len(r.Spec.Rules[0].Match) != 1 || r.Spec.Rules[0].Match[0].Path.Exact != "/x" {
					return fmt.Sprintf("rules %+v", r.Spec.Rules)
				}
				return ""
			}},
		{"every rule skipped rejects everything", vs("  http: [{match: [{port: 80}], route: [" + v2 + "]}]\n"),
			[]string{"no http route is left"},
			func(r *Route) string {
				if len(r.Spec.Rules) != 0 || r.Spec.Unmatched != UnmatchedReject {
					return fmt.Sprintf("spec %+v", r.Spec)
				}
				return ""
			}},
		{"unknown match field skips", vs("  http: [{match: [{futureField: 1}], route: [" + v2 + "]}, {route: [" + v1 + "]}]\n"),
			[]string{"spec.http[0].match[0].futureField: the field is not supported"}, nil},
		{"match gateways without mesh skips", vs("  http: [{match: [{gateways: [gw]}], route: [" + v2 + "]}, {route: [" + v1 + "]}]\n"),
			[]string{"spec.http[0].match[0] is skipped: its gateways [gw] do not include mesh"},
			func(r *Route) string {
				if len(r.Spec.Rules) != 1 {
					return fmt.Sprintf("rules %+v", r.Spec.Rules)
				}
				return ""
			}},
		{"match gateways with mesh applies", vs("  http: [{match: [{gateways: [mesh], uri: {prefix: /a}}], route: [" + v2 + "]}]\n"), nil,
			func(r *Route) string {
				if len(r.Spec.Rules) != 1 || r.Spec.Rules[0].Match[0].Path.Prefix != "/a" {
					return fmt.Sprintf("rules %+v", r.Spec.Rules)
				}
				return ""
			}},
		{"lower-case method matches nothing", vs("  http: [{match: [{method: {exact: get}}], route: [" + v2 + "]}, {route: [" + v1 + "]}]\n"),
			[]string{`spec.http[0].match[0] is skipped: method "get" is not upper case`},
			func(r *Route) string {
				if len(r.Spec.Rules) != 1 || r.Spec.Rules[0].Backends[0].Subset != "v1" {
					return fmt.Sprintf("rules %+v", r.Spec.Rules)
				}
				return ""
			}},
		{"ignoreUriCase false is harmless", vs("  http: [{match: [{ignoreUriCase: false, uri: {prefix: /a}}], route: [" + v2 + "]}]\n"), nil, nil},
		{"queryParams and withoutHeaders translate", vs("  http: [{match: [{queryParams: {a: {exact: x}, b: {exact: ''}, c: {regex: '[0-9]+'}, d: {prefix: p}}, withoutHeaders: {X-Test: {}}}], route: [" + v2 + "]}]\n"), nil,
			func(r *Route) string {
				m := r.Spec.Rules[0].Match[0]
				q := m.QueryParams
				b := q["b"]
				if q["a"].Exact != "x" || !b.Matches("") || b.Matches("1") || q["c"].Regex != "[0-9]+" || q["d"].Prefix != "p" {
					return fmt.Sprintf("queryParams %+v", q)
				}
				if wh, ok := m.WithoutHeaders["x-test"]; !ok || len(m.WithoutHeaders) != 1 || !wh.Matches("anything") {
					return fmt.Sprintf("withoutHeaders %+v", m.WithoutHeaders)
				}
				return ""
			}},
		{"header exact empty matches an empty value only", vs("  http: [{match: [{headers: {x-a: {exact: ''}, x-b: {}, x-c: {prefix: ''}}}], route: [" + v2 + "]}]\n"), nil,
			func(r *Route) string {
				h := r.Spec.Rules[0].Match[0].Headers
				a, b, c := h["x-a"], h["x-b"], h["x-c"]
				if !a.Matches("") || a.Matches("v") || !b.Matches("v") || !c.Matches("v") {
					return fmt.Sprintf("headers %+v", h)
				}
				return ""
			}},
		{"unweighted destination beside a weighted one gets 0", vs("  http: [{route: [{destination: {host: reviews, subset: v1}, weight: 70}, " + v2 + "]}]\n"), nil,
			func(r *Route) string {
				if b := r.Spec.Rules[0].Backends; b[0].Weight != 70 || b[1].Weight != 0 {
					return fmt.Sprintf("backends %+v", b)
				}
				return ""
			}},
		{"no weights split equally, warned", vs("  http: [{route: [" + v1 + ", " + v2 + "]}]\n"),
			[]string{"spec.http[0].route: no destination has a weight"},
			func(r *Route) string {
				if b := r.Spec.Rules[0].Backends; b[0].Weight != 1 || b[1].Weight != 1 {
					return fmt.Sprintf("backends %+v", b)
				}
				return ""
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			objs, warnings, err := DecodeWithWarnings([]byte(c.doc))
			if err != nil {
				t.Fatal(err)
			}
			all := strings.Join(warnings, "\n")
			for _, w := range c.warn {
				if !strings.Contains(all, w) {
					t.Errorf("no warning contains %q; warnings:\n%s", w, all)
				}
			}
			if len(c.warn) == 0 && len(warnings) > 0 {
				t.Errorf("unexpected warnings:\n%s", all)
			}
			if len(objs) != 1 {
				t.Fatalf("got %d objects", len(objs))
			}
			if c.check != nil {
				if msg := c.check(objs[0].(*Route)); msg != "" {
					t.Error(msg)
				}
			}
		})
	}
}

func TestIstioGatewayOnlyVirtualServiceIsSkipped(t *testing.T) {
	doc := "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\nspec:\n  hosts: [reviews]\n  gateways: [bookinfo-gateway]\n  http: [{route: [{destination: {host: reviews, subset: v2}}]}]\n"
	objs, warnings, err := DecodeWithWarnings([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 0 || len(warnings) != 1 || !strings.Contains(warnings[0], "applies to gateways only and is skipped") {
		t.Fatalf("objects %v, warnings %q", objs, warnings)
	}
	objs, warnings, err = DecodeWithWarnings([]byte(strings.Replace(doc, "[bookinfo-gateway]", "[bookinfo-gateway, mesh]", 1)))
	if err != nil || len(objs) != 1 || len(warnings) != 1 || !strings.Contains(warnings[0], "only mesh applies") {
		t.Fatalf("with mesh: objects %v, warnings %q, err %v", objs, warnings, err)
	}
}

// TestIstioVirtualServiceWithoutHTTP: only tcp routes: no Route (HTTP
// requests keep the default routing), not a Route answering 404.
func TestIstioVirtualServiceWithoutHTTP(t *testing.T) {
	doc := "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\nspec:\n  hosts: [db]\n  tcp: [{route: [{destination: {host: db}}]}]\n"
	objs, warnings, err := DecodeWithWarnings([]byte(doc))
	if err != nil || len(objs) != 0 || len(warnings) != 2 || !strings.Contains(strings.Join(warnings, "\n"), "no HTTP routes and is skipped") {
		t.Fatalf("objects %v, warnings %q, err %v", objs, warnings, err)
	}
}

func TestIstioRootNamespacePolicyIsMeshWide(t *testing.T) {
	for ns, want := range map[string]bool{"istio-system": true, "shop": false} {
		doc := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: " + ns + "}\nspec: {action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}\n"
		objs, _, err := DecodeWithWarnings([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if got := objs[0].(*AuthorizationPolicy).Spec.MeshWide; got != want {
			t.Errorf("namespace %s: meshWide %v, want %v", ns, got, want)
		}
		// With another root namespace (the control plane's setting).
		objs, _, err = DecodeWithOptions([]byte(doc), DecodeOptions{IstioRootNamespace: "shop"})
		if err != nil {
			t.Fatal(err)
		}
		if got := objs[0].(*AuthorizationPolicy).Spec.MeshWide; got != !want {
			t.Errorf("root namespace shop, namespace %s: meshWide %v, want %v", ns, got, !want)
		}
	}
}

func TestRouteUnmatchedValidation(t *testing.T) {
	r := &Route{Meta: Meta{Name: "r"}, Spec: RouteSpec{Service: "s", Unmatched: "drop"}}
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "spec.unmatched") {
		t.Errorf("unmatched drop: %v", err)
	}
	r.Spec.Unmatched = ""
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "spec.rules") {
		t.Errorf("no rules: %v", err)
	}
	r.Spec.Unmatched = UnmatchedReject
	if err := r.Validate(); err != nil {
		t.Errorf("no rules, unmatched reject: %v", err)
	}
	r.Spec.Rules = []RouteRule{{Match: []RouteMatch{{QueryParams: map[string]StringMatch{"": {}}}}, Backends: []RouteBackend{{}}}}
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "queryParams") {
		t.Errorf("empty query parameter name: %v", err)
	}
}

// TestIstioRetriesTranslation: Istio's retry.ConvertPolicy, field by field.
func TestIstioRetriesTranslation(t *testing.T) {
	def := RetryPolicy{Attempts: 2, On: IstioDefaultRetryOn, Methods: RetryMethodsAny}
	for _, c := range []struct {
		retries string // the http route's retries field ("" for none)
		want    RetryPolicy
		warn    string
	}{
		{"", def, ""},
		{"retries: {attempts: 3}", RetryPolicy{Attempts: 3, On: IstioDefaultRetryOn, Methods: RetryMethodsAny}, ""},
		{"retries: {attempts: 0, retryOn: 5xx}", RetryPolicy{Attempts: -1, On: "5xx", Methods: RetryMethodsAny}, ""},
		{"retries: {retryOn: 5xx}", RetryPolicy{Attempts: -1, On: "5xx", Methods: RetryMethodsAny}, ""},
		{"retries: {attempts: 2, retryOn: '5xx,429', perTryTimeout: 250ms}", RetryPolicy{Attempts: 2, On: "5xx,429", Methods: RetryMethodsAny, PerTryTimeout: Duration(250 * time.Millisecond)}, ""},
		{"retries: {attempts: 9}", RetryPolicy{Attempts: 5, On: IstioDefaultRetryOn, Methods: RetryMethodsAny}, "at most 5"},
		{"retries: {attempts: 1, retryOn: retriable-headers}", RetryPolicy{Attempts: 1, On: "retriable-headers", Methods: RetryMethodsAny}, "never matches"},
		{"retries: {attempts: 1, retryRemoteLocalities: true}", RetryPolicy{Attempts: 1, On: IstioDefaultRetryOn, Methods: RetryMethodsAny}, "retryRemoteLocalities is not supported"},
	} {
		doc := "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews}}]\n"
		if c.retries != "" {
			doc += "    " + c.retries + "\n"
		}
		objs, warnings, err := DecodeWithWarnings([]byte(doc))
		if err != nil {
			t.Errorf("%s: %v", c.retries, err)
			continue
		}
		got := objs[0].(*Route).Spec.Rules[0].Retries
		if got == nil || *got != c.want {
			t.Errorf("%q: got %+v, want %+v", c.retries, got, c.want)
		}
		all := strings.Join(warnings, "\n")
		if (c.warn == "") != (all == "") || !strings.Contains(all, c.warn) {
			t.Errorf("%q: warnings %q, want %q", c.retries, all, c.warn)
		}
	}
}

func TestIstioConnectionPool(t *testing.T) {
	objs, warnings, err := DecodeWithWarnings([]byte(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: shop}
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1, connectTimeout: 250ms, tcpKeepalive: {time: 7200s, interval: 75s, probes: 4}}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 3, http2MaxRequests: 5, maxRetries: 2, idleTimeout: 40s}
`))
	if err != nil {
		t.Fatal(err)
	}
	cb := objs[0].(*DestinationPolicy).Spec.CircuitBreaker
	want := CircuitBreaker{MaxConnections: 1, MaxRequests: 5, MaxPendingRequests: 1, PendingFor: PendingForConnections, MaxRequestsPerConnection: 3,
		ConnectTimeout: Duration(250 * time.Millisecond), IdleTimeout: Duration(40 * time.Second)}
	if cb == nil || cb.TCPKeepalive == nil || *cb.TCPKeepalive != (TCPKeepalive{Time: Duration(2 * time.Hour), Interval: Duration(75 * time.Second), Probes: 4}) {
		t.Fatalf("keepalive %+v", cb)
	}
	if cb.TCPKeepalive = nil; *cb != want {
		t.Fatalf("circuit breaker %+v, want %+v", cb, want)
	}
	all := strings.Join(warnings, "\n")
	if len(warnings) != 1 || !strings.Contains(all, "connectionPool.http.maxRetries is ignored") {
		t.Errorf("want only the maxRetries warning, got:\n%s", all)
	}
	for _, bad := range []string{"tcp: {maxConnections: -1}", "tcp: {connectTimeout: soon}", "tcp: {tcpKeepalive: {probes: -2}}", "http: {maxRequestsPerConnection: 1.5}"} {
		_, _, err := DecodeWithWarnings([]byte("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: h\n  trafficPolicy:\n    connectionPool:\n      " + bad + "\n"))
		if err == nil || !strings.Contains(err.Error(), "spec.trafficPolicy.connectionPool.") {
			t.Errorf("%s: err %v, want one naming the field", bad, err)
		}
	}
}

func TestIstioSubsetTrafficPolicy(t *testing.T) {
	objs, warnings, err := DecodeWithWarnings([]byte(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
    connectionPool: {tcp: {maxConnections: 100}, http: {http1MaxPendingRequests: 10}}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
      connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
      outlierDetection: {consecutive5xxErrors: 2}
      portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: RANDOM}, tls: {mode: SIMPLE}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	p := objs[0].(*DestinationPolicy)
	if p.Spec.Balancer != "consistent-hash" || p.Spec.CircuitBreaker == nil || p.Spec.CircuitBreaker.MaxConnections != 100 {
		t.Fatalf("top level %+v", p.Spec)
	}
	v1, v2 := p.Spec.Subsets[0].Policy, p.Spec.Subsets[1].Policy
	if v1 == nil || v1.Balancer != "" || v1.CircuitBreaker == nil || *v1.CircuitBreaker != *p.Spec.CircuitBreaker || v1.CircuitBreaker == p.Spec.CircuitBreaker {
		t.Fatalf("v1 inherits a copy of the pool and nothing else: %+v", v1)
	}
	if v2 == nil || v2.Service != "" || v2.Balancer != "round-robin" || v2.CircuitBreaker == nil ||
		*v2.CircuitBreaker != (CircuitBreaker{MaxConnections: 1, MaxPendingRequests: 1, PendingFor: PendingForConnections}) ||
		v2.OutlierDetection == nil || v2.OutlierDetection.ConsecutiveErrors != 2 {
		t.Fatalf("v2 policy %+v", v2)
	}
	if len(v2.Ports) != 1 || v2.Ports[0].Port != 80 || v2.Ports[0].Policy.Balancer != "random" || v2.Ports[0].Policy.CircuitBreaker != nil {
		t.Fatalf("v2 port policies %+v", v2.Ports)
	}
	all := strings.Join(warnings, "\n")
	if len(warnings) != 1 || !strings.Contains(all, "spec.subsets[1].trafficPolicy.portLevelSettings[0].tls is not supported") {
		t.Errorf("want only the tls warning naming the subset's port, got:\n%s", all)
	}
	_, _, err = DecodeWithWarnings([]byte("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: h\n  subsets:\n  - name: a\n    labels: {v: a}\n    trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}\n"))
	if err == nil || !strings.Contains(err.Error(), "spec.subsets[0].trafficPolicy.loadBalancer.simple") {
		t.Errorf("err %v, want one naming the subset's field", err)
	}
	// A subset's policy in a fogmesh document is validated like the top level.
	_, err = Decode([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"DestinationPolicy","metadata":{"name":"p"},"spec":{"service":"s","subsets":[{"name":"v1","labels":{"v":"1"},"policy":{"balancer":"fastest"}}]}}`))
	if err == nil || !strings.Contains(err.Error(), "spec.subsets[0].policy.balancer") {
		t.Errorf("err %v, want one naming spec.subsets[0].policy.balancer", err)
	}
}

func TestIstioPortLevelSettings(t *testing.T) {
	objs, warnings, err := DecodeWithWarnings([]byte(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: shop}
spec:
  host: db
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 50}}
    portLevelSettings:
    - port: {number: 5432}
      connectionPool: {tcp: {maxConnections: 5}}
    - port: {number: 8080}
      loadBalancer: {simple: LEAST_REQUEST}
  subsets:
  - {name: a, labels: {v: a}}
  - name: b
    labels: {v: b}
    trafficPolicy:
      portLevelSettings: [{port: {number: 5432}, outlierDetection: {consecutive5xxErrors: 3}}]
  - name: c
    labels: {v: c}
    trafficPolicy: {connectionPool: {tcp: {maxConnections: 2}}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings: %v", warnings)
	}
	p := objs[0].(*DestinationPolicy).Spec
	if len(p.Ports) != 2 || p.Ports[0].Port != 5432 || p.Ports[0].Policy.CircuitBreaker.MaxConnections != 5 || p.Ports[1].Policy.Balancer != "least-conn" {
		t.Fatalf("ports %+v", p.Ports)
	}
	a, b, c := p.Subsets[0].Policy, p.Subsets[1].Policy, p.Subsets[2].Policy
	// Istio's merge per (subset, port): the top level with the port's
	// entry merged in (its unset fields: defaults), then the subset's set
	// fields; a subset's own entry for the port alone.
	port := func(pol *DestinationPolicySpec, n int) *DestinationPolicySpec {
		for i := range pol.Ports {
			if pol.Ports[i].Port == n {
				return &pol.Ports[i].Policy
			}
		}
		t.Fatalf("no port %d in %+v", n, pol.Ports)
		return nil
	}
	if a.CircuitBreaker.MaxConnections != 50 || len(a.Ports) != 2 || port(a, 5432).CircuitBreaker.MaxConnections != 5 ||
		port(a, 8080).CircuitBreaker != nil || port(a, 8080).Balancer != "least-conn" {
		t.Errorf("a inherits the pool and the ports': %+v", a)
	}
	if b.CircuitBreaker.MaxConnections != 50 || len(b.Ports) != 2 || port(b, 5432).CircuitBreaker != nil || port(b, 5432).OutlierDetection.ConsecutiveErrors != 3 ||
		port(b, 8080).Balancer != "least-conn" {
		t.Errorf("b's own port entry applies alone (no pool limits), the top level's 8080 entry as a's: %+v", b)
	}
	if c.CircuitBreaker.MaxConnections != 2 || len(c.Ports) != 2 || port(c, 5432).CircuitBreaker.MaxConnections != 2 ||
		port(c, 8080).CircuitBreaker.MaxConnections != 2 || port(c, 8080).Balancer != "least-conn" {
		t.Errorf("c's own pool replaces the top level's, its ports' too (Istio): %+v", c)
	}
	for _, bad := range []string{"[{loadBalancer: {simple: RANDOM}}]", "[{port: {number: 0}}]", "[{port: {number: 80}}, {port: {number: 80}}]"} {
		_, _, err := DecodeWithWarnings([]byte("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: h\n  trafficPolicy:\n    portLevelSettings: " + bad + "\n"))
		if err == nil || !strings.Contains(err.Error(), "ports") && !strings.Contains(err.Error(), "portLevelSettings") {
			t.Errorf("%s: err %v, want one naming the field", bad, err)
		}
	}
}
