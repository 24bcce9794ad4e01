package capture_test

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/capture"
	"github.com/fogmesh/fogmesh/internal/netlab"
)

// udpEcho serves a PktConn: it answers each datagram with "NAME to ADDR:
// DATA" (ADDR: the local address the datagram came to), from that address.
func udpEcho(t *testing.T, pc *capture.PktConn, name string) {
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, to, err := pc.ReadFromTo(buf)
			if err != nil {
				if ne, ok := err.(net.Error); ok && !ne.Timeout() || err == net.ErrClosed {
					return
				}
				continue
			}
			pc.WriteToFrom([]byte(name+" to "+to.String()+": "+string(buf[:n])), from, to)
		}
	}()
}

// udpCall sends msg to addr from inside ns over a connected UDP socket (it
// takes replies from addr only, as a DNS client does) and returns the reply.
func udpCall(t *testing.T, ns *netlab.Netns, addr, msg string) (string, error) {
	t.Helper()
	c, err := ns.DialContext(context.Background(), "udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// TestRedirectUDP: a UDP ClusterIP:port in the map reaches the agent's
// socket for it, and the reply, sent from the address the datagram came
// to, reaches the client as coming from the ClusterIP (conntrack maps it
// back); each captured destination has its own socket; a destination taken
// out of the map is no longer redirected.
func TestRedirectUDP(t *testing.T) {
	ns, fd, port := setup(t)
	var dns, syslog *capture.PktConn
	if err := ns.Do(func() (err error) {
		if dns, err = capture.ListenPkt(context.Background(), "udp4", "0.0.0.0:0"); err != nil {
			return err
		}
		syslog, err = capture.ListenPkt(context.Background(), "udp4", "0.0.0.0:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	udpEcho(t, dns, "dns")
	udpEcho(t, syslog, "syslog")
	r, err := capture.Install(capture.Config{Port: port, NetNSFd: fd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Remove() })
	lport := func(pc *capture.PktConn) uint16 { return uint16(pc.LocalAddr().(*net.UDPAddr).Port) }
	m := map[netip.AddrPort]uint16{
		netip.MustParseAddrPort("10.96.0.10:53"):  lport(dns),
		netip.MustParseAddrPort("10.96.0.11:514"): lport(syslog),
		netip.MustParseAddrPort("[fd00::10]:53"):  lport(dns),
	}
	if skipped, err := r.SyncUDP(m); err != nil || len(skipped) != 1 {
		t.Fatalf("SyncUDP: skipped %v, %v", skipped, err)
	}
	for addr, want := range map[string]string{"10.96.0.10:53": "dns to 127.0.0.1: q1", "10.96.0.11:514": "syslog to 127.0.0.1: q1"} {
		if got, err := udpCall(t, ns, addr, "q1"); err != nil || got != want {
			t.Errorf("udp %s: %q, %v; want %q", addr, got, err, want)
		}
	}
	// The TCP set is another matter: a TCP connection to a UDP-only
	// destination is not redirected (no listener answers at the ClusterIP).
	if c, err := ns.DialContext(context.Background(), "tcp", "10.96.0.10:53"); err == nil {
		c.Close()
		t.Error("a TCP connection to a UDP ClusterIP:port was redirected")
	}
	// Out of the map: not redirected any more.
	delete(m, netip.MustParseAddrPort("10.96.0.11:514"))
	if _, err := r.SyncUDP(m); err != nil {
		t.Fatal(err)
	}
	if got, err := udpCall(t, ns, "10.96.0.11:514", "q2"); err == nil {
		t.Errorf("udp to a destination taken out of the map answered %q", got)
	}
	if got, err := udpCall(t, ns, "10.96.0.10:53", "q3"); err != nil || got != "dns to 127.0.0.1: q3" {
		t.Errorf("udp 10.96.0.10:53 after the sync: %q, %v", got, err)
	}
}

// TestRedirectUDPFromPod: a pod's datagram to a UDP ClusterIP (prerouting)
// arrives at the address of the node's interface it came in on, and the
// reply from that address reaches the pod as coming from the ClusterIP.
func TestRedirectUDPFromPod(t *testing.T) {
	node, fd, port := setup(t)
	pod := netlab.NewPod(t, node, "pod")
	var pc *capture.PktConn
	if err := node.Do(func() (err error) {
		pc, err = capture.ListenPkt(context.Background(), "udp4", "0.0.0.0:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	udpEcho(t, pc, "dns")
	r, err := capture.Install(capture.Config{Port: port, NetNSFd: fd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Remove() })
	if _, err := r.SyncUDP(map[netip.AddrPort]uint16{netip.MustParseAddrPort("10.96.0.10:53"): uint16(pc.LocalAddr().(*net.UDPAddr).Port)}); err != nil {
		t.Fatal(err)
	}
	got, err := udpCall(t, pod, "10.96.0.10:53", "q")
	if err != nil || len(got) < 4 || got[:7] != "dns to " || got[len(got)-3:] != ": q" {
		t.Fatalf("udp from the pod: %q, %v", got, err)
	}
	if got == "dns to 127.0.0.1: q" {
		t.Fatalf("a pod's datagram arrived at loopback: %q", got)
	}
}

// TestUDPDirectRefused: a capture UDP socket binds every address (a pod's
// redirected datagram arrives at its interface's), so without a rule any
// host that reaches the node could send to it directly, from anywhere,
// and be proxied into the mesh as if it had sent to the ClusterIP. Only
// redirected datagrams may reach it: a datagram sent straight to the
// socket's port is dropped, a redirected one still answered.
func TestUDPDirectRefused(t *testing.T) {
	ns, fd, port := setup(t)
	var pc *capture.PktConn
	if err := ns.Do(func() (err error) {
		pc, err = capture.ListenPkt(context.Background(), "udp4", "0.0.0.0:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	udpEcho(t, pc, "dns")
	lport := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	direct := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), lport).String()
	if got, err := udpCall(t, ns, direct, "before"); err != nil || got != "dns to 127.0.0.1: before" {
		t.Fatalf("the socket before any rule: %q, %v", got, err)
	}
	r, err := capture.Install(capture.Config{Port: port, NetNSFd: fd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Remove() })
	if _, err := r.SyncUDP(map[netip.AddrPort]uint16{netip.MustParseAddrPort("10.96.0.10:53"): lport}); err != nil {
		t.Fatal(err)
	}
	if got, err := udpCall(t, ns, "10.96.0.10:53", "q"); err != nil || got != "dns to 127.0.0.1: q" {
		t.Fatalf("redirected: %q, %v", got, err)
	}
	if got, err := udpCall(t, ns, direct, "direct"); err == nil {
		t.Fatalf("a datagram sent straight to the capture socket %s was answered: %q", direct, got)
	}
	// Out of the map, the port is no longer the agent's to guard.
	if _, err := r.SyncUDP(nil); err != nil {
		t.Fatal(err)
	}
	if got, err := udpCall(t, ns, direct, "after"); err != nil || got != "dns to 127.0.0.1: after" {
		t.Fatalf("the socket after its destination left the map: %q, %v", got, err)
	}
}

// TestUDPDirectRefusedPerFamily: the guard of the capture UDP ports is per
// family. An IPv6 capture socket (IPV6_V6ONLY) may share its port number
// with another program's IPv4 socket (a DNS client's ephemeral port, say),
// whose datagrams are not the agent's to drop.
func TestUDPDirectRefusedPerFamily(t *testing.T) {
	ns, fd, port := setup(t)
	var pc6 *capture.PktConn
	var other net.PacketConn
	if err := ns.Do(func() (err error) {
		if pc6, err = capture.ListenPkt(context.Background(), "udp6", "[::]:0"); err != nil {
			return err
		}
		other, err = net.ListenPacket("udp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(pc6.LocalAddr().(*net.UDPAddr).Port)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	udpEcho(t, pc6, "dns6")
	done := make(chan struct{})
	t.Cleanup(func() { other.Close(); <-done })
	go func() { // the other program: answers "other: DATA"
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := other.ReadFrom(buf)
			if err != nil {
				return
			}
			other.WriteTo(append([]byte("other: "), buf[:n]...), from)
		}
	}()
	r, err := capture.Install(capture.Config{Port: port, Port6: port, NetNSFd: fd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Remove() })
	p := uint16(pc6.LocalAddr().(*net.UDPAddr).Port)
	if _, err := r.SyncUDP(map[netip.AddrPort]uint16{netip.MustParseAddrPort("[fd00::10]:53"): p}); err != nil {
		t.Fatal(err)
	}
	direct4 := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(p)))
	if got, err := udpCall(t, ns, direct4, "v4"); err != nil || got != "other: v4" {
		t.Fatalf("IPv4 to another program's port %s, the number of an IPv6 capture socket: %q, %v", direct4, got, err)
	}
	direct6 := net.JoinHostPort("::1", strconv.Itoa(int(p)))
	if got, err := udpCall(t, ns, direct6, "v6"); err == nil {
		t.Fatalf("a datagram sent straight to the IPv6 capture socket %s was answered: %q", direct6, got)
	}
}
