package meshdns_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/fogmesh/fogmesh/internal/meshdns"
	"github.com/miekg/dns"
)

// TestHeadless queries a headless service (no virtual IP) over UDP and
// TCP: its names answer with its instances' addresses, a named instance
// has a name of its own, and SRV records target the instances.
func TestHeadless(t *testing.T) {
	r := staticResolver{
		"demo/db": {
			// A VIP the record may still carry is never handed out.
			V4:       netip.MustParseAddr("10.96.0.99"),
			Headless: true,
			Ports:    []meshdns.Port{{Name: "pg", Protocol: "tcp", Port: 5432}, {Name: "metrics", Protocol: "http", Port: 9187}},
			Endpoints: []meshdns.Endpoint{
				{Addr: netip.MustParseAddr("10.1.0.5"), Hostname: "db-0"},
				{Addr: netip.MustParseAddr("10.1.0.6")},
				{Addr: netip.MustParseAddr("fd01::7"), Hostname: "db-2"},
			},
		},
		"demo/empty": {Headless: true, Ports: []meshdns.Port{{Name: "pg", Protocol: "tcp", Port: 5432}}},
		"demo/plain": {V4: netip.MustParseAddr("10.96.0.98"), Ports: []meshdns.Port{{Name: "pg", Protocol: "tcp", Port: 5432}}},
	}
	s, err := meshdns.New(meshdns.Config{Addr: "127.0.0.1:0", Upstreams: []string{startClusterUpstream(t)}}, r)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	t.Cleanup(func() {
		s.Close()
		<-done
	})
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		answer []string
		extra  []string
	}{
		{name: "A lists the instances", qname: "db.demo.svc.cluster.local.", qtype: dns.TypeA, answer: []string{"A 10.1.0.5", "A 10.1.0.6"}},
		{name: "AAAA lists the instances", qname: "db.demo.svc.cluster.local.", qtype: dns.TypeAAAA, answer: []string{"AAAA fd01::7"}},
		{name: "mesh name too", qname: "db.demo.mesh.", qtype: dns.TypeA, answer: []string{"A 10.1.0.5", "A 10.1.0.6"}},
		{name: "instance by hostname", qname: "db-0.db.demo.svc.cluster.local.", qtype: dns.TypeA, answer: []string{"A 10.1.0.5"}},
		{name: "instance by hostname, mesh", qname: "DB-2.db.demo.mesh.", qtype: dns.TypeAAAA, answer: []string{"AAAA fd01::7"}},
		{name: "instance NODATA", qname: "db-2.db.demo.svc.cluster.local.", qtype: dns.TypeA},
		{name: "unknown hostname forwarded", qname: "db-9.db.demo.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "unknown hostname in the mesh", qname: "db-9.db.demo.mesh.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "hostname under a service with a VIP", qname: "db-0.plain.demo.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{
			name: "SRV per port and instance", qname: "_pg._tcp.db.demo.svc.cluster.local.", qtype: dns.TypeSRV,
			answer: []string{"SRV 0 1 5432 db-0.db.demo.svc.cluster.local.", "SRV 0 1 5432 db.demo.svc.cluster.local.", "SRV 0 1 5432 db-2.db.demo.svc.cluster.local."},
			extra:  []string{"A 10.1.0.5", "A 10.1.0.6", "AAAA fd01::7"},
		},
		{
			name: "SRV of all ports", qname: "db.demo.mesh.", qtype: dns.TypeSRV,
			answer: []string{
				"SRV 0 1 5432 db-0.db.demo.mesh.", "SRV 0 1 9187 db-0.db.demo.mesh.",
				"SRV 0 1 5432 db.demo.mesh.", "SRV 0 1 9187 db.demo.mesh.",
				"SRV 0 1 5432 db-2.db.demo.mesh.", "SRV 0 1 9187 db-2.db.demo.mesh.",
			},
			extra: []string{"A 10.1.0.5", "A 10.1.0.6", "AAAA fd01::7"},
		},
		{name: "no ready instance: NODATA", qname: "empty.demo.svc.cluster.local.", qtype: dns.TypeA},
		{name: "no ready instance: no SRV", qname: "_pg._tcp.empty.demo.svc.cluster.local.", qtype: dns.TypeSRV},
		{name: "a service with a VIP is unchanged", qname: "plain.demo.svc.cluster.local.", qtype: dns.TypeA, answer: []string{"A 10.96.0.98"}},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				m := query(t, network, s.Addr(), tt.qname, tt.qtype)
				if m.Rcode != tt.rcode {
					t.Fatalf("rcode %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.rcode])
				}
				if got := rrStrings(m.Answer); !slices.Equal(got, tt.answer) {
					t.Errorf("answer %q, want %q", got, tt.answer)
				}
				if got := rrStrings(m.Extra); !slices.Equal(got, tt.extra) {
					t.Errorf("extra %q, want %q", got, tt.extra)
				}
			})
		}
	}
}
