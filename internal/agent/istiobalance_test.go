package agent

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"
)

// balanceCase is one Istio load-balancing conformance case: documents for
// one service (SVC is filled in), where its endpoints run, and the share
// of n sequential requests each backend gets per Istio's documentation.
type balanceCase struct {
	name      string
	docs      string
	endpoints []balanceEP
	balancer  string // the fogmesh balancer the DestinationRule gives (waited for)
	n         int
	want      map[string]float64 // backend -> share of the n requests
	tol       float64            // absolute tolerance on each share
}

// balanceEP is an endpoint served by backend ("a" to "d") on node ("cli",
// the caller's node, or "n2", "n3", other sites of the caller's region),
// with label version.
type balanceEP struct{ backend, node, version string }

const threeNodeRR = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: SVC, namespace: demo}
spec:
  host: SVC
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN`

var threeNodes = []balanceEP{{"a", "cli", "v1"}, {"b", "n2", "v1"}, {"c", "n3", "v1"}}

// istioBalanceCases follow Istio's DestinationRule reference for the
// cases where fogmesh's shares differed (issue 11, item 3).
var istioBalanceCases = []balanceCase{
	{name: "ROUND_ROBIN in a two-endpoint subset is 50/50", docs: `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: SVC, namespace: demo}
spec:
  hosts: [SVC]
  http:
  - route: [{destination: {host: SVC, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: SVC, namespace: demo}
spec:
  host: SVC
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`, endpoints: []balanceEP{{"a", "n2", "v1"}, {"b", "n2", "v1"}, {"c", "n2", "v2"}, {"d", "n2", "v2"}},
		balancer: "round-robin", n: 400, want: map[string]float64{"a": 0.5, "b": 0.5}, tol: 0.1},
	{name: "LEAST_REQUEST spreads sequential requests", docs: `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: SVC, namespace: demo}
spec:
  host: SVC
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
`, endpoints: []balanceEP{{"a", "n2", "v1"}, {"b", "n2", "v1"}},
		balancer: "least-conn", n: 400, want: map[string]float64{"a": 0.5, "b": 0.5}, tol: 0.1},
	{name: "ROUND_ROBIN over three nodes without outlierDetection spreads", docs: threeNodeRR + "}\n",
		endpoints: threeNodes, balancer: "round-robin", n: 300, want: map[string]float64{"a": 1.0 / 3, "b": 1.0 / 3, "c": 1.0 / 3}, tol: 0.1},
	{name: "ROUND_ROBIN over three nodes with locality disabled spreads", docs: threeNodeRR + ", localityLbSetting: {enabled: false}}\n    outlierDetection: {consecutive5xxErrors: 5}\n",
		endpoints: threeNodes, balancer: "round-robin", n: 300, want: map[string]float64{"a": 1.0 / 3, "b": 1.0 / 3, "c": 1.0 / 3}, tol: 0.1},
	{name: "ROUND_ROBIN over three nodes with outlierDetection keeps the caller's node", docs: threeNodeRR + "}\n    outlierDetection: {consecutive5xxErrors: 5}\n",
		endpoints: threeNodes, balancer: "round-robin", n: 100, want: map[string]float64{"a": 1}},
}

// TestIstioBalancing: each case's documents applied to a control plane,
// its endpoints run on the caller's node "cli" (site s1) and on nodes of
// sites s2 and s3 of the same region, requested through cli's agent; each
// backend's share of sequential requests is what Istio's documentation
// gives.
func TestIstioBalancing(t *testing.T) {
	ports := map[string]int{}
	for _, b := range []string{"a", "b", "c", "d"} {
		ports[b], _ = startHTTP(t, b)
	}
	cp := startControl(t, t.TempDir(), "")
	byNode := map[string][]Workload{}
	for i, c := range istioBalanceCases {
		svc := fmt.Sprintf("lb%d", i)
		apply(t, cp, httpSvcDocLB(svc, 19600+i, "http", "edge-aware"))
		apply(t, cp, strings.ReplaceAll(c.docs, "SVC", svc))
		for _, e := range c.endpoints {
			w := webWorkload(svc, svc+"-"+e.backend, ports[e.backend])
			w.Labels = map[string]string{"version": e.version}
			byNode[e.node] = append(byNode[e.node], w)
		}
	}
	start := func(name, site, vips string) *Agent {
		return startAgentWith(t, agentOpts{name: name, site: site, region: "r1", control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
			workloads: byNode[name]}, func(c *Config) { c.VIPRange = vips })
	}
	start("n2", "s2", "127.217.0.0/17")
	start("n3", "s3", "127.217.128.0/17")
	cli := start("cli", "s1", "127.216.0.0/16")
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}}
	t.Cleanup(c.CloseIdleConnections)
	for i, tc := range istioBalanceCases {
		t.Run(tc.name, func(t *testing.T) {
			key := fmt.Sprintf("demo/lb%d", i)
			waitFor(t, "the endpoints, healthy, and the policy", func() bool {
				sv := cli.view.Load().services[key]
				if sv == nil || len(sv.endpoints) != len(tc.endpoints) || sv.svc.Spec.Balancer != tc.balancer {
					return false
				}
				for _, ev := range sv.endpoints {
					if !ev.healthy {
						return false
					}
				}
				return true
			})
			url := fmt.Sprintf("http://%s:%d/", cli.view.Load().services[key].vip4, 19600+i)
			get := func() (string, error) {
				resp, err := c.Get(url)
				if err != nil {
					return "", err
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return "", fmt.Errorf("%s: %s", resp.Status, b)
				}
				return strings.Fields(string(b) + " ?")[0], nil
			}
			waitFor(t, "the listener", func() bool { _, err := get(); return err == nil })
			got := map[string]int{}
			for range tc.n {
				b, err := get()
				if err != nil {
					t.Fatal(err)
				}
				got[b]++
			}
			for b := range got {
				if _, ok := tc.want[b]; !ok {
					t.Errorf("backend %s got %d of %d, want none", b, got[b], tc.n)
				}
			}
			for b, share := range tc.want {
				if s := float64(got[b]) / float64(tc.n); math.Abs(s-share) > tc.tol+1e-9 {
					t.Errorf("backend %s got %d of %d (%.3f), want %.3f ± %.2f; all: %v", b, got[b], tc.n, s, share, tc.tol, got)
				}
			}
			t.Logf("%v", got)
		})
	}
}
