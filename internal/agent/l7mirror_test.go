package agent

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRequestMirroring: a rule mirroring to subset v2 copies every
// matched request there (Host "<host>-shadow", same body), while clients
// get only v1's answers, fast, although v2 is slow and failing; a body over
// 64 KiB is forwarded whole but not mirrored; a 50% mirror copies about
// half of 300 requests.
func TestRequestMirroring(t *testing.T) {
	primary, _ := startHTTP(t, "v1")
	var mu sync.Mutex
	var hosts []string
	bodies := map[string]int{}
	// The shadow holds the copies of the slow phase until the test has
	// seen every client request answered: if a slow mirror delayed its
	// client, the client would wait on release, and the test would time
	// out instead of passing.
	release := make(chan struct{})
	shadow := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		hosts = append(hosts, r.Host)
		bodies[string(b)]++
		mu.Unlock()
		if string(b) == "half" {
			// The share phase counts selections: a healthy, fast shadow, so
			// neither the in-flight cap nor outlier ejection drops copies.
			return
		}
		if strings.HasPrefix(string(b), "body-") {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		http.Error(w, "shadow broke", 500)
	})}
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go shadow.Serve(sln)
	t.Cleanup(func() { shadow.Close() })
	mirrored := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(hosts)
	}

	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: mir, namespace: demo}
spec:
  ports: [{name: web, port: 19127, protocol: http}]
---
apiVersion: fogmesh.io/v1alpha1
kind: DestinationPolicy
metadata: {name: mir, namespace: demo}
spec:
  service: mir
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Route
metadata: {name: mir, namespace: demo}
spec:
  service: mir
  rules:
  - match: [{headers: {x-half: {exact: "1"}}}]
    backends: [{subset: v1}]
    mirror: {subset: v2, percent: 50}
  - backends: [{subset: v1}]
    mirror: {subset: v2}
`)
	w1, w2 := webWorkload("mir", "mir-v1", primary), webWorkload("mir", "mir-v2", sln.Addr().(*net.TCPAddr).Port)
	w1.Labels, w2.Labels = map[string]string{"version": "v1"}, map[string]string{"version": "v2"}
	a := startAgent(t, agentOpts{name: "mirn", site: "s1", region: "r1", vipOctet: 203, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{w1, w2}})
	waitFor(t, "endpoints", func() bool { return len(endpointsOf(a, "demo/mir")) == 2 })
	url := "http://127.203.0.1:19127/"
	c := &http.Client{Timeout: 5 * time.Second}
	waitFor(t, "route", func() bool {
		resp, err := c.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return mirrored() > 0
	})
	inflight := func() int64 { return a.l7.mirrors.Load() }
	waitFor(t, "the probes' copies to land", func() bool { return inflight() == 0 })
	base := mirrored()
	post := func(body, half string) {
		t.Helper()
		req, _ := http.NewRequest("POST", url, strings.NewReader(body))
		req.Host = "mir.demo"
		if half != "" {
			req.Header.Set("X-Half", half)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "v1 ") {
			t.Fatalf("client got %d %q; want v1's answer", resp.StatusCode, b)
		}
	}
	for i := 0; i < 20; i++ {
		post(fmt.Sprintf("body-%d", i), "")
	}
	waitFor(t, "20 copies", func() bool { return mirrored() == base+20 })
	close(release) // every client was answered while its copy was held
	waitFor(t, "the held copies to end", func() bool { return inflight() == 0 })
	mu.Lock()
	for i := 0; i < 20; i++ {
		if bodies[fmt.Sprintf("body-%d", i)] != 1 {
			t.Errorf("body-%d mirrored %d times", i, bodies[fmt.Sprintf("body-%d", i)])
		}
	}
	if h := hosts[len(hosts)-1]; h != "mir.demo-shadow" {
		t.Errorf("mirror Host %q, want mir.demo-shadow", h)
	}
	mu.Unlock()

	post(strings.Repeat("x", 100<<10), "") // over 64 KiB: not mirrored
	const n = 300
	for i := 0; i < n; i++ {
		// Paced on the copies in flight: far below the 64 that
		// mirrorMaxInflight allows, so none is dropped for the cap.
		waitFor(t, "copies in flight to drain", func() bool { return inflight() < 16 })
		post("half", "1")
	}
	waitFor(t, "the last copies to land", func() bool { return inflight() == 0 })
	mu.Lock()
	half, big := bodies["half"], bodies[strings.Repeat("x", 100<<10)]
	mu.Unlock()
	t.Logf("mirror 50%%: %d of %d copied", half, n)
	if big != 0 {
		t.Errorf("a 100 KiB body was mirrored")
	}
	if half < n*35/100 || half > n*65/100 {
		t.Errorf("mirror 50%%: %d of %d copied", half, n)
	}
	var buf strings.Builder
	a.cfg.Metrics.WritePrometheus(&buf)
	for _, want := range []string{`fogmesh_http_mirror_requests_total{service="demo/mir",target="demo/mir",result="5xx"}`,
		`fogmesh_http_mirror_requests_total{service="demo/mir",target="demo/mir",result="body_too_large"} 1`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
