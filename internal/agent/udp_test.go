package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// UDP service ports (udp.go, udpflow.go, udpmesh.go) with real UDP
// sockets on loopback: echo workloads, clients, agents. VIP octets 163,
// 164 and 165.

// udpEcho answers every datagram with "<name>: <datagram>".
type udpEcho struct {
	name string
	c    *net.UDPConn
	n    atomic.Int64 // datagrams received
	mu   sync.Mutex
	got  map[string]int // datagrams received by payload
}

// received is how many times the echo got payload.
func (e *udpEcho) received(payload string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.got[payload]
}

func startUDPEcho(t testing.TB, name string) *udpEcho {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	e := &udpEcho{name: name, c: c, got: map[string]int{}}
	go func() {
		buf := make([]byte, 1<<16)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			e.n.Add(1)
			e.mu.Lock()
			e.got[string(buf[:n])]++
			e.mu.Unlock()
			c.WriteToUDPAddrPort(append([]byte(name+": "), buf[:n]...), from)
		}
	}()
	t.Cleanup(e.stop)
	return e
}

func (e *udpEcho) stop()     { e.c.Close() }
func (e *udpEcho) port() int { return e.c.LocalAddr().(*net.UDPAddr).Port }

// deadUDPPort is a loopback UDP port nothing listens on (bound, then
// closed): datagrams to it are answered ICMP port unreachable.
func deadUDPPort(t *testing.T) int {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := c.LocalAddr().(*net.UDPAddr).Port
	c.Close()
	return p
}

func udpWorkload(service, name string, port int) Workload {
	return Workload{Name: service + "-" + name, Service: service, Namespace: "demo",
		Ports: []api.EndpointPort{{Name: "udp", Port: port}}, Check: Check{Type: "none"}}
}

func udpSvcDoc(name string, port int, extra string) string {
	return fmt.Sprintf(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":%q,"namespace":"demo"},
	"spec":{"ports":[{"name":"udp","port":%d,"protocol":"udp"}]%s}}`, name, port, extra)
}

// udpClient is a client socket on loopback (from ip, default 127.0.0.1)
// that talks to a VIP:port and checks that every answer comes from it.
type udpClient struct {
	t   testing.TB
	c   *net.UDPConn
	vip netip.AddrPort
}

func newUDPClient(t testing.TB, ip, vip string) *udpClient {
	t.Helper()
	if ip == "" {
		ip = "127.0.0.1"
	}
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpClient{t: t, c: c, vip: netip.MustParseAddrPort(vip)}
}

// ask sends msg and returns its answer ("<echo name>: msg") within wait,
// or "" if none came. Late answers to earlier messages are skipped.
func (u *udpClient) ask(msg []byte, wait time.Duration) string {
	u.t.Helper()
	if _, err := u.c.WriteToUDPAddrPort(msg, u.vip); err != nil {
		u.t.Fatalf("send to %s: %v", u.vip, err)
	}
	buf := make([]byte, 1<<16)
	u.c.SetReadDeadline(time.Now().Add(wait))
	for {
		n, from, err := u.c.ReadFromUDPAddrPort(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return ""
		}
		if err != nil {
			u.t.Fatalf("read: %v", err)
		}
		if from != u.vip {
			u.t.Fatalf("answer from %s, want it from the VIP %s", from, u.vip)
		}
		if bytes.HasSuffix(buf[:n], append([]byte(": "), msg...)) {
			return string(buf[:n])
		}
	}
}

// mustAsk sends msg until an answer with prefix want comes (the agent may
// not have bound the port yet, or a flow may be moving to another
// endpoint), for up to 10 s.
func (u *udpClient) mustAsk(msg, want string) string {
	u.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := u.ask([]byte(msg), 300*time.Millisecond)
		if strings.HasPrefix(got, want) {
			return got
		}
		if time.Now().After(deadline) {
			u.t.Fatalf("via %s: last answer %q, want %s...", u.vip, got, want)
		}
	}
}

// metricVal is the value of one series of the agent's metrics (0 if absent).
func metricVal(a *Agent, series string) float64 {
	var b bytes.Buffer
	a.cfg.Metrics.WritePrometheus(&b)
	sc := bufio.NewScanner(&b)
	for sc.Scan() {
		if name, val, ok := strings.Cut(sc.Text(), " "); ok && name == series {
			f, _ := strconv.ParseFloat(val, 64)
			return f
		}
	}
	return 0
}

const (
	srcActive = `fogmesh_udp_flows_active{side="source"}`
	dstActive = `fogmesh_udp_flows_active{side="destination"}`
)

// TestUDPThroughOneAgent: a udp port with two local endpoints. Each
// client's flow sticks to one endpoint (round robin over flows, not
// datagrams), answers come from the VIP:port, and the flow closes after
// the service's idle timeout (spec.timeouts.idle), after which the same
// client gets a new flow.
func TestUDPThroughOneAgent(t *testing.T) {
	e1, e2 := startUDPEcho(t, "one"), startUDPEcho(t, "two")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, udpSvcDoc("coap", 19631, `,"balancer":"round-robin","timeouts":{"idle":"2s"}`))
	a := startAgent(t, agentOpts{name: "solo", site: "s1", region: "r1", vipOctet: 163, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{udpWorkload("coap", "one", e1.port()), udpWorkload("coap", "two", e2.port())}})
	waitFor(t, "two endpoints", func() bool { return len(endpointsOf(a, "demo/coap")) == 2 })
	vip := "127.163.0.1:19631"
	c1, c2 := newUDPClient(t, "", vip), newUDPClient(t, "", vip)
	first := strings.Split(c1.mustAsk("hello", ""), ":")[0]
	for i := range 5 {
		if got := c1.ask([]byte(fmt.Sprint("n", i)), 3*time.Second); got != fmt.Sprintf("%s: n%d", first, i) {
			t.Fatalf("datagram %d of the flow: %q, want it from %s", i, got, first)
		}
	}
	other := map[string]string{"one": "two", "two": "one"}[first]
	if got := c2.ask([]byte("hi"), 3*time.Second); got != other+": hi" {
		t.Fatalf("second client's flow: %q, want round robin to %s", got, other)
	}
	if n := metricVal(a, srcActive); n != 2 {
		t.Fatalf("%s = %v, want 2", srcActive, n)
	}
	if up, down := metricVal(a, `fogmesh_udp_datagrams_total{side="source",dir="up"}`), metricVal(a, `fogmesh_udp_datagrams_total{side="source",dir="down"}`); up < 7 || down < 7 {
		t.Fatalf("datagrams up %v, down %v; want at least 7 each", up, down)
	}
	if b := metricVal(a, `fogmesh_udp_bytes_total{side="source",dir="up"}`); b < 5+2*5+2 {
		t.Fatalf("bytes up %v", b)
	}
	waitFor(t, "both flows to close when idle", func() bool {
		return metricVal(a, srcActive) == 0 && metricVal(a, `fogmesh_udp_idle_timeouts_total{side="source"}`) == 2
	})
	if got := c1.ask([]byte("again"), 3*time.Second); !strings.HasSuffix(got, ": again") {
		t.Fatalf("after the idle close: %q", got)
	}
	if n := metricVal(a, `fogmesh_udp_flows_total{side="source",result="ok"}`); n != 3 {
		t.Fatalf("flows opened: %v, want 3", n)
	}
}

// TestUDPLimits: a port holds at most UDPConfig.MaxFlows flows (further
// clients' datagrams dropped and counted until one ends), and a datagram
// over UDPConfig.MaxDatagram is dropped and counted while the flow goes
// on.
func TestUDPLimits(t *testing.T) {
	e := startUDPEcho(t, "e")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, udpSvcDoc("game", 19632, `,"timeouts":{"idle":"1500ms"}`))
	a := startAgentWith(t, agentOpts{name: "solo", site: "s1", region: "r1", vipOctet: 163, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{udpWorkload("game", "e", e.port())}},
		func(c *Config) { c.UDP = UDPConfig{MaxFlows: 2, MaxDatagram: 1000} })
	vip := "127.163.0.1:19632"
	c1, c2, c3 := newUDPClient(t, "", vip), newUDPClient(t, "", vip), newUDPClient(t, "", vip)
	c1.mustAsk("a", "e: a")
	c2.mustAsk("b", "e: b")
	const limited = `fogmesh_udp_drops_total{side="source",reason="flow_limit"}`
	if got := c3.ask([]byte("c"), 200*time.Millisecond); got != "" {
		t.Fatalf("a third flow over maxFlows 2 was answered %q", got)
	}
	waitFor(t, "the drop to be counted", func() bool { return metricVal(a, limited) >= 1 })

	big := bytes.Repeat([]byte("x"), 1001)
	if got := c1.ask(big, 200*time.Millisecond); got != "" {
		t.Fatalf("a datagram over maxDatagram was answered (%d bytes)", len(got))
	}
	waitFor(t, "the oversize drop to be counted", func() bool {
		return metricVal(a, `fogmesh_udp_drops_total{side="source",reason="oversize"}`) == 1
	})
	// The answer to 997 bytes is 1000 bytes: the most a flow carries.
	if got := c1.ask(big[:997], 3*time.Second); got != "e: "+string(big[:997]) {
		t.Fatalf("a datagram of maxDatagram: %d bytes back", len(got))
	}
	// The answer to 998 bytes is over maxDatagram: dropped too.
	if got := c1.ask(big[:998], 200*time.Millisecond); got != "" {
		t.Fatalf("an answer over maxDatagram was relayed (%d bytes)", len(got))
	}
	waitFor(t, "the oversize answer to be counted", func() bool {
		return metricVal(a, `fogmesh_udp_drops_total{side="source",reason="oversize"}`) == 2
	})
	// The two flows end when idle; then the third client gets one.
	waitFor(t, "the flows to close", func() bool { return metricVal(a, srcActive) == 0 })
	c3.mustAsk("c", "e: c")
}

// TestUDPQueueBounded: a flow whose upstream does not take its datagrams
// (a mesh stream that is not read) drops what does not fit in its queue,
// counted, and the port's reader serves other flows meanwhile.
func TestUDPQueueBounded(t *testing.T) {
	f := &udpFlow{p: &udpPort{lim: UDPConfig{QueueDatagrams: 2, QueueBytes: 10}.withDefaults()}, q: make(chan []byte, 2)}
	for i, c := range []struct {
		d    string
		drop string
	}{{"12345", ""}, {"123456", "queue_full"}, {"1234", ""}, {"", "queue_full"}} {
		if got := f.enqueueLocked([]byte(c.d)); got != c.drop {
			t.Fatalf("datagram %d (%q): drop %q, want %q", i, c.d, got, c.drop)
		}
	}
	if f.qBytes.Load() != 9 || len(f.q) != 2 {
		t.Fatalf("queue holds %d datagrams, %d bytes", len(f.q), f.qBytes.Load())
	}
}

// TestUDPDeadEndpoint: an endpoint whose port refuses (ICMP port
// unreachable) is ejected; the flow that found it moves to the other
// endpoint, and new flows go there too. With only refusing endpoints
// nothing answers and nothing breaks.
func TestUDPDeadEndpoint(t *testing.T) {
	live := startUDPEcho(t, "live")
	dead := deadUDPPort(t)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, udpSvcDoc("syslog", 19633, `,"balancer":"round-robin"`))
	a := startAgent(t, agentOpts{name: "solo", site: "s1", region: "r1", vipOctet: 163, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), ejectFor: time.Minute,
		workloads: []Workload{udpWorkload("syslog", "dead", dead), udpWorkload("syslog", "live", live.port())}})
	waitFor(t, "two endpoints", func() bool { return len(endpointsOf(a, "demo/syslog")) == 2 })
	vip := "127.163.0.1:19633"
	// Round robin sends one of the first two flows to the dead endpoint.
	for i := range 4 {
		newUDPClient(t, "", vip).mustAsk(fmt.Sprint("m", i), "live: ")
	}
	repins := metricVal(a, `fogmesh_udp_repins_total`)
	if repins < 1 {
		t.Fatalf("repins %v: no flow went to the dead endpoint and moved", repins)
	}
	if !a.isEjectedAnywhere("demo/syslog-dead") {
		t.Fatal("the refusing endpoint was not ejected")
	}
	for i := range 6 {
		newUDPClient(t, "", vip).mustAsk(fmt.Sprint("after", i), "live: ")
	}
	if n := metricVal(a, `fogmesh_udp_repins_total`); n != repins {
		t.Fatalf("repins went from %v to %v: a new flow was sent to the ejected endpoint", repins, n)
	}

	// Only a refusing endpoint: no answer, counted, the port keeps serving.
	apply(t, cp, udpSvcDoc("dead", 19634, ""))
	b := startAgent(t, agentOpts{name: "solo2", site: "s1", region: "r1", vipOctet: 164, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{udpWorkload("dead", "d", dead)}})
	waitFor(t, "the service", func() bool { _, ok := b.LookupService("demo", "dead"); return ok })
	r, _ := b.LookupService("demo", "dead")
	c := newUDPClient(t, "", netip.AddrPortFrom(r.V4, 19634).String())
	waitFor(t, "the flow to find the endpoint dead", func() bool {
		c.ask([]byte("x"), 50*time.Millisecond)
		return metricVal(b, `fogmesh_udp_repins_total`) >= 1
	})
}

// TestUDPAcrossMesh: a client on node a reaches workloads on b and c
// through a's VIP and one mesh stream per flow; b (same site) is
// preferred. A datagram over b's maxDatagram is dropped at b, counted. The
// flow ends on both agents when idle. When b's agent dies, the flow moves
// to c (next tier) and new flows go there.
func TestUDPAcrossMesh(t *testing.T) {
	eb, ec := startUDPEcho(t, "b"), startUDPEcho(t, "c")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, udpSvcDoc("rtp", 19635, `,"timeouts":{"idle":"1s"}`))
	ctl := []string{cp.SyncAddr()}
	b := startAgentWith(t, agentOpts{name: "b", site: "s1", region: "r1", vipOctet: 164, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{udpWorkload("rtp", "b", eb.port())}}, func(c *Config) { c.UDP.MaxDatagram = 1000 })
	startAgent(t, agentOpts{name: "c", site: "s2", region: "r1", vipOctet: 165, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{udpWorkload("rtp", "c", ec.port())}})
	a := startAgent(t, agentOpts{name: "a", site: "s1", region: "r1", vipOctet: 163, control: ctl, stateDir: t.TempDir()})
	waitFor(t, "a to learn b's and c's endpoints", func() bool {
		tiers := map[string]string{}
		for _, e := range endpointsOf(a, "demo/rtp") {
			if e.Healthy {
				tiers[e.Node] = e.Tier
			}
		}
		return tiers["b"] == "site" && tiers["c"] == "region"
	})
	cl := newUDPClient(t, "", "127.163.0.1:19635")
	cl.mustAsk("hello", "b: hello")
	for i := range 5 {
		if got := cl.ask([]byte(fmt.Sprint(i)), 3*time.Second); got != fmt.Sprint("b: ", i) {
			t.Fatalf("datagram %d: %q", i, got)
		}
	}
	if n := metricVal(b, dstActive); n != 1 {
		t.Fatalf("b relays %v flows, want 1", n)
	}
	if got := cl.ask(bytes.Repeat([]byte("x"), 1001), 200*time.Millisecond); got != "" {
		t.Fatalf("a datagram over b's maxDatagram was answered (%d bytes)", len(got))
	}
	waitFor(t, "b to count the oversize drop", func() bool {
		return metricVal(b, `fogmesh_udp_drops_total{side="destination",reason="oversize"}`) == 1
	})
	if got := cl.ask([]byte("still"), 3*time.Second); got != "b: still" {
		t.Fatalf("the flow after an oversize datagram: %q", got)
	}
	for _, p := range []string{"0", "1", "2", "3", "4", "still"} {
		if n := eb.received(p); n != 1 {
			t.Fatalf("b's workload got %q %d times, want once", p, n)
		}
	}
	if n := metricVal(b, `fogmesh_udp_datagrams_total{side="destination",dir="up"}`); n < 7 {
		t.Fatalf("b counted %v datagrams to its workload, want at least 7", n)
	}
	waitFor(t, "the flow to end on both agents", func() bool {
		return metricVal(a, srcActive) == 0 && metricVal(b, dstActive) == 0
	})

	cl.mustAsk("again", "b: again")
	b.Close() // b's node dies with the flow open
	cl.mustAsk("moved", "c: moved")
	newUDPClient(t, "", "127.163.0.1:19635").mustAsk("new", "c: new")
}

// TestUDPAuthorizedAtDestination: the destination agent authorizes a udp
// flow as a TCP stream, once per flow by source identity: the frontend's
// flow reaches the workload, an unknown client's is denied at b and its
// datagrams are dropped at a.
func TestUDPAuthorizedAtDestination(t *testing.T) {
	e := startUDPEcho(t, "b")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: coap, namespace: demo}
spec: {ports: [{name: udp, port: 19636, protocol: udp}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: coap-frontend, namespace: demo}
spec: {service: coap, rules: [{from: [{principals: ["`+frontendID+`"]}]}]}`)
	ctl := []string{cp.SyncAddr()}
	b := startAgent(t, agentOpts{name: "b", site: "s1", region: "r1", vipOctet: 164, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{udpWorkload("coap", "b", e.port())}})
	a := startAgent(t, agentOpts{name: "a", site: "s1", region: "r1", vipOctet: 163, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{identityWorkload("frontend", frontendIP), identityWorkload("intruder", intruderIP)}})
	waitFor(t, "a to learn b's endpoint", func() bool { return len(endpointsOf(a, "demo/coap")) == 1 })
	vip := "127.163.0.1:19636"
	newUDPClient(t, frontendIP, vip).mustAsk("ok", "b: ok")
	intruder := newUDPClient(t, intruderIP, vip)
	if got := intruder.ask([]byte("let me in"), 300*time.Millisecond); got != "" {
		t.Fatalf("the intruder's flow was answered %q", got)
	}
	waitFor(t, "the denial to be counted at a", func() bool {
		return metricVal(a, `fogmesh_udp_flows_total{side="source",result="denied"}`) == 1
	})
	if n := metricVal(b, `fogmesh_udp_flows_total{side="destination",result="ok"}`); n != 1 {
		t.Fatalf("b opened %v flows, want only the frontend's", n)
	}
	if n := e.received("let me in"); n != 0 {
		t.Fatalf("the workload got the intruder's datagram %d times", n)
	}
}

// TestUDPAcrossSecureMesh: in secure mode a udp flow crosses the mTLS mesh
// port like a TCP connection, and the destination authorizes it by the
// source identity the source node vouches for.
func TestUDPAcrossSecureMesh(t *testing.T) {
	cpDir := t.TempDir()
	cp := startControlWith(t, cpDir, "", func(c *control.Config) { c.Insecure = false })
	applySecure(t, cp, cpDir, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: coap, namespace: demo}
spec: {ports: [{name: udp, port: 19637, protocol: udp}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: frontend, namespace: demo}
spec: {ports: [{name: x, port: 19638}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: intruder, namespace: demo}
spec: {ports: [{name: x, port: 19639}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: coap-frontend, namespace: demo}
spec: {service: coap, rules: [{from: [{principals: ["`+frontendID+`"]}]}]}`)
	secure := func(c *Config) {
		tok, err := cp.CreateToken(identity.TokenJoin, "s1", "", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		c.Insecure, c.JoinToken, c.WorkloadAPISocket = false, tok, "off"
	}
	e := startUDPEcho(t, "b")
	ctl := []string{cp.SyncAddr()}
	b := startAgentWith(t, agentOpts{name: "b", site: "s1", region: "r1", vipOctet: 164, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{udpWorkload("coap", "b", e.port())}}, secure)
	a := startAgentWith(t, agentOpts{name: "a", site: "s1", region: "r1", vipOctet: 163, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{identityWorkload("frontend", frontendIP), identityWorkload("intruder", intruderIP)}}, secure)
	if a.ident == nil || b.ident == nil {
		t.Fatal("an agent runs without a node identity")
	}
	waitFor(t, "a to learn b's endpoint and b a's frontend", func() bool {
		eps := endpointsOf(a, "demo/coap")
		return len(eps) == 1 && eps[0].Healthy && len(endpointsOf(b, "demo/frontend")) == 1
	})
	r, _ := a.LookupService("demo", "coap")
	vip := netip.AddrPortFrom(r.V4, 19637).String()
	newUDPClient(t, frontendIP, vip).mustAsk("secure", "b: secure")
	if n := metricVal(b, dstActive); n != 1 {
		t.Fatalf("b relays %v flows, want 1", n)
	}
	if got := newUDPClient(t, intruderIP, vip).ask([]byte("let me in"), 300*time.Millisecond); got != "" {
		t.Fatalf("the intruder's flow was answered %q", got)
	}
	waitFor(t, "the denial to be counted at a", func() bool {
		return metricVal(a, `fogmesh_udp_flows_total{side="source",result="denied"}`) == 1
	})
}

// TestUDPFlowLeavesEjectedEndpoint: an open flow whose endpoint is ejected
// meanwhile (here quarantined as a failed connect elsewhere would) moves
// to another endpoint while the client keeps sending.
func TestUDPFlowLeavesEjectedEndpoint(t *testing.T) {
	e1, e2 := startUDPEcho(t, "one"), startUDPEcho(t, "two")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, udpSvcDoc("video", 19640, ""))
	a := startAgent(t, agentOpts{name: "solo", site: "s1", region: "r1", vipOctet: 165, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{udpWorkload("video", "one", e1.port()), udpWorkload("video", "two", e2.port())}})
	waitFor(t, "two endpoints", func() bool { return len(endpointsOf(a, "demo/video")) == 2 })
	c := newUDPClient(t, "", "127.165.0.1:19640")
	first := strings.Split(c.mustAsk("frame", ""), ":")[0]
	other := map[string]string{"one": "two", "two": "one"}[first]
	a.outliers.Quarantine("demo/video-"+first, time.Now().Add(time.Minute))
	c.mustAsk("next", other+": next")
	if n := metricVal(a, `fogmesh_udp_repins_total`); n != 1 {
		t.Fatalf("repins %v, want 1", n)
	}
	if n := metricVal(a, `fogmesh_udp_flows_total{side="source",result="ok"}`); n != 2 {
		t.Fatalf("%v upstreams opened, want 2 (the flow's first and its move)", n)
	}
}

// TestUDPConfigValidated: the udp bounds decode from the config file's
// form and bad ones are refused with the field named.
func TestUDPConfigValidated(t *testing.T) {
	var c Config
	if err := json.Unmarshal([]byte(`{"udp":{"maxFlows":5,"queueDatagrams":2,"queueBytes":100,"maxDatagram":1200}}`), &c); err != nil {
		t.Fatal(err)
	}
	if c.UDP != (UDPConfig{MaxFlows: 5, QueueDatagrams: 2, QueueBytes: 100, MaxDatagram: 1200}) {
		t.Fatalf("decoded %+v", c.UDP)
	}
	if d := (UDPConfig{}).withDefaults(); d != (UDPConfig{MaxFlows: 1024, QueueDatagrams: 64, QueueBytes: 256 << 10, MaxDatagram: 65535}) {
		t.Fatalf("defaults %+v", d)
	}
	for _, tt := range []struct {
		udp  UDPConfig
		want string
	}{{UDPConfig{MaxDatagram: 65536}, "maxDatagram 65536 over 65535"}, {UDPConfig{MaxFlows: -1}, "must not be negative"}} {
		_, err := New(Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
			DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", VIPRange: "127.165.0.0/16", Insecure: true, UDP: tt.udp})
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.want) {
			t.Fatalf("%+v: %v, want a ConfigError saying %q", tt.udp, err, tt.want)
		}
	}
}

// TestUDPDestinationIdle: the endpoint's agent ends a udp mesh stream
// that carried nothing for twice the service's idle timeout (a source
// that vanished without closing it), counted.
func TestUDPDestinationIdle(t *testing.T) {
	a, err := New(Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
		DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", VIPRange: "127.165.0.0/16", Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	e := startUDPEcho(t, "e")
	uc, err := net.DialUDP("udp", nil, e.c.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	svc := &api.Service{Meta: api.Meta{Name: "coap", Namespace: "demo"}}
	svc.Spec.Timeouts.Idle = api.Duration(100 * time.Millisecond)
	u := &udpLocal{UDPConn: uc, sv: &serviceView{svc: svc}, ev: &endpointView{key: "demo/coap-e", local: true}}
	stream, peer := net.Pipe()
	defer peer.Close()
	done := make(chan struct{})
	start := time.Now()
	go func() { a.relayUDP(context.Background(), transport.Header{}, stream, u); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the idle udp mesh stream was not ended")
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Fatalf("ended after %v, before twice the idle timeout", took)
	}
	if n := metricVal(a, `fogmesh_udp_idle_timeouts_total{side="destination"}`); n != 1 {
		t.Fatalf("destination idle timeouts %v, want 1", n)
	}
}

// TestUDPStreamMustMatchPort: the destination refuses a udp stream to a
// port that is not udp, and a plain stream to a udp port: neither side
// would understand the other's bytes.
func TestUDPStreamMustMatchPort(t *testing.T) {
	e := startUDPEcho(t, "e")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, "["+udpSvcDoc("coap", 19641, "")+","+svcDoc("db", 19642)+"]")
	a := startAgent(t, agentOpts{name: "solo", site: "s1", region: "r1", vipOctet: 165, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{udpWorkload("coap", "e", e.port()), {Name: "db-x", Service: "db", Namespace: "demo",
			Ports: []api.EndpointPort{{Name: "tcp", Port: e.port()}}, Check: Check{Type: "none"}}}})
	waitFor(t, "both services", func() bool { return hasService(a, "demo/coap") && hasService(a, "demo/db") })
	ctx := context.Background()
	for _, h := range []transport.Header{
		{Namespace: "demo", Service: "coap", Endpoint: "coap-e", Port: "udp", Source: "peer"},
		{Namespace: "demo", Service: "db", Endpoint: "db-x", Port: "tcp", Source: "peer", UDP: true},
	} {
		if c, err := a.DialLocal(ctx, h); !errors.Is(err, transport.ErrUnknownDestination) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("%+v: %v, want it refused", h, err)
		}
	}
	c, err := a.DialLocal(ctx, transport.Header{Namespace: "demo", Service: "coap", Endpoint: "coap-e", Port: "udp", Source: "peer", UDP: true})
	if err != nil {
		t.Fatalf("a udp stream to the udp port: %v", err)
	}
	c.Close()
}

// TestUDPCircuitBreaker: circuitBreaker.maxConnections counts a udp
// service's flows; a flow over it is refused and counted.
func TestUDPCircuitBreaker(t *testing.T) {
	e := startUDPEcho(t, "e")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, udpSvcDoc("cb", 19643, `,"circuitBreaker":{"maxConnections":1}`))
	a := startAgent(t, agentOpts{name: "solo", site: "s1", region: "r1", vipOctet: 165, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{udpWorkload("cb", "e", e.port())}})
	vip := "127.165.0.1:19643"
	newUDPClient(t, "", vip).mustAsk("one", "e: one")
	if got := newUDPClient(t, "", vip).ask([]byte("two"), 300*time.Millisecond); got != "" {
		t.Fatalf("a second flow over maxConnections 1 was answered %q", got)
	}
	waitFor(t, "the refusal to be counted", func() bool {
		return metricVal(a, `fogmesh_udp_flows_total{side="source",result="circuit_breaker"}`) == 1 &&
			metricVal(a, `fogmesh_agent_circuit_breaker_overflows_total`) == 1
	})
}

// TestUDPSourceIPHash: with consistent-hash the source IP picks a flow's
// endpoint: every flow from one address goes to the same endpoint.
func TestUDPSourceIPHash(t *testing.T) {
	e1, e2 := startUDPEcho(t, "one"), startUDPEcho(t, "two")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, udpSvcDoc("hash", 19644, `,"balancer":"consistent-hash"`))
	a := startAgent(t, agentOpts{name: "solo", site: "s1", region: "r1", vipOctet: 165, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{udpWorkload("hash", "one", e1.port()), udpWorkload("hash", "two", e2.port())}})
	waitFor(t, "two endpoints", func() bool { return len(endpointsOf(a, "demo/hash")) == 2 })
	vip := "127.165.0.1:19644"
	first := map[string]string{}
	used := map[string]bool{}
	for round := range 3 {
		for i := 1; i <= 8; i++ {
			ip := fmt.Sprintf("127.0.2.%d", i)
			got := strings.Split(newUDPClient(t, ip, vip).mustAsk(fmt.Sprint("r", round), ""), ":")[0]
			if round == 0 {
				first[ip] = got
			} else if got != first[ip] {
				t.Fatalf("flows from %s went to %s and %s", ip, first[ip], got)
			}
			used[got] = true
		}
	}
	if len(used) != 2 {
		t.Fatalf("8 source addresses all hashed to %v", used)
	}
}
