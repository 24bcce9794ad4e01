package agent

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCircuitBreakerPendingRequests: maxRequests 1 with 2 pending: of 6
// concurrent requests to a 300 ms endpoint, 3 are served one after the
// other and 3 get 503 at once, counted as pending_full. With a 200 ms
// request timeout, a queued request gives up when it runs out
// (pending_timeout) instead of waiting.
func TestCircuitBreakerPendingRequests(t *testing.T) {
	slow := startDelayed(t, "slow", 300*time.Millisecond)
	// The endpoint behind the 200 ms request timeout answers far later
	// than that, so a timer that fires late on a loaded machine (-race,
	// 2 cores) cannot let a response through (seen: 1 of 6 answered 200
	// with a 300 ms endpoint).
	slower := startDelayed(t, "slower", 1500*time.Millisecond)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: pend, namespace: demo}
spec:
  ports: [{name: web, port: 19125, protocol: http}]
  circuitBreaker: {maxRequests: 1, maxPendingRequests: 2}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: pendto, namespace: demo}
spec:
  ports: [{name: web, port: 19126, protocol: http}]
  timeouts: {request: 200ms}
  circuitBreaker: {maxRequests: 1, maxPendingRequests: 5}
`)
	a := startAgent(t, agentOpts{name: "pendn", site: "s1", region: "r1", vipOctet: 202, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("pend", "pend-1", slow), webWorkload("pendto", "pendto-1", slower)}})
	waitFor(t, "endpoints", func() bool { return len(endpointsOf(a, "demo/pend")) == 1 && len(endpointsOf(a, "demo/pendto")) == 1 })
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	burst := func(url string, n int) (codes map[int]int, overflowFast int) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		codes = map[int]int{}
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				resp, err := c.Get(url)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				mu.Lock()
				defer mu.Unlock()
				codes[resp.StatusCode]++
				// Answered before the first slot (a 300 ms request) could
				// free: refused without waiting for it.
				if resp.Header.Get("X-Fogmesh-Overflow") == "true" && time.Since(start) < 300*time.Millisecond {
					overflowFast++
				}
			}()
		}
		wg.Wait()
		return codes, overflowFast
	}
	url := "http://127.202.0.1:19125/"
	waitFor(t, "listener", func() bool { _, err := c.Get(url); return err == nil })
	start := time.Now()
	codes, fast := burst(url, 6)
	took := time.Since(start)
	t.Logf("6 concurrent, maxRequests 1, maxPending 2: %v (%d overflows answered in <300ms), burst took %v", codes, fast, took)
	if codes[200] != 3 || codes[503] != 3 || fast != 3 {
		t.Fatalf("got %v with %d fast overflows; want 3×200 and 3 immediate 503s", codes, fast)
	}
	if took < 850*time.Millisecond {
		t.Fatalf("3 requests through 1 slot of 300 ms took %v: they did not queue", took)
	}
	toURL := "http://127.202.0.2:19126/"
	waitFor(t, "listener", func() bool { resp, err := c.Get(toURL); return err == nil && resp.Body.Close() == nil })
	// Six at once (the endpoint takes 1.5 s): the one in the slot times
	// out at 200 ms, and so do the
	// five queued behind it (the queue counts against the request
	// timeout); at most one of them can take the freed slot at that
	// moment, so at least four time out while still queued.
	codes, _ = burst(toURL, 6)
	if codes[200] != 0 || codes[503]+codes[504] != 6 {
		t.Fatalf("request timeout 200ms, endpoint 1.5s: got %v", codes)
	}
	var buf strings.Builder
	a.cfg.Metrics.WritePrometheus(&buf)
	for _, want := range []string{`fogmesh_agent_circuit_breaker_rejections_total{service="demo/pend",subset="",reason="pending_full"} 3`,
		`fogmesh_agent_circuit_breaker_rejections_total{service="demo/pendto",subset="",reason="pending_timeout"}`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
