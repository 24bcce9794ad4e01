package agent

import (
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestRequestMetricLabels: request series carry source node and site,
// destination service, endpoint, node, site and tier, and the route rule's
// name; a thousand distinct paths add no series.
func TestRequestMetricLabels(t *testing.T) {
	p, _ := startHTTP(t, "m")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: met, namespace: demo}
spec:
  ports: [{name: web, port: 19128, protocol: http}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Route
metadata: {name: met, namespace: demo}
spec:
  service: met
  rules:
  - name: api
    match: [{path: {prefix: /api}}]
    backends: [{}]
  - backends: [{}]
`)
	startAgent(t, agentOpts{name: "msrv", site: "east", region: "r1", vipOctet: 204, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("met", "met-1", p)}})
	client := startAgent(t, agentOpts{name: "mcli", site: "west", region: "r1", vipOctet: 205, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(client, "demo/met")) == 1 })
	c := &http.Client{Timeout: 5 * time.Second}
	url := "http://127.205.0.1:19128"
	waitFor(t, "listener", func() bool { _, err := c.Get(url + "/"); return err == nil })
	for i := 0; i < 1000; i++ {
		path := "/api/items/" + string(rune('a'+i%26)) + strings.Repeat("x", i%40)
		if i%2 == 1 {
			path = "/other/" + strings.Repeat("y", i%50)
		}
		resp, err := c.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	var buf strings.Builder
	client.cfg.Metrics.WritePrometheus(&buf)
	out := buf.String()
	want := `fogmesh_http_requests_total{service="demo/met",endpoint="met-1",node="msrv",site="east",tier="region",route="api",source_node="mcli",source_site="west",source_service="unknown",path="same_region",code_class="2xx"} 500`
	if !strings.Contains(out, want) {
		t.Fatalf("no %s in:\n%s", want, out)
	}
	// Latency as a Prometheus histogram: le buckets, for histogram_quantile.
	hist := `fogmesh_http_request_duration_seconds_bucket{service="demo/met",endpoint="met-1",node="msrv",site="east",tier="region",route="api",source_node="mcli",source_site="west",source_service="unknown",path="same_region",le="+Inf"} 500`
	if !strings.Contains(out, hist) {
		t.Fatalf("no %s in:\n%s", hist, out)
	}
	if !strings.Contains(out, `route="",source_node="mcli",source_site="west",source_service="unknown",path="same_region",code_class="2xx"}`) {
		t.Fatalf("no series for the unnamed rule")
	}
	series := regexp.MustCompile(`(?m)^fogmesh_http_requests_total\{service="demo/met".*$`).FindAllString(out, -1)
	if len(series) != 2*6 { // 2 routes × 6 code classes
		t.Fatalf("%d request series, want 12:\n%s", len(series), strings.Join(series, "\n"))
	}
}

// TestGoldenLabels: the path label follows the endpoint's tier, and the
// source service is the client identity's namespace/account.
func TestGoldenLabels(t *testing.T) {
	a := &Agent{}
	for tier, want := range map[Tier]string{TierNode: "same_node", TierSite: "same_site", TierRegion: "same_region", TierAny: "cross_region"} {
		if got := a.pathKind(&endpointView{tier: tier}); got != want {
			t.Errorf("tier %v: path %q, want %q", tier, got, want)
		}
	}
	for id, want := range map[string]string{
		"spiffe://fogmesh.local/ns/demo/sa/hello-client": "demo/hello-client",
		"": "unknown", "spiffe://x/site/s/node/n": "unknown",
	} {
		if got := sourceService(id); got != want {
			t.Errorf("sourceService(%q) = %q, want %q", id, got, want)
		}
	}
}
