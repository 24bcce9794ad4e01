package agent

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMirrorCopiesAuthorized: a mirrored copy bound for an endpoint
// without an agent of its own (here a static one) is authorized by the
// client's agent like any request, so a request the policy denies is not
// copied there either (before, the copy left before the original was
// decided).
func TestMirrorCopiesAuthorized(t *testing.T) {
	primary, _ := startHTTP(t, "v1")
	var mu sync.Mutex
	var paths []string
	shadow := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
	})}
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go shadow.Serve(sln)
	t.Cleanup(func() { shadow.Close() })

	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, fmt.Sprintf(`apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: amir, namespace: demo}
spec: {ports: [{name: web, port: 19691, protocol: http}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Endpoint
metadata: {name: amir-shadow, namespace: demo, labels: {version: v2}}
spec: {service: amir, address: 127.0.0.1, ports: [{name: web, port: %d}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: DestinationPolicy
metadata: {name: amir, namespace: demo}
spec:
  service: amir
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Route
metadata: {name: amir, namespace: demo}
spec:
  service: amir
  rules: [{backends: [{subset: v1}], mirror: {subset: v2}}]
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: amir-no-secret, namespace: demo}
spec: {service: amir, action: DENY, rules: [{to: [{paths: ["/secret*"]}]}]}
`, sln.Addr().(*net.TCPAddr).Port))
	w1 := webWorkload("amir", "amir-v1", primary)
	w1.Labels = map[string]string{"version": "v1"}
	a := startAgent(t, agentOpts{name: "amirn", site: "s1", region: "r1", vipOctet: 249, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{w1}})
	waitFor(t, "endpoints and policy", func() bool {
		return len(endpointsOf(a, "demo/amir")) == 2 && a.view.Load().authz.Len() == 1 && a.view.Load().services["demo/amir"].route != nil
	})
	vip := "http://127.249.0.1:19691"
	waitListening(t, "127.249.0.1:19691")
	c := &http.Client{Timeout: 5 * time.Second}
	for _, p := range []struct {
		path string
		code int
	}{{"/secret/keys", 403}, {"/ok", 200}} {
		resp, err := c.Get(vip + p.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != p.code {
			t.Fatalf("GET %s: %d, want %d", p.path, resp.StatusCode, p.code)
		}
	}
	// Every copy counts one result once it is done.
	results := func() int {
		var m strings.Builder
		a.cfg.Metrics.WritePrometheus(&m)
		n := 0
		for _, l := range strings.Split(m.String(), "\n") {
			if strings.HasPrefix(l, `fogmesh_http_mirror_requests_total{service="demo/amir"`) {
				var v int
				fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &v)
				n += v
			}
		}
		return n
	}
	waitFor(t, "both copies decided", func() bool { return results() == 2 })
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(paths, ",") != "/ok" {
		t.Fatalf("the shadow endpoint got %q, want only /ok", paths)
	}
}
