package meshdns_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/meshdns"
	"github.com/miekg/dns"
)

// serve runs a server for cfg and r until the test ends; setup, if not nil,
// runs between New and Serve.
func serve(t *testing.T, cfg meshdns.Config, r meshdns.Resolver, setup func(*meshdns.Server)) *meshdns.Server {
	t.Helper()
	s, err := meshdns.New(cfg, r)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if setup != nil {
		setup(s)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

// manyAddrs is a headless service with n IPv4 instances: its A answer is
// about 16 bytes per instance.
func manyAddrs(n int) meshdns.Record {
	rec := meshdns.Record{Headless: true, Ports: []meshdns.Port{{Name: "http", Protocol: "http", Port: 80}}}
	for i := range n {
		rec.Endpoints = append(rec.Endpoints, meshdns.Endpoint{Addr: netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)})})
	}
	return rec
}

// TestUDPReplyCappedAtAdvertisedSize: a UDP reply is never larger than the
// 1232 bytes the server advertises, whatever payload size the query's OPT
// claims, so a small spoofed query cannot draw a reply of tens of
// kilobytes (amplification) or one that fragments. The client is told to
// retry over TCP (TC), where it gets everything.
func TestUDPReplyCappedAtAdvertisedSize(t *testing.T) {
	s := serve(t, meshdns.Config{Addr: "127.0.0.1:0", Upstreams: []string{}}, staticResolver{"demo/many": manyAddrs(500)}, nil)
	conn, err := net.Dial("udp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, tc := range []struct {
		name    string
		bufsize uint16 // 0: no OPT
		max     int
	}{
		{"no EDNS", 0, 512},
		{"EDNS 1232", 1232, 1232},
		{"EDNS 4096", 4096, 1232},
		{"EDNS 65535", 65535, 1232},
	} {
		m := new(dns.Msg)
		m.SetQuestion("many.demo.mesh.", dns.TypeA)
		if tc.bufsize > 0 {
			m.SetEdns0(tc.bufsize, false)
		}
		q, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(q); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 65536)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("%s: read reply: %v", tc.name, err)
		}
		var r dns.Msg
		if err := r.Unpack(buf[:n]); err != nil {
			t.Fatalf("%s: reply does not unpack: %v", tc.name, err)
		}
		t.Logf("%s: query %d bytes, reply %d bytes (%.0fx), %d answers, tc %v", tc.name, len(q), n, float64(n)/float64(len(q)), len(r.Answer), r.Truncated)
		if n > tc.max {
			t.Errorf("%s: UDP reply of %d bytes, want at most %d", tc.name, n, tc.max)
		}
		if !r.Truncated {
			t.Errorf("%s: a cut reply without TC", tc.name)
		}
	}
	if r := query(t, "tcp", s.Addr(), "many.demo.mesh.", dns.TypeA); len(r.Answer) != 500 || r.Truncated {
		t.Fatalf("TCP: %d answers, tc %v; want all 500", len(r.Answer), r.Truncated)
	}
}
