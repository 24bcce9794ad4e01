package api

import (
	"strings"
	"testing"
)

// TestRouteHostHeaderMatch: a header match on :authority is one on host
// (the request's authority); other pseudo-headers, which would never
// match, are refused, as is naming the authority twice.
func TestRouteHostHeaderMatch(t *testing.T) {
	route := func(match string) string {
		return `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r"},"spec":{"service":"s","rules":[{"match":[` + match + `],"backends":[{}]}]}}`
	}
	for _, m := range []string{`{"headers":{":Authority":{"exact":"a"}}}`, `{"headers":{"Host":{"exact":"a"}}}`} {
		objs, err := Decode([]byte(route(m)))
		if err != nil {
			t.Fatalf("%s: %v", m, err)
		}
		h := objs[0].(*Route).Spec.Rules[0].Match[0].Headers
		sm, ok := h["host"]
		if len(h) != 1 || !ok || !sm.Matches("a") {
			t.Errorf("%s: headers %+v, want host", m, h)
		}
	}
	for _, c := range []struct{ match, want string }{
		{`{"headers":{":method":{"exact":"GET"}}}`, "spec.rules[0].match[0].headers.:method"},
		{`{"headers":{":path":{"prefix":"/"}}}`, "spec.rules[0].match[0].headers.:path"},
		{`{"withoutHeaders":{":scheme":{"exact":"http"}}}`, "spec.rules[0].match[0].withoutHeaders.:scheme"},
		{`{"headers":{"host":{"exact":"a"},":authority":{"exact":"b"}}}`, "one header"},
	} {
		if _, err := Decode([]byte(route(c.match))); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error naming %q", c.match, err, c.want)
		}
	}
}

// TestIstioPseudoHeaderMatchSkipped: a VirtualService match on a
// pseudo-header other than :authority is skipped, warned (as other fields
// fogmesh cannot evaluate), not refused; :authority is kept as host.
func TestIstioPseudoHeaderMatchSkipped(t *testing.T) {
	doc := "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: shop}\nspec:\n  hosts: [cart]\n  http:\n" +
		"  - match: [{headers: {\":method\": {exact: GET}}}, {headers: {\":authority\": {exact: a}}}]\n    route: [{destination: {host: cart}}]\n"
	objs, warnings, err := DecodeWithWarnings([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], ":method") {
		t.Errorf("warnings %q, want one naming :method", warnings)
	}
	for _, o := range objs {
		if r, ok := o.(*Route); ok {
			if m := r.Spec.Rules[0].Match; len(m) != 1 || len(m[0].Headers) != 1 || m[0].Headers["host"].Exact != "a" {
				t.Errorf("matches %+v, want the :authority one, as host", m)
			}
			return
		}
	}
	t.Fatalf("no Route in %+v", objs)
}
