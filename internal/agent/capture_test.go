package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/capture"
	"github.com/fogmesh/fogmesh/internal/netlab"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// The capture tests run the agent as a separate process inside a network
// namespace of their own (its nftables rules and every socket it opens
// live there), by running this test binary again with
// $FOGMESH_CAPTURE_AGENT set: TestCaptureAgentProcess is that process.
const (
	captureAgentEnv = "FOGMESH_CAPTURE_AGENT" // path of the agent's JSON config
	captureUIDEnv   = "FOGMESH_CAPTURE_UID"   // if set, the agent drops root to this uid first
)

// TestCaptureAgentProcess is not a test of its own: it is the agent process
// of the capture tests. It writes the admin address to <config>.addr once
// it listens and runs until SIGTERM.
func TestCaptureAgentProcess(t *testing.T) {
	path := os.Getenv(captureAgentEnv)
	if path == "" {
		t.Skip("the agent process of the capture tests; runs only when they start it")
	}
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "capture agent process:", err)
		os.Exit(3)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		fail(err)
	}
	var cfg Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		fail(err)
	}
	if s := os.Getenv(captureUIDEnv); s != "" {
		id, _ := strconv.Atoi(s)
		if err := syscall.Setresgid(id, id, id); err != nil {
			fail(err)
		}
		if err := syscall.Setresuid(id, id, id); err != nil {
			fail(err)
		}
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	a, err := New(cfg)
	if err != nil {
		fail(err)
	}
	if err := os.WriteFile(path+".addr", []byte(a.AdminAddr()), 0o644); err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil {
		fail(err)
	}
	os.Exit(0)
}

// captureNode is one namespace with a workload of demo/web (ClusterIP
// 10.96.0.10, port 80) listening on its 127.0.0.1, and the agent's
// configuration and cached service.
type captureNode struct {
	ns      *netlab.Netns
	fd      int
	cfgPath string
	wlPort  int
}

const captureClusterIP, captureClusterIP6 = "10.96.0.10:80", "[fd00::10]:80"

func newCaptureNode(t *testing.T, octet int, mode string, tweak ...func(*resources, *Config)) *captureNode {
	t.Helper()
	ns := netlab.NewNetns(t, "cap"+strconv.Itoa(octet))
	f, err := ns.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	wl, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { wl.Close(); <-done })
	go func() { // the workload: answers one line per connection
		defer close(done)
		for {
			c, err := wl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "workload got %s", line)
			}()
		}
	}()
	// A UDP workload: answers each datagram with "workload got DATA".
	uw, err := ns.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udone := make(chan struct{})
	t.Cleanup(func() { uw.Close(); <-udone })
	go func() {
		defer close(udone)
		buf := make([]byte, 2048)
		for {
			n, from, err := uw.ReadFrom(buf)
			if err != nil {
				return
			}
			uw.WriteTo(append([]byte("workload got "), buf[:n]...), from)
		}
	}()
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	svc := &api.Service{APIVersion: api.APIVersion, Kind: api.KindService, Meta: api.Meta{Name: "web", Namespace: "demo"},
		Spec:   api.ServiceSpec{Ports: []api.ServicePort{{Name: "tcp", Port: 80, Protocol: "tcp"}}, ClusterIPs: []string{"10.96.0.10", "fd00::10"}},
		Status: api.ServiceStatus{VIPIndex: 7}}
	dns := &api.Service{APIVersion: api.APIVersion, Kind: api.KindService, Meta: api.Meta{Name: "dns", Namespace: "demo"},
		Spec:   api.ServiceSpec{Ports: []api.ServicePort{{Name: "dns", Port: 53, Protocol: "udp"}}, ClusterIPs: []string{captureUDPClusterIP}},
		Status: api.ServiceStatus{VIPIndex: 8}}
	res := newResources()
	res.put(svc)
	res.put(dns)
	wlPort := wl.Addr().(*net.TCPAddr).Port
	cfg := Config{
		Node:     NodeConfig{Name: "capnode", Site: "s1", Region: "r1"},
		MeshAddr: "127.0.0.1:0", DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		VIPRange: fmt.Sprintf("127.%d.0.0/16", octet), StateDir: stateDir, Upstreams: []string{},
		Insecure: true, WorkloadAPISocket: "off", PunchAddr: "off",
		Capture: CaptureConfig{Mode: mode, Addr: "0.0.0.0:0", Addr6: "[::]:0"},
		Workloads: []Workload{{Name: "web-1", Service: "web", Namespace: "demo", Address: "127.0.0.1",
			Ports: []api.EndpointPort{{Name: "tcp", Port: wlPort}}},
			{Name: "dns-1", Service: "dns", Namespace: "demo", Address: "127.0.0.1",
				Ports: []api.EndpointPort{{Name: "dns", Port: uw.LocalAddr().(*net.UDPAddr).Port}}, Check: Check{Type: "none"}}},
	}
	for _, f := range tweak {
		f(res, &cfg)
	}
	c, err := res.toConfig("store", 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := saveJSON(filepath.Join(stateDir, "config-cache.json"), c); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "agent.json")
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return &captureNode{ns: ns, fd: int(f.Fd()), cfgPath: cfgPath, wlPort: wlPort}
}

// agentProc is a running agent process.
type agentProc struct {
	cmd   *exec.Cmd
	out   *testenv.Buffer
	admin string
	done  chan error
}

// start runs the agent process in the namespace and waits until it
// listens; env is extra environment.
func (n *captureNode) start(t *testing.T, env ...string) *agentProc {
	t.Helper()
	os.Remove(n.cfgPath + ".addr")
	p := &agentProc{out: &testenv.Buffer{}, done: make(chan error, 1)}
	p.cmd = n.ns.Command(context.Background(), os.Args[0], "-test.run=^TestCaptureAgentProcess$", "-test.count=1")
	p.cmd.Env = append(append(os.Environ(), captureAgentEnv+"="+n.cfgPath), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		p.done <- nil // for a later wait
		if t.Failed() {
			t.Logf("agent process output:\n%s", p.out)
		}
	})
	testenv.WaitFor(t, 30*time.Second, "agent process listening", func() bool {
		b, err := os.ReadFile(n.cfgPath + ".addr")
		if err == nil && len(b) > 0 {
			p.admin = string(b)
			return true
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("agent process exited: %v\n%s", err, p.out)
		default:
		}
		return false
	})
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *agentProc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Fatalf("agent process after SIGTERM: %v\n%s", err, p.out)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("agent process did not stop on SIGTERM\n%s", p.out)
	}
}

// kill kills the agent process as a crash would: no cleanup runs.
func (p *agentProc) kill(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGKILL)
	err := <-p.done
	p.done <- err
}

// call connects from inside the namespace and returns the reply line.
func (n *captureNode) call(addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := n.ns.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "hello\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

// callUDP sends "hello" from inside the namespace over a connected UDP
// socket (it takes replies from addr only) and returns the reply.
func (n *captureNode) callUDP(addr string) (string, error) {
	c, err := n.ns.DialContext(context.Background(), "udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		return "", err
	}
	buf := make([]byte, 2048)
	k, err := c.Read(buf)
	return string(buf[:k]), err
}

// captureUDPClusterIP is the ClusterIP of the UDP service of a capture node.
const captureUDPClusterIP = "10.96.0.20"

// getJSON reads the agent's local API from inside the namespace.
func (n *captureNode) getJSON(t *testing.T, p *agentProc, path string, v any) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: n.ns.DialContext}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://" + p.admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

func (n *captureNode) captured(t *testing.T) ([]netip.AddrPort, bool) {
	t.Helper()
	d, present, err := capture.Destinations(n.fd)
	if err != nil {
		t.Fatal(err)
	}
	return d, present
}

// TestCaptureClusterIP: a client in the node's namespace calls the
// service's ClusterIP and reaches the workload through the agent; the
// rules are gone after SIGTERM; the rules a killed agent left are replaced
// at the next start.
func TestCaptureClusterIP(t *testing.T) {
	n := newCaptureNode(t, 20, CaptureRequired)
	want := []netip.AddrPort{netip.MustParseAddrPort(captureClusterIP), netip.MustParseAddrPort(captureClusterIP6)}
	p := n.start(t)
	testenv.WaitFor(t, 10*time.Second, "ClusterIP in the rules", func() bool {
		d, _ := n.captured(t)
		return slices.Equal(d, want)
	})
	for _, ip := range []string{captureClusterIP, captureClusterIP6} {
		if got, err := n.call(ip); err != nil || got != "workload got hello" {
			t.Fatalf("call ClusterIP %s: %q, %v", ip, got, err)
		}
	}
	// UDP: the datagram reaches the workload through the agent, and the
	// reply comes back from the ClusterIP (the client's socket is
	// connected to it).
	if got, err := n.callUDP(captureUDPClusterIP + ":53"); err != nil || got != "workload got hello" {
		t.Fatalf("udp to ClusterIP %s:53: %q, %v", captureUDPClusterIP, got, err)
	}
	var st struct{ Capture CaptureStatus }
	n.getJSON(t, p, "/v1/status", &st)
	if !st.Capture.Active || st.Capture.Destinations != 3 || st.Capture.Note != "" {
		t.Errorf("status capture: %+v", st.Capture)
	}
	var routes []RouteStatus
	n.getJSON(t, p, "/v1/routes", &routes)
	slices.SortFunc(routes, func(a, b RouteStatus) int { return strings.Compare(a.Service, b.Service) })
	if len(routes) != 2 || !routes[1].Captured || !slices.Equal(routes[1].ClusterIPs, []string{"10.96.0.10", "fd00::10"}) ||
		!routes[0].Captured || !slices.Equal(routes[0].ClusterIPs, []string{captureUDPClusterIP}) {
		t.Errorf("routes: %+v", routes)
	}
	p.stop(t)
	if d, present := n.captured(t); present {
		t.Fatalf("rules left after SIGTERM: %v", d)
	}

	// A crash leaves the table, redirecting to a port nobody holds.
	p = n.start(t)
	testenv.WaitFor(t, 10*time.Second, "ClusterIP in the rules", func() bool {
		d, _ := n.captured(t)
		return slices.Equal(d, want)
	})
	p.kill(t)
	if _, present := n.captured(t); !present {
		t.Fatal("no table after SIGKILL: the test cannot tell a cleanup")
	}
	if got, err := n.call(captureClusterIP); err == nil {
		t.Fatalf("call after the kill answered %q", got)
	}
	p = n.start(t)
	testenv.WaitFor(t, 10*time.Second, "ClusterIP in the rules", func() bool {
		d, _ := n.captured(t)
		return slices.Equal(d, want)
	})
	if got, err := n.call(captureClusterIP); err != nil || got != "workload got hello" {
		t.Fatalf("call ClusterIP after a restart over leftovers: %q, %v", got, err)
	}
	conn, err := nftables.New(nftables.WithNetNSFd(n.fd))
	if err != nil {
		t.Fatal(err)
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range chains {
		want := 4 // TCP and UDP, IPv4 and IPv6
		if ch.Name == "input" {
			want = 2 // drop UDP to the capture ports not redirected there, per family
		}
		if rules, err := conn.GetRules(ch.Table, ch); err != nil || len(rules) != want {
			t.Errorf("chain %s: %d rules (%v), want %d", ch.Name, len(rules), err, want)
		}
	}
	if len(chains) != 3 {
		t.Errorf("%d chains, want 3 (leftovers not replaced?)", len(chains))
	}
	p.stop(t)
	if d, present := n.captured(t); present {
		t.Fatalf("rules left after SIGTERM: %v", d)
	}
}

// TestCaptureFallsBack: an agent that may not manage nftables (not root)
// says so in its log and status, and serves the virtual IP.
func TestCaptureFallsBack(t *testing.T) {
	n := newCaptureNode(t, 21, CaptureAuto)
	const nobody = 65534
	dir := filepath.Dir(n.cfgPath)
	if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil { // t.TempDir's parent: let nobody through
		t.Fatal(err)
	}
	for _, d := range []string{dir, filepath.Join(dir, "state"), filepath.Join(dir, "state", "config-cache.json")} {
		if err := os.Chown(d, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	// The service port is 80: let an unprivileged agent bind it, as an
	// operator does with this sysctl or CAP_NET_BIND_SERVICE.
	if err := n.ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_unprivileged_port_start", []byte("0\n"), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	p := n.start(t, captureUIDEnv+"="+strconv.Itoa(nobody))
	var st struct{ Capture CaptureStatus }
	n.getJSON(t, p, "/v1/status", &st)
	if st.Capture.Active || !strings.Contains(st.Capture.Note, "falling back to virtual IPs") {
		t.Errorf("status capture: %+v", st.Capture)
	}
	if !strings.Contains(p.out.String(), "transparent capture off, falling back to virtual IPs") {
		t.Errorf("no log line about the fallback:\n%s", p.out)
	}
	if _, present := n.captured(t); present {
		t.Error("rules installed without permission")
	}
	var routes []RouteStatus
	n.getJSON(t, p, "/v1/routes", &routes)
	if len(routes) != 2 || routes[0].Captured || routes[1].Captured || len(routes[0].ClusterIPs)+len(routes[1].ClusterIPs) != 3 {
		t.Errorf("routes (describe's source): %+v, want the ClusterIPs listed as not captured", routes)
	}
	if got, err := n.call("127.21.0.7:80"); err != nil || got != "workload got hello" {
		t.Fatalf("call the virtual IP: %q, %v", got, err)
	}
	p.stop(t)
}
