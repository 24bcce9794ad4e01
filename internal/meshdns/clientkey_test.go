package meshdns_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/meshdns"
)

// TestClientKeyIPv6Prefix: the forwarding limits key an IPv6 client by its
// /64 (the pods of a node share one; a host can rotate through its own),
// an IPv4 one (mapped or not) by its address; UDP and TCP alike.
func TestClientKeyIPv6Prefix(t *testing.T) {
	key := func(s string, tcp bool) netip.Addr {
		ap := netip.AddrPortFrom(netip.MustParseAddr(s), 53000)
		if tcp {
			return meshdns.ClientKeyForTest(net.TCPAddrFromAddrPort(ap))
		}
		return meshdns.ClientKeyForTest(net.UDPAddrFromAddrPort(ap))
	}
	for _, tcp := range []bool{false, true} {
		a, b := key("2001:db8:1:2::1", tcp), key("2001:db8:1:2:ffff:eeee:dddd:cccc", tcp)
		if a != b {
			t.Errorf("tcp=%v: two addresses of one /64 have keys %v and %v", tcp, a, b)
		}
		if want := netip.MustParseAddr("2001:db8:1:2::"); a != want {
			t.Errorf("tcp=%v: key %v, want the /64 %v", tcp, a, want)
		}
		if c := key("2001:db8:1:3::1", tcp); c == a {
			t.Errorf("tcp=%v: another /64 has the same key %v", tcp, c)
		}
		if k := key("fe80::1%eth0", tcp); k != netip.MustParseAddr("fe80::") {
			t.Errorf("tcp=%v: link-local key %v, want fe80:: without a zone", tcp, k)
		}
		if k, want := key("10.1.2.3", tcp), netip.MustParseAddr("10.1.2.3"); k != want {
			t.Errorf("tcp=%v: IPv4 key %v, want %v", tcp, k, want)
		}
		if k, want := key("::ffff:10.1.2.3", tcp), netip.MustParseAddr("10.1.2.3"); k != want {
			t.Errorf("tcp=%v: IPv4-mapped key %v, want %v", tcp, k, want)
		}
		if k, want := key("10.1.2.4", tcp), netip.MustParseAddr("10.1.2.4"); k != want {
			t.Errorf("tcp=%v: IPv4 neighbour key %v, want its own address %v", tcp, k, want)
		}
	}
}

// TestClientLimitsShareIPv6Prefix: two IPv6 senders in one /64 draw on one
// bucket, so rotating through the /64 escapes nothing; a sender in another
// /64 has its own.
func TestClientLimitsShareIPv6Prefix(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := meshdns.NewClientLimitsForTest(1, 2, 16, func() time.Time { return now })
	from := func(s string) netip.Addr {
		return meshdns.ClientKeyForTest(&net.UDPAddr{IP: net.ParseIP(s), Port: 5353})
	}
	if !l.Allow(from("2001:db8:5::1")) || !l.Allow(from("2001:db8:5::2")) {
		t.Fatal("the /64's first two queries refused, want its burst of 2")
	}
	if l.Allow(from("2001:db8:5::3")) || l.Allow(from("2001:db8:5:0:1:2:3:4")) {
		t.Fatal("a third address of the same /64 allowed past the /64's burst")
	}
	if !l.Allow(from("2001:db8:6::1")) {
		t.Fatal("another /64 refused: it has a bucket of its own")
	}
	if l.Len() != 2 {
		t.Fatalf("%d clients tracked, want 2 (one per /64)", l.Len())
	}
}

// TestForwardLimitKeysIPv6Loopback: a query from ::1 over real sockets is
// counted against ::/64, the key the limits use.
func TestForwardLimitKeysIPv6Loopback(t *testing.T) {
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		ln.Close()
	}
	s := startServer(t, meshdns.Config{Addr: "[::1]:0", Upstreams: []string{startUpstream(t)}}, nil)
	if r := queryFrom(t, "udp", "::1", s.Addr(), "example.test."); len(r.Answer) != 1 {
		t.Fatalf("forwarded query from ::1: %v, want the upstream's answer", r)
	}
	if !s.ForwardClientTrackedForTest(netip.MustParseAddr("::")) {
		t.Fatal("a query from ::1 is not counted against ::/64")
	}
	if s.ForwardClientTrackedForTest(netip.MustParseAddr("::1")) {
		t.Fatal("a query from ::1 is counted against ::1 itself, not its /64")
	}
}
