package control

import (
	"encoding/json"
	"strings"
	"testing"
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
