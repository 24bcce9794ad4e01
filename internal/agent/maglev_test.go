package agent

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestMaglevBalancerByHeader: balancer maglev keeps every x-user on one
// endpoint and spreads 30 users over all three.
func TestMaglevBalancerByHeader(t *testing.T) {
	p1, _ := startHTTP(t, "m1")
	p2, _ := startHTTP(t, "m2")
	p3, _ := startHTTP(t, "m3")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: mg, namespace: demo}
spec:
  ports: [{name: web, port: 19123, protocol: http}]
  balancer: maglev
  hashKey: {header: x-user}
`)
	a := startAgent(t, agentOpts{name: "mgn", site: "s1", region: "r1", vipOctet: 200, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("mg", "mg-1", p1), webWorkload("mg", "mg-2", p2), webWorkload("mg", "mg-3", p3)}})
	waitFor(t, "endpoints", func() bool { return len(endpointsOf(a, "demo/mg")) == 3 })
	url := "http://127.200.0.1:19123/"
	c := &http.Client{}
	waitFor(t, "listener", func() bool { _, err := c.Get(url); return err == nil })
	used := map[string]bool{}
	for k := 0; k < 30; k++ {
		first := ""
		for i := 0; i < 4; i++ {
			req, _ := http.NewRequest("GET", url, nil)
			req.Header.Set("X-User", fmt.Sprintf("user-%d", k))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			got := strings.Fields(string(b))[0]
			if first == "" {
				first = got
			} else if got != first {
				t.Fatalf("user-%d went to %s then %s", k, first, got)
			}
		}
		used[first] = true
	}
	if len(used) < 3 {
		t.Fatalf("30 keys used only %v", used)
	}
}
