package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// demoMesh is the demo topology as separate processes: a control plane
// and four agents, shop-1-a and shop-1-b (site shop-1), shop-2-a (site
// shop-2) in region east, cloud-a (site cloud-1) in region cloud, each
// with site gossip and an instance of demo/hello. hello balances round
// robin over every instance (locality none), so requests cross nodes,
// sites and regions and open paths between agents. VIPs live in /17s of
// 127.25/16 and 127.26/16.
type demoMesh struct {
	t      *testing.T
	ctl    *proc
	admin  []string // -server, -ca, -token
	agents []*meshAgent
}

type meshAgent struct {
	name, site, region string
	p                  *proc
	addrs              map[string]string // admin, dns, ...
	vipRange           string
}

var demoNodes = []struct{ name, site, region, vips string }{
	{"shop-1-a", "shop-1", "east", "127.25.0.0/17"},
	{"shop-1-b", "shop-1", "east", "127.25.128.0/17"},
	{"shop-2-a", "shop-2", "east", "127.26.0.0/17"},
	{"cloud-a", "cloud-1", "cloud", "127.26.128.0/17"},
}

const helloPort = 8080

func startDemoMesh(t *testing.T) *demoMesh {
	t.Helper()
	state := t.TempDir()
	p, ca := startAddrs(t, "control", "-state-dir", state, "-admin-addr", any0, "-sync-addr", any0,
		"-heartbeat-interval", "500ms", "-node-timeout", "2s")
	flags := secureAdmin(t, p, state, ca["admin"])
	doc := filepath.Join(t.TempDir(), "svc.yaml")
	os.WriteFile(doc, []byte(fmt.Sprintf("apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: hello, namespace: demo}\nspec:\n  ports: [{name: http, port: %d, protocol: http}]\n  locality: none\n  balancer: round-robin\n", helloPort)), 0o644)
	if out, code := run(t, append([]string{"apply", "-f", doc}, flags...)...); code != 0 {
		t.Fatal(out)
	}
	m := &demoMesh{t: t, ctl: p, admin: flags}
	for _, n := range demoNodes {
		port := nameServer(t, "hello from node="+n.name, 0)
		dir := t.TempDir()
		tok, code := run(t, append([]string{"token", "create", "-site", n.site, "-ttl", "5m"}, flags...)...)
		if code != 0 {
			t.Fatalf("token create: %s", tok)
		}
		cfg := fmt.Sprintf("node: {name: %s, site: %s, region: %s}\ncontrol: [%q]\nmeshAddr: %q\ndnsAddr: %q\nadminAddr: %q\ngossipAddr: %q\nvipRange: %q\nstateDir: %q\njoinToken: %q\nhealthInterval: 500ms\n"+
			"workloads: [{service: hello, namespace: demo, address: 127.0.0.1, ports: [{name: http, port: %d}]}]\n",
			n.name, n.site, n.region, ca["sync"], any0, any0, any0, any0, n.vips, dir, strings.TrimSpace(tok), port)
		path := filepath.Join(dir, "agent.yaml")
		os.WriteFile(path, []byte(cfg), 0o644)
		ap, addrs := startAddrs(t, "agent", "-config", path)
		waitProcHTTP(t, ap, "http://"+addrs["admin"]+"/healthz")
		m.agents = append(m.agents, &meshAgent{name: n.name, site: n.site, region: n.region, p: ap, addrs: addrs, vipRange: n.vips})
	}
	// Ready: every agent routes hello to all four instances.
	for _, a := range m.agents {
		testenv.WaitFor(t, 30*time.Second, a.name+" routes hello to 4 endpoints", func() bool {
			return m.endpoints(a) == 4 && m.vipOf(a, false) != ""
		})
	}
	return m
}

type routeView struct {
	Service   string            `json:"service"`
	VIP       string            `json:"vip"`
	Endpoints []json.RawMessage `json:"endpoints"`
}

func (m *demoMesh) routes(a *meshAgent) []routeView {
	resp, err := http.Get("http://" + a.addrs["admin"] + "/v1/routes")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var rs []routeView
	json.NewDecoder(resp.Body).Decode(&rs)
	return rs
}

func (m *demoMesh) endpoints(a *meshAgent) int {
	for _, r := range m.routes(a) {
		if r.Service == "demo/hello" {
			return len(r.Endpoints)
		}
	}
	return 0
}

// vipOf is hello's URL on agent a.
func (m *demoMesh) vipOf(a *meshAgent, fatal bool) string {
	for _, r := range m.routes(a) {
		if r.Service == "demo/hello" && r.VIP != "" {
			return "http://" + r.VIP + ":" + strconv.Itoa(helloPort) + "/"
		}
	}
	if fatal {
		m.t.Fatalf("%s has no VIP for hello", a.name)
	}
	return ""
}

// traffic sends requests to hello through every agent (bounded: until
// stop is closed or three minutes pass) and counts the answers.
func (m *demoMesh) traffic(stop <-chan struct{}) (wait func() (ok, failed int)) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	okN, failN := 0, 0
	c := &http.Client{Timeout: 5 * time.Second}
	for _, a := range m.agents {
		url := m.vipOf(a, true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(3 * time.Minute)
			for time.Now().Before(deadline) {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				resp, err := c.Get(url)
				good := err == nil && resp.StatusCode == 200
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				mu.Lock()
				if good {
					okN++
				} else {
					failN++
				}
				mu.Unlock()
			}
		}()
	}
	return func() (int, int) { wg.Wait(); return okN, failN }
}

var checkLine = regexp.MustCompile(`(?m)^(✔|‼|✖) ([^:]+):`)

// TestCheckGreenThenRed: fogmesh check on the demo topology as real
// processes passes every check (exit 0, one line each), and after an
// agent is killed with SIGKILL the "agents connected" check fails naming
// it, with a hint, and check exits 1; -o json says the same.
func TestCheckGreenThenRed(t *testing.T) {
	m := startDemoMesh(t)
	stop := make(chan struct{})
	wait := m.traffic(stop)
	// Paths open with the first requests; the check polls until green.
	var out string
	var code int
	testenv.WaitFor(t, 30*time.Second, "fogmesh check all green", func() bool {
		out, code = run(t, append([]string{"check"}, m.admin...)...)
		return code == 0
	})
	close(stop)
	if okN, failN := wait(); okN == 0 || failN != 0 {
		t.Fatalf("traffic: %d ok, %d failed", okN, failN)
	}
	t.Logf("green:\n%s", out)
	want := []string{"control plane reachable", "admin credentials accepted", "CA roots valid", "control plane certificate valid",
		"agents connected", "agents in sync", "clock skew", "agent APIs reachable", "node certificates valid", "DNS answering", "gossip healthy", "paths up"}
	got := checkLine.FindAllStringSubmatch(out, -1)
	if len(got) != len(want) {
		t.Fatalf("%d check lines, want %d:\n%s", len(got), len(want), out)
	}
	for i, g := range got {
		if g[1] != "✔" || g[2] != want[i] {
			t.Errorf("line %d: %s %s, want ✔ %s", i, g[1], g[2], want[i])
		}
	}
	if !strings.Contains(out, "4 nodes ready and connected") || !strings.Contains(out, "hello.demo.mesh") {
		t.Fatalf("details missing:\n%s", out)
	}

	m.agents[3].p.kill9(t) // cloud-a
	testenv.WaitFor(t, 20*time.Second, "check to fail after cloud-a was killed", func() bool {
		out, code = run(t, append([]string{"check", "-wait", "1s"}, m.admin...)...)
		return code != 0
	})
	t.Logf("red:\n%s", out)
	if code != 1 || !regexp.MustCompile(`(?m)^✖ agents connected: 1 of 4 nodes down: cloud-a`).MatchString(out) ||
		!strings.Contains(out, "hint: is the agent process running") || !strings.Contains(out, "✖ 1 of 12 checks failed") ||
		strings.Count(out, "✖") != 2 || strings.Contains(out, "‼") {
		t.Fatalf("exit %d, want 1 with only agents connected failing:\n%s", code, out)
	}
	jout, code := run(t, append([]string{"check", "-wait", "1s", "-o", "json"}, m.admin...)...)
	var res struct {
		OK     bool          `json:"ok"`
		Checks []checkResult `json:"checks"`
	}
	if err := json.Unmarshal([]byte(jout[:strings.LastIndex(jout, "}")+1]), &res); err != nil || code != 1 || res.OK {
		t.Fatalf("json: exit %d, %v:\n%s", code, err, jout)
	}
	failed := 0
	for _, c := range res.Checks {
		if c.Status == "fail" {
			failed++
			if c.Name != "agents connected" || c.Hint == "" {
				t.Errorf("failed check %+v", c)
			}
		}
	}
	if failed != 1 {
		t.Fatalf("%d failed checks in json, want 1:\n%s", failed, jout)
	}
	if out, code := run(t, append([]string{"check", "-o", "yaml"}, m.admin...)...); code != 2 || !strings.Contains(out, "not table or json") {
		t.Fatalf("-o yaml: exit %d %s", code, out)
	}
	// With the control plane gone, the first check fails with a hint and
	// the rest are not run.
	m.ctl.kill9(t)
	out, code = run(t, append([]string{"check"}, m.admin...)...)
	if code != 1 || !strings.HasPrefix(out, "✖ control plane reachable: ") || !strings.Contains(out, "hint: is 'fogmesh control' running") ||
		!strings.Contains(out, "✖ 1 of 1 checks failed") {
		t.Fatalf("control plane killed: exit %d\n%s", code, out)
	}
}

// TestStatAndTop: with real traffic through every agent, fogmesh stat
// prints hello's rate (non-zero), a 100% success ratio and latency
// percentiles from the counters in the agents' heartbeats (the control
// plane's GET /v1/stats), and per-edge rows from each source node; top
// refreshes -iterations times and stops; stat -agents scrapes one agent's
// /metrics without the control plane.
func TestStatAndTop(t *testing.T) {
	m := startDemoMesh(t)
	stop := make(chan struct{})
	wait := m.traffic(stop)
	var out string
	var code int
	// Rates need two heartbeats with traffic between them from every agent.
	testenv.WaitFor(t, 30*time.Second, "stat to show edges from all 4 nodes", func() bool {
		out, code = run(t, append([]string{"stat", "-edges", "-o", "json"}, m.admin...)...)
		var st struct {
			Edges []struct {
				SourceNode string
				RPS        float64
			}
		}
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
			return false
		}
		sources := map[string]bool{}
		for _, e := range st.Edges {
			if e.RPS > 0 {
				sources[e.SourceNode] = true
			}
		}
		return len(sources) == 4
	})
	topOut, topCode := run(t, append([]string{"top", "-interval", "500ms", "-iterations", "2"}, m.admin...)...)
	// Straight from one agent's API, without the control plane.
	oneOut, oneCode := run(t, "stat", "-interval", "1s", "-edges", "-agents", "http://"+m.agents[1].addrs["admin"], "-server", closedAddr(t))
	close(stop)
	wait()
	if code != 0 {
		t.Fatalf("stat: exit %d\n%s", code, out)
	}
	var st struct {
		Services []struct {
			Service      string
			RPS, Success float64
			P50, P99     float64
		}
		Edges []struct {
			Service, SourceNode, Node, Tier string
			RPS                             float64
		}
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("stat json: %v\n%s", err, out)
	}
	if len(st.Services) != 1 || st.Services[0].Service != "demo/hello" || st.Services[0].RPS <= 0 || st.Services[0].Success != 1 ||
		st.Services[0].P50 <= 0 || st.Services[0].P99 < st.Services[0].P50 {
		t.Fatalf("stat services: %+v\n%s", st.Services, out)
	}
	sources := map[string]bool{}
	for _, e := range st.Edges {
		if e.RPS > 0 {
			sources[e.SourceNode] = true
		}
		if e.SourceNode == e.Node && e.Tier != "node" {
			t.Errorf("edge %+v: same node, tier %s", e, e.Tier)
		}
	}
	if len(sources) != 4 {
		t.Fatalf("edges from %v, want all 4 nodes:\n%s", sources, out)
	}
	if topCode != 0 || strings.Count(topOut, "fogmesh top —") != 2 || !regexp.MustCompile(`demo/hello\s+\d+\.\d\d\s+100\.00%\s+\d`).MatchString(topOut) {
		t.Fatalf("top: exit %d\n%s", topCode, topOut)
	}
	if oneCode != 0 || !regexp.MustCompile(`(?m)^demo/hello\s+\d+\.\d\d\s+100\.00%`).MatchString(oneOut) ||
		!regexp.MustCompile(`(?m)^(\S+@)?shop-1-b\s+demo/hello\s+cloud-a\s+any\s`).MatchString(oneOut) || regexp.MustCompile(`(?m)^(\S+@)?shop-1-a\s`).MatchString(oneOut) {
		t.Fatalf("stat -agents of shop-1-b: exit %d\n%s", oneCode, oneOut)
	}
	out, code = run(t, "stat", "-interval", "0s")
	if code != 2 || !strings.Contains(out, "-interval must be positive") {
		t.Fatalf("bad interval: exit %d %s", code, out)
	}
}
