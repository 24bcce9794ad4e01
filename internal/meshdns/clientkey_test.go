package meshdns_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/meshdns"
)

// TestClientKeyPerAddress: the forwarding limits key a client by its own
// address, IPv6 ones too (the pods of a node share its /64, each with an
// address of its own), without a zone, an IPv4-mapped one as IPv4; UDP
// and TCP alike.
func TestClientKeyPerAddress(t *testing.T) {
	key := func(s string, tcp bool) netip.Addr {
		ap := netip.AddrPortFrom(netip.MustParseAddr(s), 53000)
		if tcp {
			return meshdns.ClientKeyForTest(net.TCPAddrFromAddrPort(ap))
		}
		return meshdns.ClientKeyForTest(net.UDPAddrFromAddrPort(ap))
	}
	for _, tcp := range []bool{false, true} {
		for in, want := range map[string]string{
			"2001:db8:1:2::1":                  "2001:db8:1:2::1",
			"2001:db8:1:2:ffff:eeee:dddd:cccc": "2001:db8:1:2:ffff:eeee:dddd:cccc",
			"fe80::1%eth0":                     "fe80::1",
			"10.1.2.3":                         "10.1.2.3",
			"::ffff:10.1.2.3":                  "10.1.2.3",
		} {
			if k := key(in, tcp); k != netip.MustParseAddr(want) {
				t.Errorf("tcp=%v: key of %s is %v, want %s", tcp, in, k, want)
			}
		}
	}
}

// TestClientLimitsPerIPv6Address: a pod that spent its burst does not
// spend its neighbour's, though both are in the node's /64.
func TestClientLimitsPerIPv6Address(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := meshdns.NewClientLimitsForTest(1, 2, 16, func() time.Time { return now })
	from := func(s string) netip.Addr {
		return meshdns.ClientKeyForTest(&net.UDPAddr{IP: net.ParseIP(s), Port: 5353})
	}
	if !l.Allow(from("2001:db8:5::1")) || !l.Allow(from("2001:db8:5::1")) {
		t.Fatal("a pod's first two queries refused, want its burst of 2")
	}
	if l.Allow(from("2001:db8:5::1")) {
		t.Fatal("a pod allowed past its burst")
	}
	if !l.Allow(from("2001:db8:5::2")) {
		t.Fatal("its neighbour in the node's /64 refused: it has a bucket of its own")
	}
	if l.Len() != 2 {
		t.Fatalf("%d clients tracked, want 2 (one per address)", l.Len())
	}
}

// TestForwardLimitKeysIPv6Loopback: a query from ::1 over real sockets is
// counted against ::1, the key the limits use.
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
	if !s.ForwardClientTrackedForTest(netip.MustParseAddr("::1")) {
		t.Fatal("a query from ::1 is not counted against ::1")
	}
}
