package api

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestAuthorizationPolicyExample(t *testing.T) {
	b, err := os.ReadFile("../../examples/authz.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, warnings, err := DecodeWithWarnings(b)
	if err != nil || len(warnings) != 0 || len(objs) != 4 {
		t.Fatalf("%v %v %d", err, warnings, len(objs))
	}
	p := objs[1].(*AuthorizationPolicy)
	if p.Meta.Key() != "shop/orders-readers" || p.Spec.Action != ActionAllow || p.Spec.Rules[0].To[0].Paths[0] != "/api/*" {
		t.Fatalf("%+v", p)
	}
	if d := objs[0].(*AuthorizationPolicy); d.Spec.Service != "" || len(d.Spec.Rules) != 0 || d.Spec.Action != ActionAllow {
		t.Fatalf("default deny: %+v", d)
	}
}

func TestAuthorizationPolicyValidation(t *testing.T) {
	doc := func(spec string) string {
		return `{"apiVersion":"fogmesh.io/v1alpha1","kind":"AuthorizationPolicy","metadata":{"name":"p","namespace":"shop"},"spec":` + spec + `}`
	}
	for _, c := range []struct{ spec, field string }{
		{`{"action":"AUDIT"}`, "spec.action"},
		{`{"service":"Bad_Name"}`, "spec.service"},
		{`{"rules":[{"from":[{"principals":[""]}]}]}`, "spec.rules[0].from[0].principals[0]"},
		{`{"rules":[{"from":[{"namespaces":["a*b"]}]}]}`, "spec.rules[0].from[0].namespaces[0]"},
		{`{"rules":[{"to":[{"paths":["/a","*x*"]}]}]}`, "spec.rules[0].to[0].paths[1]"},
		{`{"rules":[{"to":[{"ports":["70000"]}]}]}`, "spec.rules[0].to[0].ports[0]"},
		{`{"rules":[{"to":[{"notPorts":["0"]}]}]}`, "spec.rules[0].to[0].notPorts[0]"},
		{`{"rules":[{"to":[{"publish":["a/#/b"]}]}]}`, "spec.rules[0].to[0].publish[0]"},
		{`{"rules":[{"to":[{"subscribe":["a+"]}]}]}`, "spec.rules[0].to[0].subscribe[0]"},
		{`{"rules":[{"when":[{"key":"source.ip","values":["1.2.3.4"]}]}]}`, "spec.rules[0].when[0].key"},
		{`{"rules":[{"when":[{"key":"request.headers[x]"}]}]}`, "spec.rules[0].when[0].values"},
		{`{"rules":[{"form":[]}]}`, "spec.rules[0].form"}, // the full path (issue 16)
		// Pseudo-headers other than :authority (host) are refused, not
		// left to never match: methods and paths have their own fields.
		{`{"rules":[{"when":[{"key":"request.headers[:method]","values":["GET"]}]}]}`, "spec.rules[0].when[0].key"},
		{`{"rules":[{"when":[{"key":"request.headers[:path]","values":["/x"]}]}]}`, "spec.rules[0].when[0].key"},
		{`{"rules":[{"when":[{"key":"request.headers[:scheme]","values":["https"]}]}]}`, "spec.rules[0].when[0].key"},
	} {
		_, err := Decode([]byte(doc(c.spec)))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%s: got %v, want an error naming %s", c.spec, err, c.field)
		}
	}
}

// TestAuthorityConditionKeys: request.headers[host] and [:authority], in
// any case, are valid and name one header.
func TestAuthorityConditionKeys(t *testing.T) {
	for _, key := range []string{"request.headers[host]", "request.headers[HOST]", "request.headers[:authority]", "request.headers[:Authority]"} {
		doc := `{"apiVersion":"fogmesh.io/v1alpha1","kind":"AuthorizationPolicy","metadata":{"name":"p","namespace":"shop"},"spec":{"action":"DENY","rules":[{"when":[{"key":"` + key + `","values":["a.example.com"]}]}]}}`
		if _, err := Decode([]byte(doc)); err != nil {
			t.Errorf("%s: %v", key, err)
		}
		if name, ok := HeaderConditionName(key); !ok || name != AuthorityHeader {
			t.Errorf("%s: HeaderConditionName gives %q %v", key, name, ok)
		}
	}
}

func TestIstioAuthorizationTranslation(t *testing.T) {
	b, err := os.ReadFile("../../examples/istio-authz.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, warnings, err := DecodeWithWarnings(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 {
		t.Fatalf("got %d objects", len(objs))
	}
	p := objs[0].(*AuthorizationPolicy)
	if p.Meta.Key() != "shop/reviews-viewer" || p.Spec.Service != "reviews" || p.Spec.Action != ActionAllow || len(p.Spec.Rules) != 1 {
		t.Fatalf("%+v", p)
	}
	r := p.Spec.Rules[0]
	if r.From[0].Principals[0] != "spiffe://fogmesh.local/ns/shop/sa/productpage" || r.To[0].Methods[0] != "GET" ||
		r.To[0].Paths[0] != "/reviews/*" || r.When[0].Key != "request.headers[version]" || r.When[0].Values[1] != "v2" {
		t.Fatalf("rule %+v", r)
	}
	all := strings.Join(warnings, "\n")
	for _, want := range []string{
		"spec.rules[1].from[0].source.requestPrincipals is not supported",
		"spec.rules[1] is dropped",
		"spec.mtls.mode PERMISSIVE cannot weaken fogmesh",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no warning %q in:\n%s", want, all)
		}
	}
	if len(warnings) != 3 {
		t.Errorf("want 3 warnings, got:\n%s", all)
	}
}

func TestIstioAuthorizationForms(t *testing.T) {
	ap := func(spec string) string {
		return "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n" + spec
	}
	// DENY: an unsupported condition is ignored, the rule kept (denies more).
	objs, warns, err := DecodeWithWarnings([]byte(ap("  action: DENY\n  rules:\n  - from: [{source: {notPrincipals: ['*/sa/x'], ipBlocks: [1.2.3.4]}}]\n    to: [{operation: {hosts: [a], notMethods: [delete]}}]\n    when: [{key: source.ip, values: [1.2.3.4]}, {key: source.principal, values: [cluster.local/ns/a/sa/b]}]\n")))
	if err != nil {
		t.Fatal(err)
	}
	p := objs[0].(*AuthorizationPolicy)
	// notMethods [delete]: Istio matches methods case-sensitively, so
	// "delete" excludes no request; upper-casing it would deny less.
	// hosts [a]: translated (the request's authority), no longer ignored.
	if p.Spec.Action != ActionDeny || len(p.Spec.Rules) != 1 || len(p.Spec.Rules[0].To[0].NotMethods) != 0 ||
		strings.Join(p.Spec.Rules[0].To[0].Hosts, ",") != "a" ||
		p.Spec.Rules[0].When[0].Values[0] != "spiffe://fogmesh.local/ns/a/sa/b" || p.Spec.Service != "" {
		t.Fatalf("%+v", p)
	}
	if all := strings.Join(warns, "\n"); len(warns) != 3 || !strings.Contains(all, "ipBlocks is not supported and is ignored") ||
		strings.Contains(all, "operation.hosts") || !strings.Contains(all, `"source.ip"`) ||
		!strings.Contains(all, `spec.rules[0].to[0].operation.notMethods "delete" is not upper case`) {
		t.Fatalf("warnings:\n%s", all)
	}
	// ALLOW methods [get]: matches no request, so neither does its rule.
	objs, warns, err = DecodeWithWarnings([]byte(ap("  rules:\n  - to: [{operation: {methods: [get]}}]\n  - to: [{operation: {methods: [GET, post]}}, {operation: {methods: [put]}}]\n")))
	if err != nil {
		t.Fatal(err)
	}
	if p := objs[0].(*AuthorizationPolicy); len(p.Spec.Rules) != 1 || len(p.Spec.Rules[0].To) != 1 || strings.Join(p.Spec.Rules[0].To[0].Methods, ",") != "GET" {
		t.Fatalf("lower-case methods: %+v\n%s", p.Spec, strings.Join(warns, "\n"))
	}
	if all := strings.Join(warns, "\n"); !strings.Contains(all, "spec.rules[0] is dropped: it matches no request") ||
		!strings.Contains(all, "spec.rules[1].to[1] matches no request") {
		t.Fatalf("warnings:\n%s", all)
	}
	// CUSTOM fails closed: with no external authorizer, what its rules
	// select is denied (skipping it would open it); AUDIT is skipped with a
	// warning; an empty spec is allow-nothing.
	objs, warns, err = DecodeWithWarnings([]byte(ap("  action: CUSTOM\n  provider: {name: x}\n  rules: [{to: [{operation: {paths: ['/admin/*']}}]}]\n")))
	if err != nil || len(objs) != 1 || len(warns) != 1 || !strings.Contains(warns[0], "CUSTOM") {
		t.Fatalf("%v %v %v", objs, warns, err)
	}
	if p := objs[0].(*AuthorizationPolicy); p.Spec.Action != ActionDeny || len(p.Spec.Rules) != 1 || p.Spec.Rules[0].To[0].Paths[0] != "/admin/*" {
		t.Fatalf("CUSTOM: %+v", p.Spec)
	}
	objs, warns, err = DecodeWithWarnings([]byte(ap("  action: AUDIT\n  provider: {name: x}\n  rules: [{}]\n")))
	if err != nil || len(objs) != 0 || len(warns) != 1 || !strings.Contains(warns[0], "AUDIT") {
		t.Fatalf("%v %v %v", objs, warns, err)
	}
	objs, _, err = DecodeWithWarnings([]byte(ap("  {}\n")))
	if err != nil || len(objs) != 1 || len(objs[0].(*AuthorizationPolicy).Spec.Rules) != 0 {
		t.Fatalf("%v %v", objs, err)
	}
	objs, _, err = DecodeWithWarnings([]byte(ap("  selector: {matchLabels: {app: reviews, service: reviews}}\n")))
	if err != nil || objs[0].(*AuthorizationPolicy).Spec.Service != "reviews" {
		t.Fatalf("app and service naming one service: %v %v", objs, err)
	}
	for _, c := range []struct{ doc, want string }{
		{ap("  selector: {matchLabels: {version: v1}}\n"), "spec.selector.matchLabels.version"},
		// Istio selects the workloads with both labels: none is a service
		// of fogmesh's, and applying the policy to either would widen it
		// (its ALLOW rules added to that service's).
		{ap("  selector: {matchLabels: {app: reviews, service: ratings}}\n"), "spec.selector.matchLabels.service"},
		{ap("  targetRefs: [{kind: Service, name: a}]\n"), "spec.targetRefs"},
		{ap("  action: MAYBE\n"), "spec.action"},
		{ap("  rules: [{to: [{operation: {methods: GET}}]}]\n"), "spec.rules[0].to[0].operation.methods"},
		{ap("  rules: [{to: [{operation: {paths: ['a*b']}}]}]\n"), "spec.rules[0].to[0].paths[0]"},
		{"apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r}\nspec: {}\n", "only AuthorizationPolicy and PeerAuthentication"},
		{"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: r}\nspec: {mtls: {mode: LOOSE}}\n", "spec.mtls.mode"},
	} {
		if _, _, err := DecodeWithWarnings([]byte(c.doc)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s\ngot %v, want an error naming %q", c.doc, err, c.want)
		}
	}
	_, warns, err = DecodeWithWarnings([]byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: r}\nspec: {selector: {matchLabels: {app: a}}, mtls: {mode: STRICT}, portLevelMtls: {80: {mode: DISABLE}}}\n"))
	if err != nil || len(warns) != 1 || !strings.Contains(warns[0], "spec.portLevelMtls") {
		t.Fatalf("%v %v", warns, err)
	}
}
