package control

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestApplyWarnsAboutRoutesOfOneService: two VirtualServices (routes) for
// one host are not merged; applying the second warns, naming both and the
// one that applies (issue 11).
func TestApplyWarnsAboutRoutesOfOneService(t *testing.T) {
	s := startServer(t, t.TempDir())
	vs := func(name, subset string) string {
		return "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: " + name + ", namespace: demo}\nspec:\n  hosts: [hello]\n  http: [{route: [{destination: {host: hello, subset: " + subset + "}}]}]\n"
	}
	warnings := func(doc string) []string {
		code, body := applyDoc(t, s, doc)
		if code != 200 {
			t.Fatalf("apply: %d %s", code, body)
		}
		var r ApplyResponse
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatal(err)
		}
		return r.Warnings
	}
	if w := warnings(vs("first", "v1")); len(w) != 0 {
		t.Fatalf("first route: warnings %q", w)
	}
	w := warnings(vs("second", "v2"))
	if len(w) != 1 || !strings.Contains(w[0], "demo/hello is also routed by first") || !strings.Contains(w[0], "only the newest, demo/second, applies") {
		t.Fatalf("second route: warnings %q", w)
	}
	// Applied again unchanged, the first stays older: the second still wins.
	w = warnings(vs("first", "v1"))
	if len(w) != 1 || !strings.Contains(w[0], "route demo/first") || !strings.Contains(w[0], "only the newest, demo/second, applies") {
		t.Fatalf("first again: warnings %q", w)
	}
}

// TestIstioRootNamespaceSetting: the control plane's IstioRootNamespace
// decides which Istio AuthorizationPolicies apply mesh-wide.
func TestIstioRootNamespaceSetting(t *testing.T) {
	s := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, Insecure: true, IstioRootNamespace: "mesh-root"})
	for _, ns := range []string{"mesh-root", "istio-system"} {
		doc := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: " + ns + "}\nspec: {action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}\n"
		if code, body := applyDoc(t, s, doc); code != 200 {
			t.Fatalf("apply: %d %s", code, body)
		}
	}
	resp, err := http.Get("http://" + s.AdminAddr() + "/v1/authorizationpolicies")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list struct{ Items []json.RawMessage }
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, raw := range list.Items {
		var p struct {
			Metadata struct{ Namespace string }
			Spec     struct{ MeshWide bool }
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			t.Fatal(err)
		}
		got[p.Metadata.Namespace] = p.Spec.MeshWide
	}
	if len(got) != 2 || !got["mesh-root"] || got["istio-system"] {
		t.Fatalf("meshWide by namespace: %v, want only mesh-root", got)
	}
}
