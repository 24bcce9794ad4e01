package meshdns_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fogmesh/fogmesh/internal/meshdns"
)

// TestUnavailableVIPIsNotHandedOut (issue 16): a service whose virtual IP
// this node cannot serve (another process holds it) is answered SERVFAIL
// with the reason as an extended DNS error, never with the address whose
// connections would reach the other process. Other names still answer.
func TestUnavailableVIPIsNotHandedOut(t *testing.T) {
	r := staticResolver{
		"demo/held": {V4: netip.MustParseAddr("127.28.0.1"), Ports: []meshdns.Port{{Name: "http", Protocol: "http", Port: 8080}},
			Unavailable: "127.28.0.1:8080 is held by another process"},
		"demo/fine": {V4: netip.MustParseAddr("127.28.0.2"), Ports: []meshdns.Port{{Name: "http", Protocol: "http", Port: 8080}}},
	}
	s, err := meshdns.New(meshdns.Config{Addr: "127.0.0.1:0", Upstreams: []string{}}, r)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	defer func() { s.Close(); <-done }()

	for _, qt := range []uint16{dns.TypeA, dns.TypeSRV} {
		name := "held.demo.mesh."
		if qt == dns.TypeSRV {
			name = "_http._tcp.held.demo.mesh."
		}
		m := new(dns.Msg)
		m.SetQuestion(name, qt)
		m.SetEdns0(1232, false)
		c := &dns.Client{Timeout: 5 * time.Second}
		resp, _, err := c.Exchange(m, s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if resp.Rcode != dns.RcodeServerFailure || len(resp.Answer) != 0 || len(resp.Extra) == 0 && resp.IsEdns0() == nil {
			t.Fatalf("%s: rcode %s answer %v, want SERVFAIL and no address", name, dns.RcodeToString[resp.Rcode], resp.Answer)
		}
		var why string
		for _, o := range resp.IsEdns0().Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok {
				why = e.ExtraText
			}
		}
		if !strings.Contains(why, "held by another process") {
			t.Fatalf("%s: extended error %q, want the reason", name, why)
		}
	}
	if resp := query(t, "udp", s.Addr(), "fine.demo.mesh.", dns.TypeA); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Fatalf("fine.demo.mesh: %v", resp)
	}
}
