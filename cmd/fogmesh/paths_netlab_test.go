package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/agent"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/netlab"
	"github.com/fogmesh/fogmesh/internal/paths"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// These tests run the mesh on internal/netlab's small internet: a control
// plane, a cloud agent and two relays on a public network, and agents in
// sites behind real NAT routers (A endpoint-independent, B symmetric, both
// on 192.168.1.0/24 with the same node address; C drops UDP; a LAN site
// with two nodes). Every process runs inside its namespace; the test talks
// to them through sockets made in those namespaces.

// startIn runs the binary (built with -race) inside ns; the test's
// cleanup kills it, and fails the test if the race detector spoke.
func startIn(t *testing.T, ns *netlab.Netns, args ...string) *proc {
	t.Helper()
	p := startExec(t, ns.Command(context.Background(), fogmeshBin, args...))
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if out := p.out.String(); strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("fogmesh %s: data race:\n%s", args[0], tail(out, 80))
		}
	})
	return p
}

// startAddrsIn is startAddrs inside ns.
func startAddrsIn(t *testing.T, ns *netlab.Netns, args ...string) (*proc, map[string]string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "addrs.json")
	p := startIn(t, ns, append(args, "-addr-file", path)...)
	return p, p.waitAddrs(t, path)
}

// runIn runs a CLI verb inside ns and returns its standard output.
func runIn(t *testing.T, ns *netlab.Netns, args ...string) string {
	t.Helper()
	cmd := ns.Command(context.Background(), fogmeshBin, args...)
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("fogmesh %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// labMesh is a mesh running on a lab.
type labMesh struct {
	t        *testing.T
	lab      *netlab.Lab
	ctl      *proc
	admin    []string // -server -ca -token of the admin verbs
	syncAddr string
	relays   map[string]*proc // by address
	nodes    map[string]*labAgent
}

// labAgent is an agent process in a namespace, serving one HTTP service
// svc-NAME whose workload answers with the node's name.
type labAgent struct {
	name  string
	host  *netlab.Host
	p     *proc
	admin string // inside host's namespace
	http  *http.Client
	// slow counts requests to /slow, which wait until release is closed.
	slow    atomic.Int64
	release chan struct{}
}

const labSyncPort, labMeshPort, labRelayPort = 7071, 7072, 7074

// startLabMesh starts the control plane and both relays on the lab's
// public network.
func startLabMesh(t *testing.T, lab *netlab.Lab) *labMesh {
	t.Helper()
	m := &labMesh{t: t, lab: lab, relays: map[string]*proc{}, nodes: map[string]*labAgent{}}
	state := t.TempDir()
	m.syncAddr = fmt.Sprintf("%s:%d", lab.CP.Addr, labSyncPort)
	var addrs map[string]string
	m.ctl, addrs = startAddrsIn(t, lab.CP.Netns, "control", "-state-dir", state, "-admin-addr", "127.0.0.1:0",
		"-sync-addr", m.syncAddr, "-heartbeat-interval", "1s")
	ca := filepath.Join(state, "ca.pem")
	testenv.WaitFor(t, 20*time.Second, "the control plane's admin token", func() bool {
		_, err1 := os.Stat(filepath.Join(state, "admin.token"))
		_, err2 := os.Stat(ca)
		return err1 == nil && err2 == nil
	})
	tok, err := os.ReadFile(filepath.Join(state, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	m.admin = []string{"-server", "https://" + addrs["admin"], "-ca", ca, "-token", strings.TrimSpace(string(tok))}
	testenv.WaitFor(t, 20*time.Second, "the admin API", func() bool {
		out, err := lab.CP.Command(context.Background(), fogmeshBin, append([]string{"get", "nodes"}, m.admin...)...).CombinedOutput()
		return err == nil && !strings.Contains(string(out), "error")
	})

	// The relays join the mesh with relay tokens, as an operator starts
	// them: their certificates come from the control plane, which pushes
	// them revocations.
	for i, h := range []*netlab.Host{lab.Relay1, lab.Relay2} {
		tok := strings.TrimSpace(runIn(t, lab.CP.Netns, append([]string{"token", "create", "-kind", "relay"}, m.admin...)...))
		addr := fmt.Sprintf("%s:%d", h.Addr, labRelayPort)
		p, _ := startAddrsIn(t, h.Netns, "relay", "-addr", addr, "-admin-addr", "127.0.0.1:0",
			"-control", m.syncAddr, "-join-token", tok, "-state-dir", t.TempDir(), "-name", fmt.Sprintf("r%d", i+1))
		m.relays[addr] = p
	}
	return m
}

func (m *labMesh) relayAddrs() []string {
	return []string{fmt.Sprintf("%s:%d", m.lab.Relay1.Addr, labRelayPort), fmt.Sprintf("%s:%d", m.lab.Relay2.Addr, labRelayPort)}
}

// agent starts node name in h's namespace, site site, with its workload
// and service; extra is more of its config file (YAML lines).
func (m *labMesh) agent(name, site, region string, h *netlab.Host, extra ...string) *labAgent {
	t := m.t
	t.Helper()
	ln, err := h.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &labAgent{name: name, host: h}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" { // held until the test lets it go
			a.slow.Add(1)
			select {
			case <-a.release:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, name)
	}), ReadHeaderTimeout: 10 * time.Second}
	a.release = make(chan struct{})
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	doc := filepath.Join(t.TempDir(), "svc.yaml")
	os.WriteFile(doc, []byte(fmt.Sprintf("apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: svc-%s, namespace: demo}\nspec:\n  ports: [{name: http, port: 8080, protocol: http}]\n", name)), 0o644)
	runIn(t, m.lab.CP.Netns, append([]string{"apply", "-f", doc}, m.admin...)...)
	tok := strings.TrimSpace(runIn(t, m.lab.CP.Netns, append([]string{"token", "create", "-site", site, "-ttl", "10m"}, m.admin...)...))
	dir := t.TempDir()
	relays, _ := json.Marshal(m.relayAddrs())
	cfg := fmt.Sprintf(`node: {name: %s, site: %s, region: %s}
control: [%q]
meshAddr: "0.0.0.0:%d"
meshAdvertise: "%s:%d"
dnsAddr: "127.0.0.1:0"
adminAddr: "127.0.0.1:0"
stateDir: %q
joinToken: %q
relays: %s
workloads: [{service: svc-%s, namespace: demo, ports: [{name: http, port: %d}]}]
%s
`, name, site, region, m.syncAddr, labMeshPort, h.Addr, labMeshPort, dir, tok, relays, name, ln.Addr().(*net.TCPAddr).Port,
		strings.Join(extra, "\n"))
	path := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p, addrs := startAddrsIn(t, h.Netns, "agent", "-config", path)
	a.p, a.admin = p, addrs["admin"]
	a.http = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: h.DialContext, DisableKeepAlives: true}}
	m.nodes[name] = a
	return a
}

// getJSON reads an agent's admin API.
func (a *labAgent) getJSON(path string, v any) error {
	resp, err := a.http.Get("http://" + a.admin + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// vip is the address of service svc on a's node, once a routes it to a
// healthy endpoint.
func (a *labAgent) vip(svc string) (string, bool) {
	var routes []agent.RouteStatus
	if err := a.getJSON("/v1/routes", &routes); err != nil {
		return "", false
	}
	for _, r := range routes {
		if r.Service == "demo/"+svc && len(r.Endpoints) == 1 && r.Endpoints[0].Healthy {
			return r.VIP, true
		}
	}
	return "", false
}

// call sends one request from a's namespace to svc-to through a's agent.
func (a *labAgent) call(vip, to string) error {
	return a.callPath(vip, to, "/")
}

func (a *labAgent) callPath(vip, to, path string) error {
	resp, err := a.http.Get("http://" + net.JoinHostPort(vip, "8080") + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != to {
		return fmt.Errorf("%s -> svc-%s: %s %q", a.name, to, resp.Status, b)
	}
	return nil
}

// path is a's path to peer, if it has one.
func (a *labAgent) path(peer string) (paths.PathStatus, bool) {
	var st paths.Status
	if err := a.getJSON("/v1/paths", &st); err != nil {
		return paths.PathStatus{}, false
	}
	for _, p := range st.Paths {
		if p.Peer == peer {
			return p, true
		}
	}
	return paths.PathStatus{}, false
}

// TestCrossSitePaths: every pair of nodes (five behind NATs, one in the
// cloud) reaches the other's service in both directions with real HTTP
// requests through both agents; each pair settles on the expected path
// (LAN pair direct, anything to the cloud direct, endpoint-independent
// NATs punched, a symmetric NAT or a site without UDP relayed); the first
// request to a peer behind the symmetric NAT is answered within 2 s;
// killing a relay leaves punched paths working and moves relayed ones to
// the other relay; a site whose uplink flaps recovers without a restart.
func TestCrossSitePaths(t *testing.T) {
	lab := netlab.New(t)
	m := startLabMesh(t, lab)
	nodes := []*labAgent{
		// a1 reaches peers it cannot punch over the relay's UDP (opt-in).
		m.agent("a1", "site-a", "edge", lab.A.Nodes[0], "relayUDP: true"),
		m.agent("b1", "site-b", "edge", lab.B.Nodes[0]),
		m.agent("c1", "site-c", "edge", lab.C.Nodes[0]),
		m.agent("l1", "site-lan", "edge", lab.LAN.Nodes[0]),
		m.agent("l2", "site-lan", "edge", lab.LAN.Nodes[1]),
		m.agent("cloud", "cloud", "cloud", lab.CP),
	}
	t.Cleanup(func() { dumpOnFailure(t, nodes) })
	vips := routeAll(t, nodes)

	// First requests: each answered within 2 s (the relay fallback's
	// budget), in both directions of every pair.
	for _, x := range nodes {
		for _, y := range nodes {
			if x == y {
				continue
			}
			start := time.Now()
			if err := x.call(vips[[2]string{x.name, y.name}], y.name); err != nil {
				t.Fatalf("first request %s -> %s: %v\n%s", x.name, y.name, err, x.p.out)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("first request %s -> %s took %s, over 2 s", x.name, y.name, took)
			}
		}
	}

	// The path each pair settles on.
	expect := func(x, y string) []paths.Kind {
		pair := map[string]bool{x: true, y: true}
		switch {
		case pair["l1"] && pair["l2"]:
			return []paths.Kind{paths.Direct}
		case y == "cloud":
			return []paths.Kind{paths.Direct}
		case pair["c1"]:
			return []paths.Kind{paths.Relayed}
		case pair["b1"] && x == "cloud":
			// The cloud has no NAT: it may answer b1's probes from the
			// address they came from.
			return []paths.Kind{paths.Punched, paths.Relayed}
		case pair["b1"]:
			return []paths.Kind{paths.Relayed}
		default: // a1, l1, l2 and the cloud to them
			return []paths.Kind{paths.Punched}
		}
	}
	for _, x := range nodes {
		for _, y := range nodes {
			if x == y {
				continue
			}
			want := expect(x.name, y.name)
			// Direct and relayed paths carry TLS+yamux over TCP, punched
			// ones QUIC; a1 (relayUDP) runs its relayed path to b1 over
			// the relay's UDP with QUIC, and b1 then takes the channel
			// a1 bound, unless its own TCP relay answered first.
			carriers := []string{"tcp"}
			switch {
			case want[0] == paths.Punched:
				carriers = []string{"quic"}
			case x.name == "a1" && y.name == "b1":
				carriers = []string{"quic"}
			case x.name == "b1" && y.name == "a1":
				carriers = []string{"quic", "tcp"}
			}
			var got paths.PathStatus
			testenv.WaitFor(t, 40*time.Second, fmt.Sprintf("%s's path to %s to be %v over %v", x.name, y.name, want, carriers), func() bool {
				// Requests keep the path in use (and start the upgrade).
				x.call(vips[[2]string{x.name, y.name}], y.name)
				got, _ = x.path(y.name)
				return slices.Contains(want, got.Kind) && slices.Contains(carriers, got.Carrier)
			})
			if err := x.call(vips[[2]string{x.name, y.name}], y.name); err != nil {
				t.Fatalf("%s -> %s over %s: %v", x.name, y.name, got.Kind, err)
			}
			t.Logf("%s -> %s: %s over %s %s %s rtt %.2fms", x.name, y.name, got.Kind, got.Carrier, got.Relay, got.Remote, got.RTTMs)
		}
	}

	// The control plane knows every node's paths from their heartbeats:
	// `fogmesh get paths` shows the pairs as the agents see them.
	testenv.WaitFor(t, 15*time.Second, "fogmesh get paths to show the agents' paths", func() bool {
		var ps []control.NodePath
		if json.Unmarshal([]byte(runIn(t, lab.CP.Netns, append([]string{"get", "paths", "-o", "json"}, m.admin...)...)), &ps) != nil {
			return false
		}
		got := map[[2]string]string{}
		for _, p := range ps {
			got[[2]string{p.Node, p.Peer}] = p.Kind
		}
		return got[[2]string{"a1", "b1"}] == "relayed" && got[[2]string{"a1", "l1"}] == "punched" &&
			got[[2]string{"l1", "l2"}] == "direct" && got[[2]string{"c1", "cloud"}] == "direct" && len(ps) == 30
	})
	if out := runIn(t, lab.CP.Netns, append([]string{"get", "paths"}, m.admin...)...); !strings.Contains(out, "NODE") {
		t.Errorf("get paths table:\n%s", out)
	}
	// The same as metrics, per peer.
	var body string
	testenv.WaitFor(t, 5*time.Second, "a1's path metrics", func() bool {
		resp, err := m.nodes["a1"].http.Get("http://" + m.nodes["a1"].admin + "/metrics")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		return true
	})
	for _, want := range []string{`fogmesh_path{peer="b1",kind="relayed"} 1`, `fogmesh_path{peer="l1",kind="punched"} 1`,
		`fogmesh_path{peer="l1",kind="relayed"} 0`, `fogmesh_path{peer="cloud",kind="direct"} 1`, `fogmesh_paths{kind="punched"} 2`} {
		if !strings.Contains(body, want) {
			t.Errorf("a1's metrics lack %s", want)
		}
	}

	t.Run("relay-killed", func(t *testing.T) {
		a1, b1, l1 := m.nodes["a1"], m.nodes["b1"], m.nodes["l1"]
		p, ok := a1.path("b1")
		if !ok || p.Kind != paths.Relayed {
			t.Fatalf("a1 -> b1: %+v", p)
		}
		killed := p.Relay
		rp := m.relays[killed]
		if rp == nil {
			t.Fatalf("a1 -> b1 through unknown relay %q", killed)
		}
		// Idempotent requests in flight on the relayed path when the relay
		// dies are retried on the next path, not failed.
		const inFlight = 3
		results := make(chan error, inFlight)
		for range inFlight {
			go func() { results <- a1.callPath(vips[[2]string{"a1", "b1"}], "b1", "/slow") }()
		}
		testenv.WaitFor(t, 10*time.Second, "requests in flight at b1", func() bool { return b1.slow.Load() == inFlight })
		rp.kill9(t)
		testenv.WaitFor(t, 10*time.Second, "the requests retried at b1", func() bool { return b1.slow.Load() >= 2*inFlight })
		close(b1.release)
		for range inFlight {
			if err := <-results; err != nil {
				t.Errorf("a request in flight when the relay died: %v", err)
			}
		}
		// Punched paths do not go through a relay: they keep working.
		if err := a1.call(vips[[2]string{"a1", "l1"}], "l1"); err != nil {
			t.Errorf("a1 -> l1 (punched) after the relay died: %v", err)
		}
		if p, _ := a1.path("l1"); p.Kind != paths.Punched {
			t.Errorf("a1 -> l1 is %s after the relay died", p.Kind)
		}
		_ = l1
		// Relayed ones move to the other relay.
		for _, pair := range [][2]*labAgent{{a1, b1}, {b1, a1}} {
			x, y := pair[0], pair[1]
			var last string
			deadline := time.Now().Add(20 * time.Second)
			for {
				err := x.call(vips[[2]string{x.name, y.name}], y.name)
				p, _ := x.path(y.name)
				if err == nil && p.Kind == paths.Relayed && p.Relay != "" && p.Relay != killed {
					break
				}
				last = fmt.Sprintf("request: %v; path %+v", err, p)
				if time.Now().After(deadline) {
					t.Fatalf("%s -> %s not through the other relay after 20 s: %s", x.name, y.name, last)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	})

	t.Run("uplink-flap", func(t *testing.T) {
		a1 := m.nodes["a1"]
		if err := lab.A.SetUplink(false); err != nil {
			t.Fatal(err)
		}
		// While down, nothing crosses (the request fails, bounded by the
		// client's timeout); then the link returns.
		if err := a1.call(vips[[2]string{"a1", "cloud"}], "cloud"); err == nil {
			t.Log("a request crossed a downed uplink?")
		}
		if err := lab.A.SetUplink(true); err != nil {
			t.Fatal(err)
		}
		for _, y := range []string{"cloud", "l1", "b1", "c1"} {
			testenv.WaitFor(t, 40*time.Second, "a1 -> "+y+" after the uplink came back", func() bool {
				return a1.call(vips[[2]string{"a1", y}], y) == nil
			})
			x := m.nodes[y]
			testenv.WaitFor(t, 40*time.Second, y+" -> a1 after the uplink came back", func() bool {
				return x.call(vips[[2]string{y, "a1"}], "a1") == nil
			})
		}
	})
}

// dumpOnFailure logs the end of every agent's output when t failed.
func dumpOnFailure(t *testing.T, nodes []*labAgent) {
	if !t.Failed() {
		return
	}
	for _, n := range nodes {
		t.Logf("--- %s:\n%s", n.name, tail(n.p.out.String(), 60))
	}
}

// routeAll waits until every node routes every other's service and
// returns the VIPs by (from, to).
func routeAll(t *testing.T, nodes []*labAgent) map[[2]string]string {
	t.Helper()
	vips := map[[2]string]string{}
	for _, x := range nodes {
		for _, y := range nodes {
			if x == y {
				continue
			}
			testenv.WaitFor(t, 30*time.Second, x.name+" routing svc-"+y.name, func() bool {
				v, ok := x.vip("svc-" + y.name)
				vips[[2]string{x.name, y.name}] = v
				return ok
			})
		}
	}
	return vips
}

// TestSiteGateway: in a site whose router lets only one node out, that
// node's agent is the site gateway; the other node reaches its control
// plane and the relays through it, and so every pair of nodes reaches the
// other in both directions: the site's two nodes directly, the hidden
// node and the outside through a relay.
func TestSiteGateway(t *testing.T) {
	lab := netlab.New(t)
	l1h, l2h := lab.LAN.Nodes[0], lab.LAN.Nodes[1]
	// Only l1 may connect out.
	if _, err := lab.LAN.NAT.Run("iptables", "-I", "FORWARD", "-s", l2h.Addr.String(), "-o", "wan0", "-j", "DROP"); err != nil {
		t.Fatal(err)
	}
	m := startLabMesh(t, lab)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	if c, err := l2h.DialContext(ctx, "tcp", m.syncAddr); err == nil {
		c.Close()
		t.Fatal("l2 reaches the control plane without the gateway: the site's router lets it out")
	}
	cancel()
	gw := fmt.Sprintf("%s:7075", l1h.Addr)
	nodes := []*labAgent{
		m.agent("l1", "site-lan", "edge", l1h, fmt.Sprintf("gatewayAddr: %q", gw)),
		m.agent("l2", "site-lan", "edge", l2h, fmt.Sprintf("viaGateway: %q", gw)),
		m.agent("a1", "site-a", "edge", lab.A.Nodes[0]),
		m.agent("cloud", "cloud", "cloud", lab.CP),
	}
	t.Cleanup(func() { dumpOnFailure(t, nodes) })
	vips := routeAll(t, nodes)
	for _, x := range nodes {
		for _, y := range nodes {
			if x == y {
				continue
			}
			testenv.WaitFor(t, 15*time.Second, x.name+" -> "+y.name, func() bool {
				return x.call(vips[[2]string{x.name, y.name}], y.name) == nil
			})
		}
	}
	want := map[[2]string]paths.Kind{
		{"l2", "l1"}: paths.Direct, {"l1", "l2"}: paths.Direct,
		{"l2", "a1"}: paths.Relayed, {"a1", "l2"}: paths.Relayed,
		{"l2", "cloud"}: paths.Relayed, {"cloud", "l2"}: paths.Relayed,
	}
	for pair, k := range want {
		if p, _ := m.nodes[pair[0]].path(pair[1]); p.Kind != k {
			t.Errorf("%s -> %s: %s, want %s", pair[0], pair[1], p.Kind, k)
		}
	}
	var st paths.Status
	if err := m.nodes["l2"].getJSON("/v1/paths", &st); err != nil || st.Punching || len(st.Relays) != 2 || !st.Relays[0].Connected {
		t.Errorf("l2's paths status %+v (%v): want both relays connected through the gateway, no punching", st, err)
	}
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
