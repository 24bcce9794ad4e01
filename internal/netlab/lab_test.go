package netlab

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// reflexive asks the UDP reflector at addr, from pc, which address it
// sees pc's datagrams come from.
func reflexive(t *testing.T, pc net.PacketConn, addr string) netip.AddrPort {
	t.Helper()
	b, err := roundTrip(pc, addr, []byte("who am i"))
	if err != nil {
		t.Fatalf("reflector %s: %v", addr, err)
	}
	ap, err := netip.ParseAddrPort(string(b))
	if err != nil {
		t.Fatalf("reflector %s answered %q: %v", addr, b, err)
	}
	return ap
}

// reflectors starts a UDP reflector on each public host.
func reflectors(t *testing.T, hosts ...*Host) []*udpEcho {
	var es []*udpEcho
	for _, h := range hosts {
		es = append(es, startUDPEcho(t, h, h.Addr.String()+":3478"))
	}
	return es
}

func TestEndpointIndependentNATKeepsPortAcrossDestinations(t *testing.T) {
	l := New(t)
	es := reflectors(t, l.CP, l.Relay1)
	pc, err := l.A.Nodes[0].ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var seen []netip.AddrPort
	for _, e := range es {
		ap := reflexive(t, pc, e.addr())
		if ap.Addr() != l.A.PublicAddr {
			t.Errorf("reflector %s sees %s; want site A's public address %s", e.addr(), ap, l.A.PublicAddr)
		}
		seen = append(seen, ap)
	}
	if seen[0].Port() != seen[1].Port() {
		t.Errorf("one socket mapped to ports %d and %d for two destinations; an endpoint-independent NAT keeps one", seen[0].Port(), seen[1].Port())
	}
}

func TestSymmetricNATMapsEachDestinationApart(t *testing.T) {
	l := New(t)
	es := reflectors(t, l.CP, l.Relay1, l.Relay2)
	pc, err := l.B.Nodes[0].ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ports := map[uint16]bool{}
	for _, e := range es {
		ap := reflexive(t, pc, e.addr())
		if ap.Addr() != l.B.PublicAddr {
			t.Errorf("reflector %s sees %s; want site B's public address %s", e.addr(), ap, l.B.PublicAddr)
		}
		ports[ap.Port()] = true
	}
	// Random ports: two of three may match by chance (1 in ~30,000); all
	// three never do.
	if len(ports) < 2 {
		t.Errorf("one socket got the same mapped port for three destinations %v; a symmetric NAT picks one per destination", ports)
	}
}

func TestNoUDPSiteDropsUDPAndPassesTCP(t *testing.T) {
	l := New(t)
	udp := reflectors(t, l.CP)[0]
	tcp := startTCPEcho(t, l.CP, l.CP.Addr.String()+":0")
	c1 := l.C.Nodes[0]

	conn, err := c1.DialContext(context.Background(), "tcp4", tcp.addr())
	if err != nil {
		t.Fatalf("TCP out of site C: %v", err)
	}
	defer conn.Close()
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if ap, err := netip.ParseAddrPort(strings.TrimSpace(line)); err != nil || ap.Addr() != l.C.PublicAddr {
		t.Errorf("TCP server sees %q (%v); want site C's public address %s", line, err, l.C.PublicAddr)
	}

	// The same reflector answers site A, so it works ...
	pa, err := l.A.Nodes[0].ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pa.Close()
	reflexive(t, pa, udp.addr())
	before := udp.got.Load()
	// ... but site C's datagrams die at its router: proven by the drop
	// rule's counter, not by waiting for nothing to arrive.
	drops0, err := l.C.NAT.RuleCounter("filter", "FORWARD", RuleUDPDrop)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := c1.ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	to, _ := net.ResolveUDPAddr("udp4", udp.addr())
	const n = 5
	for range n {
		if _, err := pc.WriteTo([]byte("x"), to); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "site C's router to drop 5 datagrams", func() bool {
		d, err := l.C.NAT.RuleCounter("filter", "FORWARD", RuleUDPDrop)
		return err == nil && d >= drops0+n
	})
	if got := udp.got.Load(); got != before {
		t.Errorf("reflector got %d datagrams from site C", got-before)
	}
}

func TestLANNodesReachEachOtherDirectly(t *testing.T) {
	l := New(t)
	n1, n2 := l.LAN.Nodes[0], l.LAN.Nodes[1]
	e := startTCPEcho(t, n2, n2.Addr.String()+":0")
	c, err := n1.DialContext(context.Background(), "tcp4", e.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	ap, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil || ap.Addr() != n1.Addr {
		t.Errorf("node 2 sees %q; want node 1's private address %s (no NAT between them)", line, n1.Addr)
	}
}

func TestSitesAAndBShareASubnet(t *testing.T) {
	l := New(t)
	if l.A.Subnet != l.B.Subnet || l.A.Nodes[0].Addr != l.B.Nodes[0].Addr {
		t.Fatalf("A %s %s, B %s %s: want the same subnet and node address", l.A.Subnet, l.A.Nodes[0].Addr, l.B.Subnet, l.B.Nodes[0].Addr)
	}
	want := fmt.Sprintf("%s/%d", l.A.Nodes[0].Addr, l.A.Subnet.Bits())
	e := reflectors(t, l.CP)[0]
	seen := map[netip.Addr]bool{}
	for _, s := range []*Site{l.A, l.B} {
		out, err := s.Nodes[0].Run("ip", "-4", "-o", "addr", "show", "dev", "eth0")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), want) {
			t.Errorf("site %s node's eth0: %s; want %s", s.Name, out, want)
		}
		pc, err := s.Nodes[0].ListenPacket("udp4", ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		seen[reflexive(t, pc, e.addr()).Addr()] = true
	}
	if !seen[l.A.PublicAddr] || !seen[l.B.PublicAddr] {
		t.Errorf("reflector saw %v; want both sites' public addresses", seen)
	}
}

// dialDropped dials addr from h and requires the dial to stay unanswered
// until the router's rule counts the drop; a dial that connects fails the
// test at once.
func dialDropped(t *testing.T, h *Host, addr string, router *Netns, chain, rule string) {
	t.Helper()
	before, err := router.RuleCounter("filter", chain, rule)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		c, err := h.DialContext(ctx, "tcp4", addr)
		if c != nil {
			c.Close()
		}
		errc <- err
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case err := <-errc:
			if err == nil {
				t.Fatalf("%s connected to %s: the NAT let a connection in", h.Name, addr)
			}
			// Refused or unreachable is a "no" too, but the rule must
			// have seen it: fall through to the counter.
		default:
		}
		n, err := router.RuleCounter("filter", chain, rule)
		if err != nil {
			t.Fatal(err)
		}
		if n > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial %s: rule %s never dropped a packet", addr, rule)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-errc; err == nil {
		t.Fatalf("%s connected to %s", h.Name, addr)
	}
}

func TestNoInboundIntoSites(t *testing.T) {
	l := New(t)
	for _, s := range l.Sites() {
		node := s.Nodes[0]
		e := startTCPEcho(t, node, ":0")
		_, port, _ := net.SplitHostPort(e.addr())
		// To the router's public address: no port is forwarded.
		dialDropped(t, l.CP, net.JoinHostPort(s.PublicAddr.String(), port), s.NAT, "INPUT", RuleInboundLocal)
		// Straight to the private address, routed via the router.
		if _, err := l.CP.Run("ip", "route", "replace", s.Subnet.String(), "via", s.PublicAddr.String()); err != nil {
			t.Fatal(err)
		}
		dialDropped(t, l.CP, net.JoinHostPort(node.Addr.String(), port), s.NAT, "FORWARD", RuleInboundForward)
		if n := e.accepted.Load(); n != 0 {
			t.Errorf("site %s node accepted %d connections from the public network", s.Name, n)
		}
		// The way out still works, and its answers come in.
		c, err := node.DialContext(context.Background(), "tcp4", startTCPEcho(t, l.CP, l.CP.Addr.String()+":0").addr())
		if err != nil {
			t.Fatalf("site %s out: %v", s.Name, err)
		}
		c.Close()
	}
}

func TestUplinkFlapRecovers(t *testing.T) {
	l := New(t)
	e := startTCPEcho(t, l.CP, l.CP.Addr.String()+":0")
	a1 := l.A.Nodes[0]
	dial := func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c, err := a1.DialContext(ctx, "tcp4", e.addr())
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := l.A.SetUplink(false); err != nil {
		t.Fatal(err)
	}
	if err := dial(2 * time.Second); err == nil {
		t.Fatal("site A reached the public network with its uplink down")
	}
	if err := l.A.SetUplink(true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "site A to reach the public network again", func() bool { return dial(2*time.Second) == nil })
}

func TestDoRunsInTheNamespace(t *testing.T) {
	l := New(t)
	a1 := l.A.Nodes[0]
	var st os.FileInfo
	st, err := os.Stat(netnsDir + "/" + a1.Name)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("net:[%d]", inode(st))
	var inside string
	var addrs []net.Addr
	if err := a1.Do(func() (err error) {
		inside, err = os.Readlink("/proc/thread-self/ns/net")
		if err != nil {
			return err
		}
		addrs, err = net.InterfaceAddrs()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if inside != want {
		t.Errorf("Do ran in %s; want %s", inside, want)
	}
	if self, _ := os.Readlink("/proc/self/ns/net"); self == want {
		t.Error("the process's main thread moved into the namespace")
	}
	var found bool
	for _, a := range addrs {
		found = found || strings.HasPrefix(a.String(), a1.Addr.String()+"/")
	}
	if !found {
		t.Errorf("addresses inside: %v; want %s", addrs, a1.Addr)
	}
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Errorf("recovered %v; want Do to re-raise fn's panic", v)
			}
		}()
		a1.Do(func() error { panic("boom") })
	}()
	if _, err := a1.DialContext(context.Background(), "tcp", "example.com:80"); err == nil {
		t.Error("DialContext accepted a host name")
	}
}

func TestCommandRunsInTheNamespace(t *testing.T) {
	l := New(t)
	out, err := l.B.Nodes[0].Run("ip", "-4", "-o", "addr")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), l.B.Nodes[0].Addr.String()) || strings.Count(strings.TrimSpace(string(out)), "\n") != 1 {
		t.Errorf("ip addr inside B's node:\n%s\nwant lo and eth0 only", out)
	}
}

func TestTwoLabsAreIsolated(t *testing.T) {
	before := hostLinks(t)
	l1, l2 := New(t), New(t)
	if l1.ID == l2.ID {
		t.Fatalf("two labs share ID %s", l1.ID)
	}
	// The same address and port in both labs: each answers its own.
	e1 := reflectors(t, l1.CP)[0]
	e2 := reflectors(t, l2.CP)[0]
	if e1.addr() != e2.addr() {
		t.Fatalf("reflectors at %s and %s; want the same address", e1.addr(), e2.addr())
	}
	for _, l := range []*Lab{l1, l2} {
		pc, err := l.A.Nodes[0].ListenPacket("udp4", ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		reflexive(t, pc, e1.addr())
	}
	if e1.got.Load() == 0 || e2.got.Load() == 0 {
		t.Errorf("reflectors got %d and %d; want each its own lab's", e1.got.Load(), e2.got.Load())
	}
	if after := hostLinks(t); after != before {
		t.Errorf("host links changed:\nbefore %s\nafter  %s", before, after)
	}
}

func inode(fi os.FileInfo) uint64 { return fi.Sys().(*syscall.Stat_t).Ino }

// hostLinks lists the host namespace's interfaces.
func hostLinks(t *testing.T) string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	return strings.Join(names, " ")
}

func TestImpairInsideTheLab(t *testing.T) {
	l := New(t)
	echo := startUDPEcho(t, l.Relay1, l.Relay1.Addr.String()+":0")
	const delay = 40 * time.Millisecond
	// The relay runs in the control plane's namespace: site A reaches it
	// through its NAT, and it forwards from its own address.
	r, err := ImpairUDP(l.CP, l.CP.Addr.String()+":0", echo.addr(), Impairment{Delay: delay})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	pc, err := l.A.Nodes[0].ListenPacket("udp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	start := time.Now()
	b, err := roundTrip(pc, r.Addr().String(), []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt < 2*delay {
		t.Errorf("round trip %v through a relay delaying %v each way", rtt, delay)
	}
	if ap, err := netip.ParseAddrPort(string(b)); err != nil || ap.Addr() != l.CP.Addr {
		t.Errorf("echo saw %q; want the relay's address %s", b, l.CP.Addr)
	}
}
