package meshdns_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/meshdns"
	"github.com/miekg/dns"
)

// Bugs a review found (session 19): each test's comment says what went
// wrong before its fix, and each fails without it.

func exchangeOrFail(t *testing.T, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("query: %v", err)
	}
	return r
}

// TestEDNSVersion: RFC 6891 §6.1.3: a responder that does not
// implement the VERSION of the request MUST answer BADVERS.
func TestEDNSVersion(t *testing.T) {
	s := startServer(t, meshdns.Config{}, nil)
	m := new(dns.Msg)
	m.SetQuestion("hello.demo.mesh.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().SetVersion(1)
	r := exchangeOrFail(t, s.Addr(), m)
	if r.Rcode != dns.RcodeBadVers || len(r.Answer) != 0 {
		t.Fatalf("EDNS version 1 query: rcode %s (%d), %d answers; want BADVERS and no answer\n%v", dns.RcodeToString[r.Rcode], r.Rcode, len(r.Answer), r)
	}
}

// TestTwoOPT: RFC 6891 §6.1.1: a query with more than one OPT RR
// MUST get FORMERR.
func TestTwoOPT(t *testing.T) {
	s := startServer(t, meshdns.Config{}, nil)
	m := new(dns.Msg)
	m.SetQuestion("hello.demo.mesh.", dns.TypeA)
	m.SetEdns0(1232, false)
	m.SetEdns0(4096, false) // SetEdns0 appends a second OPT
	if n := len(m.Extra); n != 2 {
		t.Fatalf("built %d OPT RRs", n)
	}
	r := exchangeOrFail(t, s.Addr(), m)
	if r.Rcode != dns.RcodeFormatError {
		t.Fatalf("query with two OPT RRs: rcode %s, %d answers; want FORMERR\n%v", dns.RcodeToString[r.Rcode], len(r.Answer), r)
	}
}

// TestEmptyNonTerminal: _tcp.hello.demo.mesh is an empty
// non-terminal (_http._tcp.hello.demo.mesh exists below it), so it exists
// and must get NODATA, not NXDOMAIN (RFC 1034 §4.3.2, RFC 8020: NXDOMAIN
// means nothing exists at or below the name).
func TestEmptyNonTerminal(t *testing.T) {
	s := startServer(t, meshdns.Config{}, nil)
	if r := query(t, "udp", s.Addr(), "_http._tcp.hello.demo.mesh.", dns.TypeSRV); r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		t.Fatalf("_http._tcp.hello.demo.mesh SRV: %s", dns.RcodeToString[r.Rcode])
	}
	for _, name := range []string{"_tcp.hello.demo.mesh.", "_tcp.web.mesh."} {
		if r := query(t, "udp", s.Addr(), name, dns.TypeSRV); r.Rcode != dns.RcodeSuccess {
			t.Errorf("%s SRV: %s, want NOERROR/NODATA (names exist below it)", name, dns.RcodeToString[r.Rcode])
		}
	}
}

// TestANY: an ANY query at a name that has records must not get an
// empty NOERROR (which says the name owns no records at all): RFC 1034
// §4.3.2 answers all of them, RFC 8482 §4 allows a subset or a
// synthesized HINFO, never nothing.
func TestANY(t *testing.T) {
	s := startServer(t, meshdns.Config{}, nil)
	for _, name := range []string{"hello.demo.mesh.", "mesh."} {
		r := query(t, "udp", s.Addr(), name, dns.TypeANY)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
			t.Errorf("%s ANY: %s with %d answers; want some of its records", name, dns.RcodeToString[r.Rcode], len(r.Answer))
		}
	}
}

// TestTCPHugeAnswer: over TCP the reply is not truncated; a headless
// service with a few hundred named instances (400 here, 3 ports) has an
// SRV answer that, uncompressed (the handler never sets Compress; only
// Truncate does, on UDP), exceeds the 65535 bytes a TCP message can hold:
// WriteMsg fails, so the TCP client
// gets no reply at all (RFC 7766 §6.2.1: a server answers over TCP, with
// TC set if even that cannot hold it).
func TestTCPHugeAnswer(t *testing.T) {
	rec := meshdns.Record{Headless: true, Ports: []meshdns.Port{
		{Name: "pg", Protocol: "tcp", Port: 5432}, {Name: "metrics", Protocol: "http", Port: 9187}, {Name: "repl", Protocol: "tcp", Port: 5433},
	}}
	for i := range 400 {
		rec.Endpoints = append(rec.Endpoints, meshdns.Endpoint{
			Addr:     netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}),
			Hostname: fmt.Sprintf("db-%d", i),
		})
	}
	s, err := meshdns.New(meshdns.Config{Addr: "127.0.0.1:0", Upstreams: []string{}}, staticResolver{"demo/big": rec})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	t.Cleanup(func() { s.Close(); <-done })
	m := new(dns.Msg)
	m.SetQuestion("big.demo.mesh.", dns.TypeSRV)
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, s.Addr())
	if err != nil {
		t.Fatalf("TCP SRV query of a headless service with 400 named instances: %v", err)
	}
	t.Logf("rcode %s, tc %v, %d answers", dns.RcodeToString[r.Rcode], r.Truncated, len(r.Answer))
}
