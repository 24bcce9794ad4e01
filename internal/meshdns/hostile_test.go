package meshdns_test

import (
	"context"
	"net"
	"net/netip"
	"strings"
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
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
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

// rawExchange sends packet to addr over network (TCP with its length
// prefix) and returns the reply, or nil if none came within a second.
func rawExchange(t *testing.T, network, addr string, packet []byte) *dns.Msg {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	co := &dns.Conn{Conn: c}
	if _, err := co.Write(packet); err != nil {
		t.Fatalf("%s write: %v", network, err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	r, err := co.ReadMsg()
	if err != nil {
		return nil
	}
	return r
}

// TestHostileQueries: odd but well-formed or almost well-formed queries, over
// UDP and TCP, get a clean answer or none, and the server answers a normal
// query afterwards.
func TestHostileQueries(t *testing.T) {
	s := serve(t, meshdns.Config{Addr: "127.0.0.1:0", Upstreams: []string{}}, testServices, nil)
	pack := func(name string, qtype, qclass uint16) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Question[0].Qclass = qclass
		b, err := m.Pack()
		if err != nil {
			t.Fatalf("pack %s: %v", name, err)
		}
		return b
	}
	// A 255-byte name (the longest there is) inside the zone.
	long := strings.Repeat(strings.Repeat("a", 61)+".", 3) + strings.Repeat("b", 57) + ".demo.mesh."
	if len(long) != 254 { // presentation form: 255 on the wire
		t.Fatalf("long name is %d bytes", len(long))
	}
	// A question name that is a compression pointer to itself.
	loop := pack("hello.demo.mesh.", dns.TypeA, dns.ClassINET)[:12]
	loop = append(loop, 0xc0, 12, 0, 1, 0, 1)
	// A pointer forward, past the end of the packet.
	past := append(append([]byte(nil), loop[:12]...), 0xc0, 200, 0, 1, 0, 1)

	for _, tc := range []struct {
		name   string
		packet []byte
		rcode  int // -1: no reply, or FORMERR
	}{
		{"255-byte name", pack(long, dns.TypeA, dns.ClassINET), dns.RcodeNameError},
		{"compression loop", loop, -1},
		{"pointer past the end", past, -1},
		{"AXFR of the zone", pack("mesh.", dns.TypeAXFR, dns.ClassINET), dns.RcodeSuccess},
		{"IXFR of a service", pack("hello.demo.mesh.", dns.TypeIXFR, dns.ClassINET), dns.RcodeSuccess},
		{"ANY class ANY", pack("hello.demo.mesh.", dns.TypeANY, dns.ClassANY), dns.RcodeSuccess},
		{"CHAOS class", pack("hello.demo.mesh.", dns.TypeTXT, dns.ClassCHAOS), dns.RcodeRefused},
		{"unknown service", pack("nope.demo.mesh.", dns.TypeA, dns.ClassINET), dns.RcodeNameError},
		{"too many labels", pack("a.b.c.d.e.hello.demo.mesh.", dns.TypeA, dns.ClassINET), dns.RcodeNameError},
		{"escaped bytes", pack(`hel\.lo.demo.mesh.`, dns.TypeA, dns.ClassINET), dns.RcodeNameError},
		{"outside the zone, no upstream", pack("example.test.", dns.TypeA, dns.ClassINET), dns.RcodeServerFailure},
	} {
		for _, network := range []string{"udp", "tcp"} {
			r := rawExchange(t, network, s.Addr(), tc.packet)
			switch {
			case tc.rcode == -1:
				if r != nil && r.Rcode != dns.RcodeFormatError {
					t.Errorf("%s/%s: %s, want no reply or FORMERR", tc.name, network, dns.RcodeToString[r.Rcode])
				}
			case r == nil:
				t.Errorf("%s/%s: no reply, want %s", tc.name, network, dns.RcodeToString[tc.rcode])
			case r.Rcode != tc.rcode:
				t.Errorf("%s/%s: %s, want %s", tc.name, network, dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
			case tc.rcode == dns.RcodeSuccess && strings.Contains(tc.name, "XFR") && len(r.Answer) != 0:
				t.Errorf("%s/%s: a zone transfer answered %v", tc.name, network, r.Answer)
			}
		}
	}
	// Case does not matter, and the reply keeps the question's spelling
	// (DNS 0x20). On the wire every name ends in the root: a name
	// without its trailing dot is the client's to complete.
	for _, name := range []string{"hello.demo.mesh", "HELLO.Demo.MESH.", "hello.demo.mesh."} {
		r := query(t, "udp", s.Addr(), dns.Fqdn(name), dns.TypeA)
		if len(r.Answer) != 1 || r.Answer[0].Header().Name != dns.Fqdn(name) {
			t.Errorf("%s: %v", name, r.Answer)
		}
	}
}
