package agent

import (
	"io"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
)

// TestCircuitBreakerStatePrunedWithItsService: a service's request limiter
// (http port, maxRequests) and connection counter (tcp port,
// maxConnections) exist once traffic went through; when the services are
// deleted, the next view drops that state, and keeps a remaining service's.
func TestCircuitBreakerStatePrunedWithItsService(t *testing.T) {
	web := startDelayed(t, "web", 0)
	keep := startDelayed(t, "keep", 0)
	echo := startEcho(t, "e", "127.0.0.1:0")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: cbweb, namespace: demo}
spec:
  ports: [{name: web, port: 19330, protocol: http}]
  circuitBreaker: {maxRequests: 5}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: cbkeep, namespace: demo}
spec:
  ports: [{name: web, port: 19331, protocol: http}]
  circuitBreaker: {maxRequests: 5}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: cbtcp, namespace: demo}
spec:
  ports: [{name: tcp, port: 19332}]
  circuitBreaker: {maxConnections: 5}
`)
	a := startAgent(t, agentOpts{name: "prune", site: "s1", region: "r1", vipOctet: 168, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("cbweb", "cbweb-1", web), webWorkload("cbkeep", "cbkeep-1", keep),
			wlFor("cbtcp", echo)}})
	waitFor(t, "endpoints", func() bool {
		return len(endpointsOf(a, "demo/cbweb")) == 1 && len(endpointsOf(a, "demo/cbkeep")) == 1 && len(endpointsOf(a, "demo/cbtcp")) == 1
	})
	for _, url := range []string{"http://" + vipOf(t, a, "demo/cbweb") + ":19330/", "http://" + vipOf(t, a, "demo/cbkeep") + ":19331/"} {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %s", url, resp.Status)
		}
	}
	mustRoundTrip(t, vipOf(t, a, "demo/cbtcp")+":19332", "e: ping")

	limiters, counters := limiterKeys(a)
	slices.Sort(limiters)
	if !slices.Equal(limiters, []string{"demo/cbkeep", "demo/cbweb"}) || !slices.Equal(counters, []string{"demo/cbtcp|conn"}) {
		t.Fatalf("before the delete: limiters %v, counters %v", limiters, counters)
	}
	// State in use is kept; wait until the requests and the connection
	// have left the agent, so the delete finds it idle.
	waitFor(t, "the circuit breakers to be idle", func() bool {
		idle := true
		a.l7.limiters.Range(func(_, l any) bool { idle = idle && l.(*reqLimiter).idle(); return true })
		a.svcCounters.Range(func(_, c any) bool { idle = idle && c.(*atomic.Int64).Load() == 0; return true })
		return idle
	})

	for _, name := range []string{"cbweb", "cbtcp"} {
		req, _ := http.NewRequest(http.MethodDelete, "http://"+cp.AdminAddr()+"/v1/services/demo/"+name, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("delete %s: %s", name, resp.Status)
		}
	}
	waitFor(t, "the deleted services to leave the view", func() bool {
		return !hasService(a, "demo/cbweb") && !hasService(a, "demo/cbtcp")
	})
	limiters, counters = limiterKeys(a)
	if !slices.Equal(limiters, []string{"demo/cbkeep"}) || len(counters) != 0 {
		t.Fatalf("after the delete: limiters %v, counters %v; want only demo/cbkeep's limiter", limiters, counters)
	}
}

// vipOf returns the IPv4 VIP of service key (ns/name) in a's routes.
func vipOf(t testing.TB, a *Agent, key string) string {
	t.Helper()
	for _, r := range a.Routes() {
		if r.Service == key && r.VIP != "" {
			return r.VIP
		}
	}
	t.Fatalf("no VIP for %s", key)
	return ""
}
