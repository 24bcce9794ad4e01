package authz

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
)

func compile(t testing.TB, docs ...string) *Engine {
	t.Helper()
	var ps []*api.AuthorizationPolicy
	for _, d := range docs {
		objs, err := api.Decode([]byte(d))
		if err != nil {
			t.Fatalf("%v\n%s", err, d)
		}
		for _, o := range objs {
			ps = append(ps, o.(*api.AuthorizationPolicy))
		}
	}
	e, err := Compile(ps)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func pol(ns, name, spec string) string {
	return fmt.Sprintf("apiVersion: fogmesh.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: %s, namespace: %s}\nspec: %s\n", name, ns, spec)
}

const (
	frontend = "spiffe://fogmesh.local/ns/shop/sa/frontend"
	admin    = "spiffe://fogmesh.local/ns/ops/sa/admin"
	other    = "spiffe://fogmesh.local/ns/shop/sa/other"
)

func httpReq(src, method, path string, hdr ...string) *Request {
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Add(hdr[i], hdr[i+1])
	}
	return &Request{SourceID: src, SourceNode: "n1", Namespace: "shop", Service: "orders", Port: "http", PortNumber: 80,
		Proto: HTTP, Method: method, Path: path, Header: h}
}

func tcpReq(src string) *Request {
	return &Request{SourceID: src, SourceNode: "n1", Namespace: "shop", Service: "orders", Port: "db", PortNumber: 5432}
}

func mqttReq(src string, act MQTTAction, topic string) *Request {
	return &Request{SourceID: src, SourceNode: "n1", Namespace: "shop", Service: "orders", Port: "mqtt", PortNumber: 1883,
		Proto: MQTT, MQTT: act, Topic: topic}
}

func TestDecide(t *testing.T) {
	type want struct {
		name  string
		req   *Request
		allow bool
	}
	for _, c := range []struct {
		name     string
		policies []string
		cases    []want
	}{
		{"no policy allows", nil, []want{{"tcp", tcpReq(""), true}}},
		{"allow one principal", []string{pol("shop", "a", `{service: orders, rules: [{from: [{principals: [`+frontend+`]}]}]}`)}, []want{
			{"frontend", httpReq(frontend, "GET", "/"), true},
			{"other", httpReq(other, "GET", "/"), false},
			{"unknown source", httpReq("", "GET", "/"), false},
			{"other service unaffected", &Request{SourceID: other, Namespace: "shop", Service: "cart"}, true},
		}},
		{"prefix and suffix principals, namespaces", []string{pol("shop", "a", `{service: orders, rules: [{from: [{principals: ["spiffe://fogmesh.local/ns/ops/*"]}, {principals: ["*/sa/frontend"]}, {namespaces: [shop], notPrincipals: ["*/sa/other"]}]}]}`)}, []want{
			{"ops prefix", tcpReq(admin), true},
			{"frontend suffix", tcpReq(frontend), true},
			{"shop but other", tcpReq(other), false},
			{"shop third", tcpReq("spiffe://fogmesh.local/ns/shop/sa/third"), true},
			{"unknown", tcpReq(""), false},
		}},
		{"notNamespaces matches unknown", []string{pol("shop", "a", `{service: orders, rules: [{from: [{notNamespaces: [ops]}]}]}`)}, []want{
			{"ops", tcpReq(admin), false},
			{"unknown", tcpReq(""), true},
		}},
		{"deny wins over allow", []string{
			pol("shop", "allow-all", `{service: orders, rules: [{}]}`),
			pol("shop", "deny-delete", `{service: orders, action: DENY, rules: [{to: [{methods: [DELETE]}]}]}`)}, []want{
			{"get", httpReq(other, "GET", "/x"), true},
			{"delete", httpReq(other, "DELETE", "/x"), false},
			// Istio: a DENY rule's HTTP fields are ignored on TCP, so it denies.
			{"tcp under deny with http fields", tcpReq(other), false},
		}},
		{"http fields", []string{pol("shop", "a", `{service: orders, rules: [{to: [{methods: [get, HEAD], paths: ["/api/*", "*.json", /exact], notPaths: [/api/admin/*]}], when: [{key: "request.headers[X-Env]", values: [prod, "stag*"]}]}]}`)}, []want{
			{"prefix", httpReq(other, "GET", "/api/x", "X-Env", "prod"), true},
			{"suffix", httpReq(other, "HEAD", "/a/b.json", "X-Env", "staging"), true},
			{"exact", httpReq(other, "GET", "/exact", "X-Env", "prod"), true},
			{"exact is exact", httpReq(other, "GET", "/exact/", "X-Env", "prod"), false},
			{"notPaths", httpReq(other, "GET", "/api/admin/x", "X-Env", "prod"), false},
			{"method", httpReq(other, "POST", "/api/x", "X-Env", "prod"), false},
			{"header missing", httpReq(other, "GET", "/api/x"), false},
			{"header value", httpReq(other, "GET", "/api/x", "X-Env", "dev"), false},
			// Istio: an ALLOW rule's HTTP fields never match a TCP connection.
			{"tcp", tcpReq(other), false},
		}},
		{"ports by name and number", []string{pol("shop", "a", `{service: orders, rules: [{to: [{ports: ["80"]}]}, {to: [{ports: [db]}], from: [{principals: [`+admin+`]}]}]}`)}, []want{
			{"80", httpReq(other, "GET", "/"), true},
			{"db other", tcpReq(other), false},
			{"db admin", tcpReq(admin), true},
		}},
		{"namespace default deny", []string{
			pol("shop", "deny-all", `{}`),
			pol("shop", "orders-from-frontend", `{service: orders, rules: [{from: [{principals: [`+frontend+`]}]}]}`)}, []want{
			{"orders frontend", tcpReq(frontend), true},
			{"orders other", tcpReq(other), false},
			{"cart anyone", &Request{SourceID: frontend, Namespace: "shop", Service: "cart"}, false},
			{"other namespace", &Request{SourceID: frontend, Namespace: "web", Service: "cart"}, true},
		}},
		{"namespace-wide deny applies to services with own policies", []string{
			pol("shop", "no-ops", `{action: DENY, rules: [{from: [{namespaces: [ops]}]}]}`),
			pol("shop", "orders", `{service: orders, rules: [{}]}`)}, []want{
			{"ops", tcpReq(admin), false},
			{"shop", tcpReq(other), true},
		}},
		{"when on source and node", []string{pol("shop", "a", `{service: orders, rules: [{when: [{key: source.node, values: [n1]}, {key: source.namespace, notValues: [ops]}, {key: destination.port, values: ["5432"]}]}]}`)}, []want{
			{"match", tcpReq(other), true},
			{"ops", tcpReq(admin), false},
			{"node", &Request{SourceID: other, SourceNode: "n2", Namespace: "shop", Service: "orders", PortNumber: 5432}, false},
		}},
		{"mqtt topics", []string{pol("shop", "a", `{service: orders, rules: [{from: [{principals: [`+frontend+`]}], to: [{publish: ["sensors/+/temp"], subscribe: ["alerts/#"]}]}]}`),
			pol("shop", "no-secret", `{service: orders, action: DENY, rules: [{to: [{subscribe: ["alerts/secret/#"]}]}]}`)}, []want{
			{"connect frontend", mqttReq(frontend, MQTTConnect, ""), true},
			{"connect other", mqttReq(other, MQTTConnect, ""), false},
			{"publish ok", mqttReq(frontend, MQTTPublish, "sensors/a/temp"), true},
			{"publish deeper", mqttReq(frontend, MQTTPublish, "sensors/a/b/temp"), false},
			{"publish other topic", mqttReq(frontend, MQTTPublish, "actuators/a"), false},
			{"subscribe covered", mqttReq(frontend, MQTTSubscribe, "alerts/fire/+"), true},
			{"subscribe covered but overlaps a deny", mqttReq(frontend, MQTTSubscribe, "alerts/+/high"), false},
			{"subscribe parent of allowed", mqttReq(frontend, MQTTSubscribe, "#"), false},
			{"subscribe denied overlap", mqttReq(frontend, MQTTSubscribe, "alerts/+/x"), false},
			{"subscribe publish-only filter", mqttReq(frontend, MQTTSubscribe, "sensors/a/temp"), false},
			{"tcp on topic policy", tcpReq(frontend), false},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := compile(t, c.policies...)
			for _, w := range c.cases {
				d := e.Decide(w.req)
				if d.Allow != w.allow {
					t.Errorf("%s: got %+v, want allow=%v", w.name, d, w.allow)
				}
			}
		})
	}
}

func TestDecisionNamesPolicy(t *testing.T) {
	e := compile(t, pol("shop", "a", `{service: orders, rules: [{from: [{principals: [`+frontend+`]}]}]}`),
		pol("shop", "d", `{service: orders, action: DENY, rules: [{from: [{principals: [`+admin+`]}]}]}`))
	for _, c := range []struct {
		src, policy, reason string
	}{{frontend, "shop/a", ReasonAllowMatched}, {admin, "shop/d", ReasonDenyMatched}, {other, "", ReasonNoAllowMatch}} {
		if d := e.Decide(tcpReq(c.src)); d.Policy != c.policy || d.Reason != c.reason {
			t.Errorf("%s: got %+v", c.src, d)
		}
	}
	if !e.Selects("shop", "orders") || e.Selects("shop", "cart") || e.HTTPRules("shop", "orders") || e.MQTTRules("shop", "orders") {
		t.Error("Selects/HTTPRules/MQTTRules")
	}
}

func TestTopicFilters(t *testing.T) {
	split := func(s string) []string { return strings.Split(s, "/") }
	for _, c := range []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true}, {"a/+", "a/b", true}, {"a/+", "a/b/c", false}, {"a/#", "a", true},
		{"a/#", "a/b/c", true}, {"#", "a", true}, {"#", "$SYS/x", false}, {"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true}, {"a/+/c", "a//c", true}, {"a", "a/", false}, {"+", "", true}, {"a/b", "a", false},
	} {
		if got := topicMatches(split(c.filter), c.topic); got != c.want {
			t.Errorf("topicMatches(%q, %q) = %v", c.filter, c.topic, got)
		}
	}
	for _, c := range []struct {
		p, sub          string
		covers, overlap bool
	}{
		{"a/#", "a/+/c", true, true}, {"a/+", "a/#", false, true}, {"#", "a/#", true, true}, {"a/b", "a/+", false, true},
		{"a/+", "a/b", true, true}, {"a/b", "c/#", false, false}, {"#", "$SYS/#", false, false}, {"a/b/c", "a/#", false, true},
		{"a/#", "#", false, true}, {"a", "a/#", false, true}, {"a/+", "a", false, false},
	} {
		if got := filterCovers(split(c.p), c.sub); got != c.covers {
			t.Errorf("filterCovers(%q, %q) = %v", c.p, c.sub, got)
		}
		if got := filterOverlaps(split(c.p), c.sub); got != c.overlap {
			t.Errorf("filterOverlaps(%q, %q) = %v", c.p, c.sub, got)
		}
	}
}

// benchEngine has n policies over n/2 services of 10 namespaces: half ALLOW
// by principal and path, half DENY by method, plus namespace-wide ones.
func benchEngine(b testing.TB, n int) *Engine {
	var ps []*api.AuthorizationPolicy
	for i := range n {
		ns := fmt.Sprintf("ns%d", i%10)
		p := &api.AuthorizationPolicy{Meta: api.Meta{Name: fmt.Sprintf("p%d", i), Namespace: ns}}
		p.Spec.Service = fmt.Sprintf("svc%d", i/2)
		if i%100 == 99 {
			p.Spec.Service = ""
			p.Spec.Action = api.ActionDeny
			p.Spec.Rules = []api.AuthzRule{{From: []api.AuthzSource{{Principals: []string{fmt.Sprintf("spiffe://fogmesh.local/ns/evil%d/*", i)}}}}}
		} else if i%2 == 0 {
			p.Spec.Rules = []api.AuthzRule{{
				From: []api.AuthzSource{{Principals: []string{fmt.Sprintf("spiffe://fogmesh.local/ns/%s/sa/client%d", ns, i), "spiffe://fogmesh.local/ns/" + ns + "/sa/frontend"}}},
				To:   []api.AuthzOperation{{Methods: []string{"GET", "POST"}, Paths: []string{"/api/*", "/healthz"}}},
				When: []api.AuthzCondition{{Key: "request.headers[x-env]", Values: []string{"prod"}}},
			}}
		} else {
			p.Spec.Action = api.ActionDeny
			p.Spec.Rules = []api.AuthzRule{{To: []api.AuthzOperation{{Methods: []string{"DELETE"}, Paths: []string{"/api/admin/*"}}}}}
		}
		if err := p.Validate(); err != nil {
			b.Fatal(err)
		}
		ps = append(ps, p)
	}
	e, err := Compile(ps)
	if err != nil {
		b.Fatal(err)
	}
	return e
}

// BenchmarkDecide1000: one HTTP request against 1,000 policies.
func BenchmarkDecide1000(b *testing.B) {
	e := benchEngine(b, 1000)
	r := &Request{SourceID: "spiffe://fogmesh.local/ns/ns4/sa/frontend", SourceNode: "n1", Namespace: "ns4", Service: "svc252",
		Port: "http", PortNumber: 80, Proto: HTTP, Method: "GET", Path: "/api/orders/17", Header: http.Header{"X-Env": {"prod"}}}
	if d := e.Decide(r); !d.Allow || d.Policy != "ns4/p504" {
		b.Fatalf("unexpected decision %+v", d)
	}
	b.ReportAllocs()
	for b.Loop() {
		e.Decide(r)
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	e := benchEngine(t, 1000)
	r := &Request{SourceID: "spiffe://fogmesh.local/ns/ns4/sa/frontend", Namespace: "ns4", Service: "svc252",
		Port: "http", PortNumber: 80, Proto: HTTP, Method: "GET", Path: "/api/orders/17", Header: http.Header{"X-Env": {"prod"}}}
	if n := testing.AllocsPerRun(100, func() { e.Decide(r) }); n != 0 {
		t.Fatalf("%v allocs per decision", n)
	}
}
