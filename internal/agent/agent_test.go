package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// echoServer answers every line with "<name>: <line>".
type echoServer struct {
	name string
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	n    int // connections accepted
}

func startEcho(t *testing.T, name, addr string) *echoServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	e := &echoServer{name: name, ln: ln}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.mu.Lock()
			e.n++
			e.mu.Unlock()
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprintf(c, "%s: %s", name, line)
				}
			}()
		}
	}()
	t.Cleanup(e.stop)
	return e
}

// serveConns listens on a loopback port until the test's end and runs
// handle on each connection it accepts, in a goroutine of its own; handle
// closes the connection.
func serveConns(t testing.TB, handle func(c net.Conn)) *net.TCPAddr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().(*net.TCPAddr)
}

func (e *echoServer) stop() { e.ln.Close() }

func (e *echoServer) port() int { return e.ln.Addr().(*net.TCPAddr).Port }

func (e *echoServer) accepted() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n
}

func startControl(t testing.TB, dir, syncAddr string) *control.Server {
	t.Helper()
	return startControlWith(t, dir, syncAddr, nil)
}

// startControlWith is startControl with a last word on the Config (tweak
// may be nil).
func startControlWith(t testing.TB, dir, syncAddr string, tweak func(*control.Config)) *control.Server {
	t.Helper()
	if syncAddr == "" {
		syncAddr = "127.0.0.1:0"
	}
	cfg := control.Config{StateDir: dir, AdminAddr: "127.0.0.1:0", SyncAddr: syncAddr,
		HeartbeatInterval: 200 * time.Millisecond, NodeTimeout: 800 * time.Millisecond, Insecure: true,
		NodeExpiry: 400 * time.Millisecond} // a dead node is withdrawn 1.2 s after its last heartbeat (control's expiry.go)
	if tweak != nil {
		tweak(&cfg)
	}
	// A restart on the old sync address waits while another socket holds it.
	var s *control.Server
	testenv.Rebind(t, syncAddr, func() (err error) {
		s, err = control.New(cfg)
		return err
	})
	done := make(chan struct{})
	go func() { s.Serve(context.Background()); close(done) }()
	t.Cleanup(func() { s.Close(); <-done })
	return s
}

func apply(t testing.TB, s *control.Server, doc string) {
	t.Helper()
	resp, err := http.Post("http://"+s.AdminAddr()+"/v1/apply", "application/yaml", strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("apply: %s %s", resp.Status, b)
	}
}

func svcDoc(name string, port int) string {
	return fmt.Sprintf(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":%q,"namespace":"demo"},
	"spec":{"ports":[{"name":"tcp","port":%d}],"balancer":"round-robin"}}`, name, port)
}

type agentOpts struct {
	name, site, region string
	vipOctet           int
	control            []string
	stateDir           string
	workloads          []Workload
	meshAddr           string
	vip6               string
	maxRequests        int
	meshPing           time.Duration
	ejectFor           time.Duration // default 5 s
}

func startAgent(t testing.TB, o agentOpts) *Agent {
	t.Helper()
	return startAgentWith(t, o, nil)
}

// startAgentWith is startAgent with a last word on the Config (tweak may be
// nil).
func startAgentWith(t testing.TB, o agentOpts, tweak func(*Config)) *Agent {
	t.Helper()
	cfg := agentConfig(o)
	if tweak != nil {
		tweak(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

// agentConfig is the Config startAgent gives New.
func agentConfig(o agentOpts) Config {
	if o.meshAddr == "" {
		o.meshAddr = "127.0.0.1:0"
	}
	if o.ejectFor == 0 {
		o.ejectFor = 5 * time.Second
	}
	return Config{
		Node:    NodeConfig{Name: o.name, Site: o.site, Region: o.region},
		Control: o.control, MeshAddr: o.meshAddr, DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		VIPRange: fmt.Sprintf("127.%d.0.0/16", o.vipOctet), VIP6Range: o.vip6,
		StateDir: o.stateDir, Workloads: o.workloads, Upstreams: []string{},
		HealthInterval: Duration(200 * time.Millisecond), EjectFor: Duration(o.ejectFor),
		MaxRequests: o.maxRequests, Insecure: true, MeshPingInterval: Duration(o.meshPing),
	}
}

func wlFor(service string, e *echoServer) Workload {
	return Workload{Name: service + "-" + e.name, Service: service, Namespace: "demo",
		Ports: []api.EndpointPort{{Name: "tcp", Port: e.port()}}}
}

// waitFor polls cond for up to 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, what, cond)
}

// waitGet200 waits until a GET of url through c (nil: http.DefaultClient)
// answers 200: the agent listens and knows the route's endpoints.
func waitGet200(t testing.TB, c *http.Client, url string) {
	t.Helper()
	if c == nil {
		c = http.DefaultClient
	}
	waitFor(t, "a 200 from "+url, func() bool {
		resp, err := c.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func endpointsOf(a *Agent, svc string) []EndpointStatus {
	for _, r := range a.Routes() {
		if r.Service == svc {
			return r.Endpoints
		}
	}
	return nil
}

// roundTrip opens a connection to addr, sends a line and returns the answer.
func roundTrip(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return talk(c)
}

func talk(c net.Conn) (string, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// mustRoundTrip talks through addr once: the agent binds a VIP's listener
// before it shows the VIP, so a refused connection is a failure too.
func mustRoundTrip(t *testing.T, addr, wantPrefix string) {
	t.Helper()
	got, err := roundTrip(addr)
	if err != nil || !strings.HasPrefix(got, wantPrefix) {
		t.Fatalf("via %s: got %q, %v; want %s...", addr, got, err, wantPrefix)
	}
}

// TestRemoteEndpointThroughMeshAndOfflineAutonomy: a client on node b
// reaches a's workload through both agents; the control plane dies, b keeps
// serving, b restarts without a control plane and serves from its cache, the
// control plane returns and b resynchronises without dropping a connection.
func TestRemoteEndpointThroughMeshAndOfflineAutonomy(t *testing.T) {
	cpDir := t.TempDir()
	cp := startControl(t, cpDir, "")
	syncAddr := cp.SyncAddr()
	apply(t, cp, svcDoc("echo", 19001))
	echoA := startEcho(t, "a", "127.0.0.1:0")
	startAgent(t, agentOpts{name: "a", site: "s1", region: "r1", vipOctet: 150, control: []string{syncAddr},
		stateDir: t.TempDir(), workloads: []Workload{wlFor("echo", echoA)}})
	bDir := t.TempDir()
	b := startAgent(t, agentOpts{name: "b", site: "s1", region: "r1", vipOctet: 151, control: []string{syncAddr}, stateDir: bDir})
	waitFor(t, "b to learn a's endpoint", func() bool {
		eps := endpointsOf(b, "demo/echo")
		return len(eps) == 1 && eps[0].Healthy && eps[0].Tier == "site"
	})
	vip := "127.151.0.1:19001"
	mustRoundTrip(t, vip, "a: ping")

	// A long-lived connection through b, kept across everything below.
	held, err := net.Dial("tcp", vip)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if got, err := talk(held); err != nil || got != "a: ping" {
		t.Fatal(got, err)
	}

	cp.Close()
	waitFor(t, "b to notice the control plane is gone", func() bool { return !b.connected.Load() })
	mustRoundTrip(t, vip, "a: ping") // still serving offline

	// Restart b with no control plane answering: it serves from its cache.
	b.Close()
	b2 := startAgent(t, agentOpts{name: "b", site: "s1", region: "r1", vipOctet: 151, control: []string{syncAddr}, stateDir: bDir})
	waitFor(t, "b2 to serve from cache", func() bool { return len(endpointsOf(b2, "demo/echo")) == 1 })
	mustRoundTrip(t, vip, "a: ping")
	held2, err := net.Dial("tcp", vip)
	if err != nil {
		t.Fatal(err)
	}
	defer held2.Close()
	talk(held2)

	// The control plane returns on the same address; b2 resynchronises on
	// its own and learns a change made after it went offline.
	cp2 := startControl(t, cpDir, syncAddr)
	apply(t, cp2, svcDoc("later", 19002))
	waitFor(t, "b2 to resync", func() bool {
		return b2.connected.Load() && len(endpointsOf(b2, "demo/later")) == 0 && hasService(b2, "demo/later")
	})
	if got, err := talk(held2); err != nil || got != "a: ping" {
		t.Fatalf("connection dropped by resync: %q %v", got, err)
	}
	mustRoundTrip(t, vip, "a: ping")
}

func hasService(a *Agent, key string) bool {
	for _, r := range a.Routes() {
		if r.Service == key {
			return true
		}
	}
	return false
}

// TestLocalityAndNodeFailure: the client's node prefers the same site; when
// that node's agent dies, the next connection fails over to another site at
// once (passive), and the control plane then marks the node not ready.
func TestLocalityAndNodeFailure(t *testing.T) {
	// Not ready only after NodeTimeout + NodeExpiry without a witness
	// (control/expiry.go, issue 13): the default 5 min expiry made the wait
	// below time out on every run.
	cp := startControlWith(t, t.TempDir(), "", func(c *control.Config) { c.NodeExpiry = time.Second })
	apply(t, cp, svcDoc("echo", 19003))
	echoNear := startEcho(t, "near", "127.0.0.1:0")
	echoFar := startEcho(t, "far", "127.0.0.1:0")
	echoCloud := startEcho(t, "cloud", "127.0.0.1:0")
	ctl := []string{cp.SyncAddr()}
	near := startAgent(t, agentOpts{name: "near", site: "s1", region: "r1", vipOctet: 152, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{wlFor("echo", echoNear)}})
	startAgent(t, agentOpts{name: "far", site: "s2", region: "r1", vipOctet: 153, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{wlFor("echo", echoFar)}})
	startAgent(t, agentOpts{name: "cloud", site: "c1", region: "cloud", vipOctet: 154, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{wlFor("echo", echoCloud)}})
	client := startAgent(t, agentOpts{name: "client", site: "s1", region: "r1", vipOctet: 155, control: ctl, stateDir: t.TempDir()})
	waitFor(t, "client to learn 3 endpoints", func() bool { return len(endpointsOf(client, "demo/echo")) == 3 })
	tiers := map[string]string{}
	for _, e := range endpointsOf(client, "demo/echo") {
		tiers[e.Node] = e.Tier
	}
	if tiers["near"] != "site" || tiers["far"] != "region" || tiers["cloud"] != "any" {
		t.Fatalf("tiers %v", tiers)
	}
	vip := "127.155.0.1:19003"
	for i := 0; i < 5; i++ {
		mustRoundTrip(t, vip, "near: ")
	}
	near.Close() // the node's agent dies; its workload is unreachable
	for i := 0; i < 10; i++ {
		mustRoundTrip(t, vip, "far: ") // next tier, no failed connection
	}
	waitFor(t, "control plane to mark near not ready", func() bool {
		for _, e := range endpointsOf(client, "demo/echo") {
			if e.Node == "near" {
				return !e.Healthy
			}
		}
		return false
	})
	echoFar.stop() // the far workload dies: its agent refuses, client goes on to the cloud
	for i := 0; i < 5; i++ {
		mustRoundTrip(t, vip, "cloud: ")
	}
}

// TestKilledEndpointGetsNoNewConnections: once a failure is seen, no new
// connection goes to the dead endpoint.
func TestKilledEndpointGetsNoNewConnections(t *testing.T) {
	e1 := startEcho(t, "one", "127.0.0.1:0")
	e2 := startEcho(t, "two", "127.0.0.1:0")
	dir := t.TempDir()
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, svcDoc("echo", 19004))
	a := startAgent(t, agentOpts{name: "solo", site: "s1", region: "r1", vipOctet: 156, control: []string{cp.SyncAddr()}, stateDir: dir,
		workloads: []Workload{wlFor("echo", e1), wlFor("echo", e2)}})
	vip := "127.156.0.1:19004"
	waitFor(t, "the endpoints", func() bool { return len(endpointsOf(a, "demo/echo")) == 2 })
	seen := map[string]int{}
	for i := 0; i < 10; i++ {
		got, err := roundTrip(vip)
		if err != nil {
			t.Fatal(err)
		}
		seen[strings.Split(got, ":")[0]]++
	}
	if seen["one"] == 0 || seen["two"] == 0 {
		t.Fatalf("round robin did not use both endpoints: %v", seen)
	}
	e1.stop()
	for i := 0; i < 20; i++ {
		mustRoundTrip(t, vip, "two: ")
	}
	if f := a.m.dialFailures.Get(); f > 1 {
		t.Fatalf("%d connection attempts went to the dead endpoint; want at most the one that found it", f)
	}
}

// TestRegisterThroughLocalAPI: a workload registered with the local API is
// routed to from another node, and survives an agent restart.
func TestRegisterThroughLocalAPI(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, svcDoc("reg", 19005))
	e := startEcho(t, "x", "127.0.0.1:0")
	dir := t.TempDir()
	owner := startAgent(t, agentOpts{name: "owner", site: "s1", region: "r1", vipOctet: 157, control: []string{cp.SyncAddr()}, stateDir: dir})
	client := startAgent(t, agentOpts{name: "client", site: "s1", region: "r1", vipOctet: 158, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	post := func(body string) (int, string) {
		resp, err := http.Post("http://"+owner.AdminAddr()+"/v1/workloads", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, bad := range []string{`{`, `{"service":"reg","ports":[{"name":"tcp","port":0}]}`, `{"service":"reg","portz":[]}`, `{"service":"reg","ports":[{"port":1}],"check":{"type":"icmp"}}`} {
		if code, body := post(bad); code != 400 {
			t.Fatalf("bad registration %s: %d %s", bad, code, body)
		}
	}
	if code, body := post(fmt.Sprintf(`{"name":"reg-x","service":"reg","namespace":"demo","ports":[{"name":"tcp","port":%d}]}`, e.port())); code != 200 {
		t.Fatal(code, body)
	}
	waitFor(t, "client to learn the registered endpoint", func() bool { return len(endpointsOf(client, "demo/reg")) == 1 })
	mustRoundTrip(t, "127.158.0.1:19005", "x: ping")
	owner.Close()
	owner2 := startAgent(t, agentOpts{name: "owner", site: "s1", region: "r1", vipOctet: 157, stateDir: dir}) // offline, from disk
	waitFor(t, "owner2 to serve from disk", func() bool { return hasService(owner2, "demo/reg") })
	if eps := endpointsOf(owner2, "demo/reg"); len(eps) != 1 || eps[0].Tier != "node" {
		t.Fatalf("registered workload lost across restart: %+v", eps)
	}
	mustRoundTrip(t, "127.157.0.1:19005", "x: ping")
}

// TestDualStack: node mesh addresses and workloads on IPv6, and (as root,
// with a local IPv6 route) service VIPs with AAAA answers.
func TestDualStack(t *testing.T) {
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skip("no IPv6 loopback")
	} else {
		ln.Close()
	}
	vip6 := ""
	if os.Geteuid() == 0 {
		if out, err := exec.Command("ip", "-6", "route", "add", "local", "fd6d:6573:6801::/64", "dev", "lo").CombinedOutput(); err == nil {
			t.Cleanup(func() { exec.Command("ip", "-6", "route", "del", "local", "fd6d:6573:6801::/64", "dev", "lo").Run() })
			vip6 = "fd6d:6573:6801::/64"
		} else {
			t.Logf("no IPv6 VIP route (%s): testing v6 endpoints and mesh only", out)
		}
	} else {
		t.Log("not root: IPv6 VIPs need a local route; testing v6 endpoints and mesh only")
	}
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, svcDoc("six", 19006))
	e := startEcho(t, "v6", "[::1]:0")
	wl := wlFor("six", e)
	wl.Address = "::1"
	startAgent(t, agentOpts{name: "v6owner", site: "s1", region: "r1", vipOctet: 159, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), meshAddr: "[::1]:0", workloads: []Workload{wl}})
	client := startAgent(t, agentOpts{name: "v6client", site: "s1", region: "r1", vipOctet: 160, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), meshAddr: "[::1]:0", vip6: vip6})
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(client, "demo/six")) == 1 })
	mustRoundTrip(t, "127.160.0.1:19006", "v6: ping") // v4 VIP -> v6 mesh -> v6 workload
	if vip6 == "" {
		return
	}
	m := new(dns.Msg)
	m.SetQuestion("six.demo.mesh.", dns.TypeAAAA)
	r, err := dns.Exchange(m, client.DNSAddr())
	if err != nil || len(r.Answer) != 1 {
		t.Fatalf("AAAA: %v %v", r, err)
	}
	aaaa := r.Answer[0].(*dns.AAAA).AAAA.String()
	if aaaa != "fd6d:6573:6801::1" {
		t.Fatalf("AAAA answer %s", aaaa)
	}
	mustRoundTrip(t, "["+aaaa+"]:19006", "v6: ping")
	t.Logf("AAAA %s answered and proxied over IPv6 end to end", aaaa)
}

// TestHostileBytesOnAdminAPI: garbage on the agent's admin port is dropped
// and the agent keeps serving.
func TestHostileBytesOnAdminAPI(t *testing.T) {
	a := startAgent(t, agentOpts{name: "h", site: "s1", region: "r1", vipOctet: 161, stateDir: t.TempDir()})
	for _, b := range [][]byte{[]byte("\x00\xff\x13garbage\r\n\r\n"), bytes.Repeat([]byte("A"), 1<<16), []byte("GET /")} {
		c, err := net.Dial("tcp", a.AdminAddr())
		if err != nil {
			t.Fatal(err)
		}
		c.Write(b)
		c.Close()
	}
	resp, err := http.Get("http://" + a.AdminAddr() + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatal(resp, err)
	}
	resp.Body.Close()
	var st map[string]any
	resp, _ = http.Get("http://" + a.AdminAddr() + "/v1/status")
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st["controlConnected"] != false {
		t.Fatalf("status %v", st)
	}
}

// blackhole relays TCP to target until frozen; then it stops moving bytes
// but keeps every connection open, as a cut uplink does (no FIN, no RST).
type blackhole struct {
	ln     net.Listener
	mu     sync.Mutex
	frozen bool
	conns  []net.Conn
}

func startBlackhole(t *testing.T, target string) *blackhole {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln}
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			b.mu.Lock()
			b.conns = append(b.conns, c, u)
			b.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if err != nil {
						return
					}
					b.mu.Lock()
					frozen := b.frozen
					b.mu.Unlock()
					if !frozen {
						dst.Write(buf[:n])
					}
				}
			}
			go pipe(u, c)
			go pipe(c, u)
		}
	}()
	return b
}

func (b *blackhole) freeze() {
	b.mu.Lock()
	b.frozen = true
	b.mu.Unlock()
}

// TestSilentPartitionIsDetected: when the link to the control plane goes
// silent without closing, the agent notices within a few heartbeat
// intervals and keeps serving meanwhile.
func TestSilentPartitionIsDetected(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, svcDoc("echo", 19007))
	e := startEcho(t, "p", "127.0.0.1:0")
	bh := startBlackhole(t, cp.SyncAddr())
	a := startAgent(t, agentOpts{name: "cut", site: "s1", region: "r1", vipOctet: 162, control: []string{bh.ln.Addr().String()},
		stateDir: t.TempDir(), workloads: []Workload{wlFor("echo", e)}})
	waitFor(t, "connected", func() bool { return a.connected.Load() && len(endpointsOf(a, "demo/echo")) == 1 })
	mustRoundTrip(t, "127.162.0.1:19007", "p: ping")
	bh.freeze()
	start := time.Now()
	waitFor(t, "agent to notice the silent link", func() bool { return !a.connected.Load() })
	if d := time.Since(start); d > 3*time.Second { // heartbeat 200ms here: the 2 s floor of the read deadline + slack
		t.Fatalf("took %v to notice", d)
	}
	mustRoundTrip(t, "127.162.0.1:19007", "p: ping")
}

// TestCheckNoneWorkloadRecovers: a workload without an active check that
// refused one connection comes back when its timed ejection ends.
func TestCheckNoneWorkloadRecovers(t *testing.T) {
	e := startEcho(t, "n", "127.0.0.1:0")
	wl := wlFor("echo", e)
	wl.Check.Type = "none"
	a := startAgent(t, agentOpts{name: "nochk", site: "s1", region: "r1", vipOctet: 197, stateDir: t.TempDir(), workloads: []Workload{wl},
		ejectFor: 300 * time.Millisecond})
	a.mu.Lock()
	ws := a.workloads[wl.Name]
	a.mu.Unlock()
	ep := ws.w.endpoint("nochk", true)
	a.eject(&endpointView{key: ep.Meta.Key(), ep: &ep, local: true})
	a.mu.Lock()
	healthy := ws.healthy
	a.mu.Unlock()
	if !healthy {
		t.Fatal("a check-less workload was marked unhealthy: nothing would ever bring it back")
	}
	if !a.isEjectedAnywhere(ep.Meta.Key()) {
		t.Fatal("not ejected for the timed period")
	}
	// It recovers with no check to bring it back: once the ejection ends
	// it is a healthy candidate again.
	waitFor(t, "the ejection to end", func() bool { return !a.isEjectedAnywhere(ep.Meta.Key()) })
	a.mu.Lock()
	healthy = ws.healthy
	a.mu.Unlock()
	if !healthy {
		t.Fatal("the workload did not recover after its ejection")
	}
}
