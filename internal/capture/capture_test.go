package capture_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/fogmesh/fogmesh/internal/capture"
	"github.com/fogmesh/fogmesh/internal/netlab"
)

// origServer accepts on ln and writes each connection's original
// destination ("orig 10.96.0.10:80", or "direct" when not redirected) and
// a name, then closes it.
func origServer(t *testing.T, ln net.Listener, name string) {
	t.Helper()
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			orig, err := capture.Redirected(c)
			switch {
			case errors.Is(err, capture.ErrNotRedirected):
				fmt.Fprintf(c, "%s direct\n", name)
			case err != nil:
				fmt.Fprintf(c, "%s error %v\n", name, err)
			default:
				fmt.Fprintf(c, "%s orig %s\n", name, orig)
			}
			c.Close()
		}
	}()
}

func call(t *testing.T, ns *netlab.Netns, addr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %v", addr, err)
	}
	return line[:len(line)-1]
}

func setup(t *testing.T) (*netlab.Netns, int, uint16) {
	ns := netlab.NewNetns(t, "cap")
	f, err := ns.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	ln, err := ns.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	origServer(t, ln, "agent")
	return ns, int(f.Fd()), uint16(ln.Addr().(*net.TCPAddr).Port)
}

// TestRedirect: a ClusterIP:port in the set reaches the capture listener,
// which reads the original destination back; a direct connection to the
// listener is told apart.
func TestRedirect(t *testing.T) {
	ns, fd, port := setup(t)
	r, err := capture.Install(capture.Config{Port: port, NetNSFd: fd})
	if err != nil {
		t.Fatal(err)
	}
	dests := []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:80"), netip.MustParseAddrPort("10.96.0.11:5432")}
	if skipped, err := r.Sync(append(dests, netip.MustParseAddrPort("[fd00::10]:80"))); err != nil || len(skipped) != 1 {
		t.Fatalf("Sync: skipped %v, %v", skipped, err)
	}
	for _, d := range dests {
		if got, want := call(t, ns, d.String()), "agent orig "+d.String(); got != want {
			t.Errorf("call %s: %q, want %q", d, got, want)
		}
	}
	if got := call(t, ns, fmt.Sprintf("%s:%d", netlab.NodeAddr, port)); got != "agent direct" {
		t.Errorf("direct call to the listener: %q", got)
	}
	got, present, err := capture.Destinations(fd)
	if err != nil || !present || !slices.Equal(got, dests) {
		t.Fatalf("Destinations: %v %v %v, want %v", got, present, err, dests)
	}
	if err := r.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := r.Remove(); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if _, present, err := capture.Destinations(fd); present || err != nil {
		t.Fatalf("table still there after Remove (%v)", err)
	}
}

// TestInstallReplacesLeftovers: a run that died without Remove leaves its
// table; the next Install starts from an empty set, with one table.
func TestInstallReplacesLeftovers(t *testing.T) {
	_, fd, port := setup(t)
	crashed, err := capture.Install(capture.Config{Port: port, NetNSFd: fd})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := crashed.Sync([]netip.AddrPort{netip.MustParseAddrPort("10.96.0.99:80")}); err != nil {
		t.Fatal(err)
	}
	// crashed is never removed: its table stays, as after SIGKILL.
	r, err := capture.Install(capture.Config{Port: port, NetNSFd: fd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Remove() })
	got, present, err := capture.Destinations(fd)
	if err != nil || !present || len(got) != 0 {
		t.Fatalf("after a new Install: %v %v %v, want an empty set", got, present, err)
	}
	conn, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		t.Fatal(err)
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range chains {
		want := 2 // TCP and UDP, IPv4
		if ch.Name == "input" {
			want = 1 // drop UDP to the agent's ports not redirected there (IPv4)
		}
		rules, err := conn.GetRules(ch.Table, ch)
		if err != nil || len(rules) != want {
			t.Errorf("chain %s: %d rules (%v), want %d", ch.Name, len(rules), err, want)
		}
	}
	if len(chains) != 3 {
		t.Errorf("%d inet chains, want output, prerouting and input", len(chains))
	}
}

// TestBeforeKubeProxy: a kube-proxy-like table that DNATs the same
// ClusterIP:port at priority dstnat, installed after ours, does not take
// the captured connection; a ClusterIP:port we do not capture is left to
// it.
func TestBeforeKubeProxy(t *testing.T) {
	ns, fd, port := setup(t)
	kln, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	origServer(t, kln, "kube-proxy")
	r, err := capture.Install(capture.Config{Port: port, NetNSFd: fd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Remove() })
	if _, err := r.Sync([]netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:80")}); err != nil {
		t.Fatal(err)
	}
	kubeProxy(t, fd, uint16(kln.Addr().(*net.TCPAddr).Port))
	if got := call(t, ns, "10.96.0.10:80"); got != "agent orig 10.96.0.10:80" {
		t.Errorf("captured ClusterIP: %q, want the agent", got)
	}
	if got := call(t, ns, "10.96.0.10:81"); got != "kube-proxy orig 10.96.0.10:81" {
		t.Errorf("ClusterIP:port not captured: %q, want kube-proxy", got)
	}
	// Re-installing ours after kube-proxy's changes nothing either.
	r2, err := capture.Install(capture.Config{Port: port, NetNSFd: fd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r2.Remove() })
	if _, err := r2.Sync([]netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:80")}); err != nil {
		t.Fatal(err)
	}
	if got := call(t, ns, "10.96.0.10:80"); got != "agent orig 10.96.0.10:80" {
		t.Errorf("after re-install: %q", got)
	}
}

// kubeProxy installs what kube-proxy's nftables mode does for one service
// with every port: table ip kube-proxy-test, nat output chain at priority
// dstnat, ip daddr 10.96.0.10 tcp dnat to 127.0.0.1:port.
func kubeProxy(t *testing.T, fd int, port uint16) {
	t.Helper()
	conn, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		t.Fatal(err)
	}
	tbl := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "kube-proxy-test"})
	ch := conn.AddChain(&nftables.Chain{Name: "nat-output", Table: tbl, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
	conn.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{10, 96, 0, 10}},
		&expr.Immediate{Register: 1, Data: []byte{127, 0, 0, 1}},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}})
	if err := conn.Flush(); err != nil {
		t.Fatalf("kube-proxy-like table: %v", err)
	}
}

// TestRedirect6: IPv6 ClusterIPs are captured with Port6 and read back
// with IP6T_SO_ORIGINAL_DST.
func TestRedirect6(t *testing.T) {
	ns, fd, port := setup(t)
	ln6, err := ns.Listen("tcp6", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	origServer(t, ln6, "agent6")
	r, err := capture.Install(capture.Config{Port: port, Port6: uint16(ln6.Addr().(*net.TCPAddr).Port), NetNSFd: fd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Remove() })
	dests := []netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:80"), netip.MustParseAddrPort("[fd00::10]:80")}
	if skipped, err := r.Sync(dests); err != nil || len(skipped) != 0 {
		t.Fatalf("Sync: skipped %v, %v", skipped, err)
	}
	if got := call(t, ns, "[fd00::10]:80"); got != "agent6 orig [fd00::10]:80" {
		t.Errorf("call [fd00::10]:80: %q", got)
	}
	if got := call(t, ns, "10.96.0.10:80"); got != "agent orig 10.96.0.10:80" {
		t.Errorf("call 10.96.0.10:80: %q", got)
	}
	if got, _, err := capture.Destinations(fd); err != nil || !slices.Equal(got, dests) {
		t.Errorf("Destinations %v (%v), want %v", got, err, dests)
	}
}

func FuzzParseSockaddrIn6(f *testing.F) {
	f.Add(append([]byte{10, 0, 0, 80, 0, 0, 0, 0}, netip.MustParseAddr("fd00::10").AsSlice()...))
	f.Fuzz(func(t *testing.T, b []byte) {
		ap, err := capture.ParseSockaddrIn6(b)
		if err != nil {
			return
		}
		if ap.Addr().As16() != [16]byte(b[8:24]) || ap.Port() != uint16(b[2])<<8|uint16(b[3]) {
			t.Fatalf("%x parsed as %v", b, ap)
		}
	})
}

func FuzzParseSockaddrIn(f *testing.F) {
	f.Add([]byte{2, 0, 0, 80, 10, 96, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{10, 0, 0, 80})
	f.Fuzz(func(t *testing.T, b []byte) {
		ap, err := capture.ParseSockaddrIn(b)
		if err != nil {
			return
		}
		if !ap.Addr().Is4() || ap.Addr().As4() != [4]byte(b[4:8]) || ap.Port() != uint16(b[2])<<8|uint16(b[3]) {
			t.Fatalf("%x parsed as %v", b, ap)
		}
	})
}

// TestRedirectFromPod: a connection from another namespace (a pod behind
// a veth) to a captured ClusterIP is redirected in the node's prerouting
// chain to the listener, which sees its original destination.
func TestRedirectFromPod(t *testing.T) {
	node, fd, port := setup(t)
	pod := netlab.NewPod(t, node, "pod")
	r, err := capture.Install(capture.Config{Port: port, NetNSFd: fd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Remove() })
	if _, err := r.Sync([]netip.AddrPort{netip.MustParseAddrPort("10.96.0.10:80")}); err != nil {
		t.Fatal(err)
	}
	if got := call(t, pod, "10.96.0.10:80"); got != "agent orig 10.96.0.10:80" {
		t.Errorf("call from the pod: %q", got)
	}
}
