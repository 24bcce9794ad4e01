package meshdns_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/miekg/dns"

	"github.com/fogmesh/fogmesh/internal/meshdns"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// queryFrom sends one query from the local address src (any port) and
// returns the reply. A src that cannot be bound (a loopback with 127.0.0.1
// only) skips the test.
func queryFrom(t *testing.T, network, src, addr, name string) *dns.Msg {
	t.Helper()
	return queryFromWithin(t, network, src, addr, name, 5*time.Second)
}

// queryFromWithin is queryFrom with the client's timeout.
func queryFromWithin(t *testing.T, network, src, addr, name string, timeout time.Duration) *dns.Msg {
	t.Helper()
	ip := net.ParseIP(src)
	var local net.Addr = &net.UDPAddr{IP: ip}
	if network == "tcp" {
		local = &net.TCPAddr{IP: ip}
	}
	if pc, err := net.ListenPacket("udp", net.JoinHostPort(src, "0")); err != nil {
		t.Skipf("cannot use %s as a client address: %v", src, err)
	} else {
		pc.Close()
	}
	m := new(dns.Msg).SetQuestion(name, dns.TypeA)
	c := &dns.Client{Net: network, Timeout: timeout, Dialer: &net.Dialer{LocalAddr: local, Timeout: timeout}}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s query %s from %s: %v", network, name, src, err)
	}
	if r.Id != m.Id {
		t.Fatalf("reply ID %d, want %d", r.Id, m.Id)
	}
	return r
}

// infoCounter is a slog.Handler counting the records at Info or above.
type infoCounter struct{ n *atomic.Int64 }

func (h infoCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h infoCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelInfo {
		h.n.Add(1)
	}
	return nil
}
func (h infoCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h infoCounter) WithGroup(string) slog.Handler      { return h }

// TestForwardRateLimitPerClient: a client flooding forwarded queries over
// UDP is answered, once over its rate, with an empty truncated reply (a
// real client asks again over TCP, whose budget is apart, so a spoofed
// flood cannot deny it), without a log line at info level and counted as
// result="ratelimited"; over TCP it gets its answer, then REFUSED once over
// that rate too. Another client address is still forwarded to, and the
// flooding client's mesh names are still answered.
func TestForwardRateLimitPerClient(t *testing.T) {
	const flooder, other = "127.64.0.1", "127.64.0.2"
	up := startUpstream(t)
	set := metrics.NewSet()
	logged := new(atomic.Int64)
	s := startServer(t, meshdns.Config{Upstreams: []string{up}, ForwardRate: 1, Metrics: set,
		Logger: slog.New(infoCounter{logged})}, nil)

	limited := func(network string, want func(*dns.Msg) bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			r := queryFrom(t, network, flooder, s.Addr(), "example.test.")
			if want(r) {
				if len(r.Answer) != 0 || !r.Response {
					t.Fatalf("%s: rate limited reply: %v", network, r)
				}
				return
			}
			if r.Rcode != dns.RcodeSuccess || r.Truncated || !slices.Equal(rrStrings(r.Answer), []string{"A 192.0.2.1"}) {
				t.Fatalf("%s: forwarded answer: %v", network, r)
			}
		}
		t.Fatalf("a client flooding forwarded queries over %s was never limited", network)
	}
	limited("udp", func(r *dns.Msg) bool { return r.Truncated && r.Rcode == dns.RcodeSuccess })
	if r := queryFrom(t, "tcp", flooder, s.Addr(), "example.test."); r.Rcode != dns.RcodeSuccess ||
		!slices.Equal(rrStrings(r.Answer), []string{"A 192.0.2.1"}) {
		t.Fatalf("over TCP after its UDP budget was used up: %v, want the upstream's answer", r)
	}
	limited("tcp", func(r *dns.Msg) bool { return r.Rcode == dns.RcodeRefused })

	if r := queryFrom(t, "udp", other, s.Addr(), "example.test."); r.Rcode != dns.RcodeSuccess ||
		!slices.Equal(rrStrings(r.Answer), []string{"A 192.0.2.1"}) {
		t.Fatalf("another client while %s floods: %v, want the upstream's answer", flooder, r)
	}
	for _, network := range []string{"udp", "tcp"} {
		if r := queryFrom(t, network, flooder, s.Addr(), "hello.demo.mesh."); r.Rcode != dns.RcodeSuccess ||
			!slices.Equal(rrStrings(r.Answer), []string{"A 10.96.0.10"}) {
			t.Fatalf("mesh name from the flooding client over %s: %v, want it answered", network, r)
		}
	}

	if n := set.GetOrCreateCounter(`fogmesh_dns_queries_total{result="ratelimited"}`).Get(); n == 0 {
		t.Error(`fogmesh_dns_queries_total{result="ratelimited"} = 0, want the refusals counted`)
	}
	if n := set.GetOrCreateCounter(`fogmesh_dns_queries_total{result="refused"}`).Get(); n != 0 {
		t.Errorf(`fogmesh_dns_queries_total{result="refused"} = %d, want 0 (rate limited queries counted apart)`, n)
	}
	if n := logged.Load(); n != 0 {
		t.Errorf("%d log lines at info or above; want none per refused query", n)
	}
}

// TestForwardRateLimitOff: a negative ForwardRate forwards every query.
func TestForwardRateLimitOff(t *testing.T) {
	s := startServer(t, meshdns.Config{Upstreams: []string{startUpstream(t)}, ForwardRate: -1}, nil)
	for i := range 20 {
		if r := queryFrom(t, "udp", "127.64.0.3", s.Addr(), "example.test."); r.Rcode != dns.RcodeSuccess {
			t.Fatalf("query %d: rcode %s, want NOERROR with no limit", i, dns.RcodeToString[r.Rcode])
		}
	}
}

// TestForwardClientsBounded: clients from many source addresses (as a
// spoofer's) leave at most the cap of clients tracked, and the newest is
// tracked.
func TestForwardClientsBounded(t *testing.T) {
	const limit = 8
	s := startServer(t, meshdns.Config{Upstreams: []string{startUpstream(t)}}, func(s *meshdns.Server) {
		s.SetForwardClientsForTest(limit)
	})
	for i := range 3 * limit {
		src := fmt.Sprintf("127.64.1.%d", i+1)
		if r := queryFrom(t, "udp", src, s.Addr(), "example.test."); r.Rcode != dns.RcodeSuccess {
			t.Fatalf("client %s: rcode %s", src, dns.RcodeToString[r.Rcode])
		}
		if n := s.ForwardClientsForTest(); n > limit {
			t.Fatalf("after %d clients: %d tracked, want at most %d", i+1, n, limit)
		}
		if !s.ForwardClientTrackedForTest(netip.MustParseAddr(src)) {
			t.Fatalf("client %s not tracked after its query", src)
		}
	}
	// Mesh names are not limited, so they create no client state.
	before := s.ForwardClientsForTest()
	queryFrom(t, "udp", "127.64.2.1", s.Addr(), "hello.demo.mesh.")
	if s.ForwardClientTrackedForTest(netip.MustParseAddr("127.64.2.1")) || s.ForwardClientsForTest() != before {
		t.Error("a mesh-name query created per-client forwarding state")
	}
}

// TestClientLimitsBounded drives the per-client buckets directly: many
// more addresses than the cap leave the cap tracked, the least recently
// used is the one forgotten, and clients idle until their bucket is full
// again are forgotten.
func TestClientLimitsBounded(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	clock := func() time.Time { return now }
	limit := meshdns.MaxForwardClientsForTest
	l := meshdns.NewClientLimitsForTest(100, 200, limit, clock)
	for i := range 3 * limit {
		l.Allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
		if l.Len() > limit {
			t.Fatalf("after %d clients: %d tracked, want at most %d", i+1, l.Len(), limit)
		}
	}
	if l.Len() != limit {
		t.Fatalf("%d tracked, want the cap %d", l.Len(), limit)
	}

	// LRU: with a cap of 2, using a again makes b the one to go.
	a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	l = meshdns.NewClientLimitsForTest(1, 2, 2, clock)
	l.Allow(a)
	l.Allow(b)
	l.Allow(a)
	l.Allow(c)
	if !l.Tracked(a) || l.Tracked(b) || !l.Tracked(c) {
		t.Fatalf("tracked a=%v b=%v c=%v, want a and c", l.Tracked(a), l.Tracked(b), l.Tracked(c))
	}
	// a's bucket is empty: a is refused until it refills.
	if l.Allow(a) {
		t.Fatal("a allowed over its burst")
	}

	// Idle for burst/rate (2 s at 1/s, burst 2): a full bucket, forgotten.
	now = now.Add(2 * time.Second)
	if !l.Allow(netip.MustParseAddr("10.0.0.4")) || l.Len() != 1 {
		t.Fatalf("%d tracked after the others idled until full, want 1", l.Len())
	}
	if !l.Allow(a) || !l.Allow(a) || l.Allow(a) {
		t.Fatal("a forgotten client must start with a full bucket of 2")
	}
}

// TestForwardInFlightShare: a client within its rate that floods names a
// silent upstream never answers holds at most a quarter of the forwards
// in flight; its next query is answered truncated at once, and another client's
// query is still forwarded (it got SERVFAIL at once, every slot taken by
// the flood, before the share).
func TestForwardInFlightShare(t *testing.T) {
	const flooder, other = "127.64.2.1", "127.64.2.2"
	silent := silentUpstream(t)
	// The upstream timeout outlasts the test's steps: the flood's forwards
	// stay in flight (a slot freed while the flood is still read is taken
	// by a later flood query, one freed after it would let the flooder's
	// next query through).
	const upstreamTimeout = 8 * time.Second
	s := startServer(t, meshdns.Config{Upstreams: []string{silent}, ForwardRate: -1}, func(s *meshdns.Server) {
		s.SetTimeoutsForTest(5*time.Second, 5*time.Second, 5*time.Second, upstreamTimeout)
	})
	pc, err := net.ListenPacket("udp", net.JoinHostPort(flooder, "0"))
	if err != nil {
		t.Skipf("cannot use %s as a client address: %v", flooder, err)
	}
	defer pc.Close()
	to, _ := net.ResolveUDPAddr("udp", s.Addr())
	flood := func(n int) {
		for i := range n {
			b, _ := new(dns.Msg).SetQuestion(fmt.Sprintf("n%d.flood.test.", i), dns.TypeA).Pack()
			if _, err := pc.WriteTo(b, to); err != nil {
				t.Fatal(err)
			}
		}
	}
	share := meshdns.MaxForwardsForTest / 8
	sent := meshdns.MaxForwardsForTest + 16 // more than every slot
	flood(sent)
	client := netip.MustParseAddr(flooder)
	testenv.WaitFor(t, 10*time.Second, "the flooder's share of forwards in flight", func() bool {
		return s.ForwardsInFlightForTest(client) == share
	})
	// The flood past the share is answered truncated at once. Take those
	// answers before the next query: until the server has read the flood,
	// a query queues behind it (and a socket buffer full of it drops
	// one; session 25's CI saw that on a loaded machine).
	buf := make([]byte, 512)
	truncated := 0
	for truncated < sent-share {
		pc.SetReadDeadline(time.Now().Add(2 * time.Second)) // no answer for 2 s: the server read all it got
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			break
		}
		r := new(dns.Msg)
		if r.Unpack(buf[:n]) != nil || !r.Truncated || len(r.Answer) != 0 {
			t.Fatalf("a flood query past the share answered %q, want an empty truncated reply", buf[:n])
		}
		truncated++
	}
	if truncated == 0 {
		t.Fatalf("no flood query past the share was answered")
	}
	if r := queryFrom(t, "udp", flooder, s.Addr(), "one.more.test."); !r.Truncated || len(r.Answer) != 0 {
		t.Fatalf("the flooder's query past its share: %v, want an empty truncated reply", r)
	}
	if n := s.ForwardsInFlightForTest(client); n > share {
		t.Fatalf("the flooder has %d forwards in flight, more than its share %d", n, share)
	}
	// The other client's query is forwarded: the silent upstream makes it
	// SERVFAIL after the upstream timeout, not at once for want of a slot.
	start := time.Now()
	r := queryFromWithin(t, "udp", other, s.Addr(), "other.test.", upstreamTimeout+5*time.Second)
	if r.Rcode != dns.RcodeServerFailure || time.Since(start) < upstreamTimeout-time.Second {
		t.Fatalf("another client's query: %s after %v, want SERVFAIL after the upstream's %v timeout (forwarded)", dns.RcodeToString[r.Rcode], time.Since(start), upstreamTimeout)
	}
}
