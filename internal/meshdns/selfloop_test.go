package meshdns_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	"github.com/fogmesh/fogmesh/internal/meshdns"
	"github.com/miekg/dns"
)

// TestNoForwardToSelfOnWildcard: a server listening on the wildcard
// address is also reachable at 127.0.0.1 on its port; an upstream naming
// that address (resolv.conf's "nameserver 127.0.0.1" on a node whose
// agent listens on 0.0.0.0:53) is the server itself and is dropped, as is
// one naming the bound address exactly. Otherwise one query for a name
// outside the zone forwards to itself until every forward slot is taken.
func TestNoForwardToSelfOnWildcard(t *testing.T) {
	// The upstream must name the server's own port, known only once
	// bound: learn a free port, then bind the server to it on 0.0.0.0.
	set := metrics.NewSet()
	var s *meshdns.Server
	for attempt := 1; s == nil; attempt++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		pc.Close()
		cfg := meshdns.Config{Addr: fmt.Sprintf("0.0.0.0:%d", port), Metrics: set, Upstreams: []string{
			fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("localhost:%d", port), fmt.Sprintf("[::1]:%d", port),
		}}
		s, err = meshdns.New(cfg, testServices)
		if err != nil && attempt == 5 {
			t.Fatalf("New: %v", err) // else the port was taken in between
		}
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	t.Cleanup(func() { s.Close(); <-done })

	_, port, _ := net.SplitHostPort(s.Addr())
	r := query(t, "udp", net.JoinHostPort("127.0.0.1", port), "example.test.", dns.TypeA)
	forwards := set.GetOrCreateCounter(`fogmesh_dns_queries_total{result="forward"}`).Get()
	servfails := set.GetOrCreateCounter(`fogmesh_dns_queries_total{result="servfail"}`).Get()
	t.Logf("rcode %s; the server counted %d forwards and %d SERVFAILs for one query", dns.RcodeToString[r.Rcode], forwards, servfails)
	if r.Rcode != dns.RcodeServerFailure || forwards != 0 || servfails != 1 {
		t.Fatalf("one query outside the zone: rcode %s, %d forwards, %d SERVFAILs; want SERVFAIL without forwarding (no upstream but itself)",
			dns.RcodeToString[r.Rcode], forwards, servfails)
	}
}

func TestIsSelf(t *testing.T) {
	local := []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::7")}
	for _, tc := range []struct {
		upstream, bound string
		want            bool
	}{
		{"127.0.0.1:53", "127.0.0.1:53", true},
		{"localhost:53", "127.0.0.1:53", true},
		{"127.0.0.53:53", "127.0.0.1:53", false}, // systemd-resolved's stub
		{"127.0.0.1:5353", "127.0.0.1:53", false},
		{"192.0.2.7:53", "127.0.0.1:53", false},
		{"127.0.0.1:53", "0.0.0.0:53", true},
		{"127.0.0.53:53", "0.0.0.0:53", true}, // all of 127/8 reaches a wildcard socket
		{"[::1]:53", "0.0.0.0:53", true},
		{"[::ffff:127.0.0.1]:53", "[::]:53", true},
		{"0.0.0.0:53", "0.0.0.0:53", true},
		{"192.0.2.7:53", "0.0.0.0:53", true},
		{"[2001:db8::7]:53", "[::]:53", true},
		{"192.0.2.8:53", "0.0.0.0:53", false},
		{"192.0.2.7:54", "0.0.0.0:53", false},
		{"dns.example:53", "0.0.0.0:53", false},
		{"[fe80::1%eth0]:53", "127.0.0.1:53", false},
	} {
		if got := meshdns.IsSelfForTest(tc.upstream, tc.bound, local); got != tc.want {
			t.Errorf("isSelf(%s, bound %s) = %v, want %v", tc.upstream, tc.bound, got, tc.want)
		}
	}
}
