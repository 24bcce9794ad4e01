package agent

import (
	"bufio"
	"bytes"
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
	// Counted after each write returns: the answer can beat the count.
	waitFor(t, "a to count 7 datagrams each way", func() bool {
		return metricVal(a, `fogmesh_udp_datagrams_total{side="source",dir="up"}`) >= 7 &&
			metricVal(a, `fogmesh_udp_datagrams_total{side="source",dir="down"}`) >= 7 &&
			metricVal(a, `fogmesh_udp_bytes_total{side="source",dir="up"}`) >= 5+2*5+2
	})
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
