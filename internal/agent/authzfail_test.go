package agent

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/authz"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// lockedBuffer is safe for several writing goroutines.
type lockedBuffer = testenv.Buffer

// TestInvalidPolicyFailsClosed (issue 9, finding 10): a policy the agent
// cannot compile (here: an action and a condition key of a newer control
// plane, which the control plane's validation would have refused today)
// denies everything it selects instead of being dropped: a DENY policy's
// service stays closed although another policy allows the request, and a
// namespace whose only ALLOW policy is invalid stays default-deny. Other
// services keep their policies. The agent logs it once and exports how
// many policies fail closed.
func TestInvalidPolicyFailsClosed(t *testing.T) {
	logs := &lockedBuffer{}
	ms := metrics.NewSet()
	a, err := New(Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
		DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", VIPRange: "127.247.0.0/16",
		Insecure: true, Metrics: ms, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	pol := func(ns, name, svc, action string, rules ...api.AuthzRule) *api.AuthorizationPolicy {
		return &api.AuthorizationPolicy{APIVersion: api.APIVersion, Kind: api.KindAuthorizationPolicy,
			Meta: api.Meta{Namespace: ns, Name: name}, Spec: api.AuthorizationPolicySpec{Service: svc, Action: action, Rules: rules}}
	}
	allowAPI := api.AuthzRule{To: []api.AuthzOperation{{Paths: []string{"/api/*"}}}}
	claims := api.AuthzRule{When: []api.AuthzCondition{{Key: "request.auth.claims[iss]", Values: []string{"https://evil"}}}}
	a.mu.Lock()
	for _, p := range []*api.AuthorizationPolicy{
		pol("shop", "web-api", "web", api.ActionAllow, allowAPI),
		pol("shop", "web-deny-claims", "web", api.ActionDeny, claims), // cannot compile: unknown key
		pol("shop", "cart-api", "cart", api.ActionAllow, allowAPI),
		pol("locked", "only-allow", "", "AUDIT", allowAPI), // cannot compile: unknown action
	} {
		a.res.put(p)
	}
	a.rebuildLocked()
	a.mu.Unlock()

	e := a.view.Load().authz
	for _, c := range []struct {
		ns, svc, path string
		allow         bool
		policy        string
	}{
		{"shop", "web", "/api/orders", false, "shop/web-deny-claims"}, // allowed by web-api, but the DENY fails closed
		{"shop", "cart", "/api/orders", true, "shop/cart-api"},        // not selected by the invalid policy
		{"shop", "cart", "/admin", false, ""},
		{"locked", "vault", "/api/orders", false, "locked/only-allow"}, // namespace-wide: every service
		{"locked", "other", "/", false, "locked/only-allow"},
	} {
		d := e.Decide(&authz.Request{Namespace: c.ns, Service: c.svc, Proto: authz.HTTP, Method: "GET", Path: c.path})
		if d.Allow != c.allow || d.Policy != c.policy {
			t.Errorf("%s/%s %s: %+v, want allow=%v by %q", c.ns, c.svc, c.path, d, c.allow, c.policy)
		}
	}
	// TCP and MQTT connections to the namespace are closed too.
	for _, r := range []authz.Request{{Namespace: "locked", Service: "db", Proto: authz.TCP},
		{Namespace: "locked", Service: "broker", Proto: authz.MQTT, MQTT: authz.MQTTConnect}} {
		if d := e.Decide(&r); d.Allow {
			t.Errorf("%+v: allowed", r)
		}
	}
	var m strings.Builder
	ms.WritePrometheus(&m)
	if !strings.Contains(m.String(), "fogmesh_authz_invalid_policies 2\n") {
		t.Errorf("metrics: no fogmesh_authz_invalid_policies 2 in\n%s", m.String())
	}
	out := logs.String()
	for _, want := range []string{"shop/web-deny-claims", "locked/only-allow"} {
		if strings.Count(out, want) != 1 || !strings.Contains(out, "level=ERROR") {
			t.Errorf("log: want one error naming %s, got\n%s", want, out)
		}
	}
	// Logged once, not on every rebuild; fixed, the count returns to 0.
	a.rebuild()
	if strings.Count(logs.String(), "shop/web-deny-claims") != 1 {
		t.Errorf("logged again on an unrelated rebuild:\n%s", logs.String())
	}
	a.mu.Lock()
	a.res.put(pol("shop", "web-deny-claims", "web", api.ActionDeny))
	a.res.put(pol("locked", "only-allow", "", api.ActionAllow, allowAPI))
	a.rebuildLocked()
	a.mu.Unlock()
	m.Reset()
	ms.WritePrometheus(&m)
	if !strings.Contains(m.String(), "fogmesh_authz_invalid_policies 0\n") {
		t.Errorf("metrics after the fix: %s", m.String())
	}
	if d := a.view.Load().authz.Decide(&authz.Request{Namespace: "shop", Service: "web", Proto: authz.HTTP, Method: "GET", Path: "/api/x"}); !d.Allow {
		t.Errorf("web after the fix: %+v", d)
	}
}
