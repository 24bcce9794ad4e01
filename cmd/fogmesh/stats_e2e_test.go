package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/promtext"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// statsUIState is what the test reads of GET /ui/api/state.
type statsUIState struct {
	Services []statsRow        `json:"services"`
	Edges    []statsRow        `json:"edges"`
	Denials  []map[string]any  `json:"denials"`
	Scrape   map[string]string `json:"scrapeErrors"`
}

type statsRow struct {
	Service, SourceNode, Node, Path string
	RPS, Success, P50, P99          float64
}

// TestStatsFromHeartbeats: real processes, secure mode. Two agents in two
// regions register an admin address nothing listens on, so the control
// plane cannot scrape them: the rates of `fogmesh stat` (control plane,
// the default) and of the web UI's state come from the golden counters in
// the agents' heartbeats, with the rate the test sends at (within a
// factor of 3) and its success ratio (3 of 4 answered below 500). The
// destination agent counts the requests it served in
// fogmesh_http_server_requests_total by source node. A denied request is
// in the UI's recent denials, and still is after the control plane
// restarts with both agents gone (read back from the stored audit chain).
func TestStatsFromHeartbeats(t *testing.T) {
	state := t.TempDir()
	cp, ca := startAddrs(t, "control", "-state-dir", state, "-admin-addr", any0, "-sync-addr", any0,
		"-heartbeat-interval", "1s", "-node-timeout", "4s")
	flags := secureAdmin(t, cp, state, ca["admin"])
	doc := filepath.Join(t.TempDir(), "svc.yaml")
	os.WriteFile(doc, []byte("apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: hello, namespace: demo}\n"+
		"spec:\n  ports: [{name: http, port: 8080, protocol: http}]\n  locality: none\n---\n"+
		"apiVersion: fogmesh.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: no-forbidden, namespace: demo}\n"+
		"spec:\n  service: hello\n  action: DENY\n  rules: [{to: [{paths: [/forbidden]}]}]\n"), 0o644)
	if out, code := run(t, append([]string{"apply", "-f", doc}, flags...)...); code != 0 {
		t.Fatal(out)
	}
	// The workload: /fail answers 500, anything else 200.
	ln, err := net.Listen("tcp", "127.40.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusInternalServerError)
		}
		io.WriteString(w, "hello\n")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	unreachable := "127.42.0.1:9" // in this test's range, where nothing listens: a scrape of it fails
	type agentSpec struct{ name, site, region, vips, workload string }
	specs := []agentSpec{
		{"edge-a", "edge-1", "east", "127.41.0.0/17", ""},
		{"cloud-b", "cloud-1", "cloud", "127.41.128.0/17", fmt.Sprintf("workloads: [{service: hello, namespace: demo, address: 127.40.0.1, ports: [{name: http, port: %d}]}]\n", ln.Addr().(*net.TCPAddr).Port)},
	}
	agents := map[string]*meshAgent{}
	for _, s := range specs {
		dir := t.TempDir()
		tok, code := run(t, append([]string{"token", "create", "-site", s.site, "-ttl", "5m"}, flags...)...)
		if code != 0 {
			t.Fatalf("token create: %s", tok)
		}
		cfg := fmt.Sprintf("node: {name: %s, site: %s, region: %s}\ncontrol: [%q]\nmeshAddr: %q\ndnsAddr: %q\nadminAddr: %q\nadminAdvertise: %q\n"+
			"vipRange: %q\nstateDir: %q\njoinToken: %q\nhealthInterval: 500ms\n%s",
			s.name, s.site, s.region, ca["sync"], any0, any0, any0, unreachable, s.vips, dir, strings.TrimSpace(tok), s.workload)
		path := filepath.Join(dir, "agent.yaml")
		os.WriteFile(path, []byte(cfg), 0o644)
		ap, addrs := startAddrs(t, "agent", "-config", path)
		waitProcHTTP(t, ap, "http://"+addrs["admin"]+"/healthz")
		agents[s.name] = &meshAgent{name: s.name, site: s.site, region: s.region, p: ap, addrs: addrs, vipRange: s.vips}
	}
	// The registered adminAddress is the unreachable one.
	nodesOut, code := run(t, append([]string{"get", "nodes", "-o", "json"}, flags...)...)
	if code != 0 || strings.Count(nodesOut, `"adminAddress": "`+unreachable+`"`) != 2 {
		t.Fatalf("nodes do not advertise %s: %s", unreachable, nodesOut)
	}
	m := &demoMesh{t: t}
	edge := agents["edge-a"]
	testenv.WaitFor(t, 30*time.Second, "edge-a routes hello", func() bool { return m.endpoints(edge) == 1 && m.vipOf(edge, false) != "" })
	url := m.vipOf(edge, true)

	// A denied request, for the recent denials.
	testenv.WaitFor(t, 20*time.Second, "a request to /forbidden denied", func() bool {
		resp, err := http.Get(url + "forbidden")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusForbidden
	})

	// Traffic from edge-a at a steady pace: every fourth request fails.
	var sent atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c := &http.Client{Timeout: 5 * time.Second}
		tick := time.NewTicker(25 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(3 * time.Minute)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-deadline:
				return
			case <-tick.C:
			}
			path := "ok"
			if i%4 == 3 {
				path = "fail"
			}
			if resp, err := c.Get(url + path); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				sent.Add(1)
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	// rate measures the test's own request rate over about 3 s.
	rate := func() float64 {
		n0, t0 := sent.Load(), time.Now()
		time.Sleep(3 * time.Second)
		return float64(sent.Load()-n0) / time.Since(t0).Seconds()
	}
	inRange := func(got, want float64) bool { return got >= want/3 && got <= want*3 }

	// fogmesh stat against the control plane.
	var st struct {
		Services   []statsRow        `json:"services"`
		Edges      []statsRow        `json:"edges"`
		Unreported map[string]string `json:"unreported"`
	}
	var out string
	var want float64
	testenv.WaitFor(t, 60*time.Second, "fogmesh stat shows hello's rate from edge-a's heartbeats", func() bool {
		want = rate()
		out, code = run(t, append([]string{"stat", "-edges", "-o", "json"}, flags...)...)
		st.Services, st.Edges = nil, nil
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Services) != 1 {
			return false
		}
		s := st.Services[0]
		return s.Service == "demo/hello" && inRange(s.RPS, want) && math.Abs(s.Success-0.75) < 0.15
	})
	t.Logf("sending %.1f/s; fogmesh stat:\n%s", want, out)
	if s := st.Services[0]; s.P50 <= 0 || s.P99 < s.P50 || len(st.Unreported) != 0 {
		t.Fatalf("stat: %+v, unreported %v", s, st.Unreported)
	}
	found := false
	for _, e := range st.Edges {
		if e.SourceNode == "edge-a" && e.Node == "cloud-b" && e.Path == "cross_region" && e.RPS > 0 {
			found = true
		}
	}
	if !found {
		t.Fatalf("no edge edge-a → cloud-b (cross_region) in:\n%s", out)
	}

	// The web UI's state: the same rates, and no scrape of either node
	// (their heartbeats carry the counters).
	c := uiClient(t, flags[3])
	uiState := func() (statsUIState, error) {
		var s statsUIState
		req, _ := http.NewRequest("GET", flags[1]+"/ui/api/state", nil)
		req.Header.Set("Authorization", "Bearer "+flags[5])
		resp, err := c.Do(req)
		if err != nil {
			return s, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return s, fmt.Errorf("%s", resp.Status)
		}
		return s, json.NewDecoder(resp.Body).Decode(&s)
	}
	var ui statsUIState
	testenv.WaitFor(t, 60*time.Second, "the UI shows hello's rate and the denial", func() bool {
		want = rate()
		ui, err = uiState()
		return err == nil && len(ui.Services) == 1 && inRange(ui.Services[0].RPS, want) &&
			math.Abs(ui.Services[0].Success-0.75) < 0.15 && len(ui.Denials) > 0
	})
	if len(ui.Scrape) != 0 {
		t.Fatalf("the UI scraped agents that report in heartbeats: %v", ui.Scrape)
	}
	t.Logf("UI: %+v, %d denials", ui.Services, len(ui.Denials))

	// The destination agent's own count of what arrived from edge-a.
	resp, err := http.Get("http://" + agents["cloud-b"].addrs["admin"] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	samples, err := promtext.Parse(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	byClass := map[string]float64{}
	for _, s := range samples {
		if s.Name == "fogmesh_http_server_requests_total" && s.Labels["service"] == "demo/hello" && s.Labels["source_node"] == "edge-a" {
			byClass[s.Labels["code_class"]] += s.Value
		}
	}
	if byClass["2xx"] == 0 || byClass["5xx"] == 0 || byClass["4xx"] == 0 || math.Abs(byClass["5xx"]/(byClass["2xx"]+byClass["5xx"])-0.25) > 0.1 {
		t.Fatalf("cloud-b's server-side counts from edge-a: %v", byClass)
	}

	// Restart the control plane with both agents gone: the denial is read
	// back from the stored chain, not shipped again.
	close(stop)
	wg.Wait()
	stop = make(chan struct{})
	for _, a := range agents {
		a.p.kill9(t)
	}
	cp.kill9(t)
	cp2, ca2 := restartAddrs(t, ca["sync"], "control", "-state-dir", state, "-admin-addr", any0, "-sync-addr", ca["sync"],
		"-heartbeat-interval", "1s", "-node-timeout", "4s")
	flags = secureAdmin(t, cp2, state, ca2["admin"])
	if ui, err = uiState(); err != nil {
		t.Fatal(err)
	}
	denied := false
	for _, d := range ui.Denials {
		if d["node"] == "cloud-b" && d["decision"] == "deny" && strings.Contains(fmt.Sprint(d), "hello") {
			denied = true
		}
	}
	if !denied {
		t.Fatalf("after a restart, recent denials: %v", ui.Denials)
	}
}
