package syncproto

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Moved from internal/control with ValidLoads.
func TestValidLoadsDropsHostileEntries(t *testing.T) {
	in := map[string]float64{"demo/a": 3, "demo/neg": -1, "demo/inf": math.Inf(1), "demo/nan": math.NaN(),
		"demo/huge": 1e12, strings.Repeat("k", 600): 1, "demo/zero": 0}
	got := ValidLoads(in)
	if len(got) != 1 || got["demo/a"] != 3 {
		t.Fatalf("ValidLoads = %v, want only demo/a=3", got)
	}
	if ValidLoads(nil) != nil {
		t.Fatal("nil in, want nil out")
	}
	many := make(map[string]float64, maxLoadEntries+10)
	for i := range maxLoadEntries + 10 {
		many[fmt.Sprintf("demo/e%d", i)] = 1
	}
	if n := len(ValidLoads(many)); n > maxLoadEntries {
		t.Fatalf("ValidLoads kept %d entries, want at most %d", n, maxLoadEntries)
	}
}

// A scope names services ("ns/name") and namespaces ("ns/*"); malformed
// entries are ignored; objects of a service follow it, nodes and
// authorization policies are left to the driver (NodeRefs) or always sent.
func TestFilterScopeServices(t *testing.T) {
	f := NewFilter(&wire.Message{Scope: &wire.Scope{Services: []string{"demo/a", "other/*", "bad", "/x", "a/b/c"}}})
	if !f.Scoped() || f.All() {
		t.Fatal("a scope with services: want scoped, not all")
	}
	ep := func(ns, svc string) *api.Endpoint {
		return &api.Endpoint{Meta: api.Meta{Namespace: ns, Name: "e"}, Spec: api.EndpointSpec{Service: svc}}
	}
	cases := []struct {
		o    api.Object
		want bool
	}{
		{&api.Service{Kind: api.KindService, Meta: api.Meta{Namespace: "demo", Name: "a"}}, true},
		{&api.Service{Kind: api.KindService, Meta: api.Meta{Namespace: "demo", Name: "b"}}, false},
		{&api.Service{Kind: api.KindService, Meta: api.Meta{Namespace: "other", Name: "z"}}, true},
		{ep("demo", "a"), true},
		{ep("demo", "b"), false},
		{ep("other", "q"), true},
		{&api.Route{Meta: api.Meta{Namespace: "demo", Name: "r"}, Spec: api.RouteSpec{Service: "b"}}, false},
		{&api.Session{Meta: api.Meta{Namespace: "demo", Name: "s"}, Spec: api.SessionSpec{Service: "a"}}, true},
		{&api.DestinationPolicy{Meta: api.Meta{Namespace: "x", Name: "p"}, Spec: api.DestinationPolicySpec{Service: "a"}}, false},
		{&api.AuthorizationPolicy{Meta: api.Meta{Namespace: "x", Name: "p"}}, true},
		{&api.Node{Meta: api.Meta{Name: "n"}}, true},
	}
	for _, c := range cases {
		if got := f.Match(c.o); got != c.want {
			t.Errorf("Match(%s %s) = %v, want %v", c.o.GetKind(), c.o.GetMeta().Key(), got, c.want)
		}
	}
	if g := NewFilter(&wire.Message{Scope: &wire.Scope{Services: []string{"bad"}}}); g.Scoped() || !g.All() {
		t.Fatal("a scope of only malformed entries must select everything, as no scope")
	}
}

// NodeRefs: a node is needed while an endpoint in scope runs on it; the
// subscriber's own node always.
func TestNodeRefs(t *testing.T) {
	n := NewNodeRefs("me")
	steps := []struct {
		key, node     string
		entered, left string
	}{
		{"demo/a1", "w1", "w1", ""},
		{"demo/a2", "w1", "", ""},
		{"demo/a1", "w2", "w2", ""}, // w1 still has a2
		{"demo/a2", "", "", "w1"},   // a2 gone: w1 left
		{"demo/a3", "me", "", ""},   // own node: never entered or left
		{"demo/a3", "", "", ""},
		{"demo/a1", "w2", "", ""}, // no move
		{"demo/zz", "", "", ""},   // unknown and gone: nothing
	}
	for i, s := range steps {
		en, le := n.Endpoint(s.key, s.node)
		if en != s.entered || le != s.left {
			t.Fatalf("step %d %s->%q: entered %q left %q, want %q %q", i, s.key, s.node, en, le, s.entered, s.left)
		}
	}
	if !n.Wants("me") || !n.Wants("w2") || n.Wants("w1") {
		t.Fatalf("wants me %v w2 %v w1 %v, want true true false", n.Wants("me"), n.Wants("w2"), n.Wants("w1"))
	}
}

// A later subscribe widens a scoped filter with its valid, new entries
// (bounded by MaxScopeServices), leaves the filter it came from as it was,
// and widens nothing for a filter without scope (which has everything).
func TestFilterWiden(t *testing.T) {
	f := NewFilter(&wire.Message{Scope: &wire.Scope{Services: []string{"shop/*"}}})
	w, added := f.Widen([]string{"cloud/orders", "shop/*", "shop/web", "bad", "edge/*", "cloud/orders"})
	if strings.Join(added, ",") != "cloud/orders,shop/web,edge/*" {
		t.Fatalf("added %v", added)
	}
	for _, k := range []string{"cloud/orders", "edge/*", "shop/*", "shop/x"} {
		if !w.Covers(k) {
			t.Errorf("widened filter does not cover %s", k)
		}
	}
	if w.Covers("cloud/*") || w.Covers("cloud/billing") {
		t.Error("widened filter covers more than asked")
	}
	if f.InScope("cloud/orders") || f.Covers("edge/*") {
		t.Error("Widen changed the filter it came from")
	}
	all := NewFilter(&wire.Message{})
	if w, added := all.Widen([]string{"cloud/orders"}); len(added) != 0 || w.Scoped() {
		t.Fatalf("unscoped filter widened: %v", added)
	}
	many := make([]string, MaxScopeServices+5)
	for i := range many {
		many[i] = fmt.Sprintf("ns/s%d", i)
	}
	w, added = f.Widen(many)
	if n := len(w.services) + len(w.namespaces); n != MaxScopeServices || len(added) != MaxScopeServices-1 {
		t.Fatalf("scope holds %d entries after widening by %d (%d added), want at most %d", n, len(many), len(added), MaxScopeServices)
	}
}
