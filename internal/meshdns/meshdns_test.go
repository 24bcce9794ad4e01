package meshdns_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/fogmesh/fogmesh/internal/meshdns"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/miekg/dns"
)

// staticResolver is an in-memory Resolver keyed by "namespace/name".
type staticResolver map[string]meshdns.Record

func (r staticResolver) LookupService(namespace, name string) (meshdns.Record, bool) {
	rec, ok := r[namespace+"/"+name]
	return rec, ok
}

var testServices = staticResolver{
	"demo/hello": {
		V4: netip.MustParseAddr("10.96.0.10"),
		V6: netip.MustParseAddr("fd00::10"),
		Ports: []meshdns.Port{
			{Name: "http", Protocol: "http", Port: 80},
			{Name: "grpc", Protocol: "grpc", Port: 9090},
		},
	},
	"default/web": {
		V4:    netip.MustParseAddr("10.96.0.20"),
		Ports: []meshdns.Port{{Name: "http", Protocol: "http", Port: 8080}},
	},
	"demo/v6only": {
		V6:    netip.MustParseAddr("fd00::30"),
		Ports: []meshdns.Port{{Name: "pg", Protocol: "tcp", Port: 5432}},
	},
}

// startServer starts a server on cfg.Addr (default 127.0.0.1:0) with no
// upstreams unless cfg names some, and stops it when the test ends. setup,
// if not nil, runs between New and Serve.
func startServer(t *testing.T, cfg meshdns.Config, setup func(*meshdns.Server)) *meshdns.Server {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Upstreams == nil {
		cfg.Upstreams = []string{}
	}
	return serve(t, cfg, testServices, setup)
}

func query(t *testing.T, network, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s query %s %s: %v", network, name, dns.TypeToString[qtype], err)
	}
	if r.Id != m.Id {
		t.Fatalf("reply ID %d, want %d", r.Id, m.Id)
	}
	return r
}

// rrStrings renders records as "TYPE data", without owner, TTL and class.
func rrStrings(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			continue
		}
		hdr := rr.Header().String()
		out = append(out, dns.TypeToString[rr.Header().Rrtype]+" "+strings.TrimPrefix(rr.String(), hdr))
	}
	return out
}

func TestQueries(t *testing.T) {
	s := startServer(t, meshdns.Config{}, nil)
	tests := []struct {
		name      string
		qname     string
		qtype     uint16
		rcode     int
		answer    []string // rrStrings of the answer section
		extra     []string // rrStrings of the additional section
		ownerName string   // owner of the answers, if not qname
	}{
		{name: "A", qname: "hello.demo.mesh.", qtype: dns.TypeA, answer: []string{"A 10.96.0.10"}},
		{name: "AAAA", qname: "hello.demo.mesh.", qtype: dns.TypeAAAA, answer: []string{"AAAA fd00::10"}},
		{
			name: "SRV service", qname: "hello.demo.mesh.", qtype: dns.TypeSRV,
			answer: []string{"SRV 0 1 80 hello.demo.mesh.", "SRV 0 1 9090 hello.demo.mesh."},
			extra:  []string{"A 10.96.0.10", "AAAA fd00::10"},
		},
		{
			name: "SRV port", qname: "_grpc._tcp.hello.demo.mesh.", qtype: dns.TypeSRV,
			answer: []string{"SRV 0 1 9090 hello.demo.mesh."},
			extra:  []string{"A 10.96.0.10", "AAAA fd00::10"},
		},
		{
			name: "SRV port short form", qname: "_http._tcp.web.mesh.", qtype: dns.TypeSRV,
			answer: []string{"SRV 0 1 8080 web.default.mesh."},
			extra:  []string{"A 10.96.0.20"},
		},
		{
			name: "SRV short form targets long form", qname: "web.mesh.", qtype: dns.TypeSRV,
			answer: []string{"SRV 0 1 8080 web.default.mesh."},
			extra:  []string{"A 10.96.0.20"},
		},
		{name: "short form A", qname: "web.mesh.", qtype: dns.TypeA, answer: []string{"A 10.96.0.20"}},
		{name: "long form default namespace", qname: "web.default.mesh.", qtype: dns.TypeA, answer: []string{"A 10.96.0.20"}},
		{name: "mixed case", qname: "HeLLo.DeMo.MeSh.", qtype: dns.TypeA, answer: []string{"A 10.96.0.10"}},
		{
			name: "mixed case SRV port", qname: "_HTTP._TCP.Hello.Demo.MESH.", qtype: dns.TypeSRV,
			answer: []string{"SRV 0 1 80 hello.demo.mesh."},
			extra:  []string{"A 10.96.0.10", "AAAA fd00::10"},
		},
		{name: "IPv6-only service A", qname: "v6only.demo.mesh.", qtype: dns.TypeA},
		{name: "IPv6-only service AAAA", qname: "v6only.demo.mesh.", qtype: dns.TypeAAAA, answer: []string{"AAAA fd00::30"}},
		{name: "no AAAA", qname: "web.mesh.", qtype: dns.TypeAAAA},
		{name: "MX on known name", qname: "hello.demo.mesh.", qtype: dns.TypeMX},
		{name: "A on SRV name", qname: "_http._tcp.hello.demo.mesh.", qtype: dns.TypeA},
		{name: "apex SOA", qname: "mesh.", qtype: dns.TypeSOA, answer: []string{"SOA ns.dns.mesh. hostmaster.mesh. 1 7200 1800 86400 5"}},
		{name: "apex A", qname: "MESH.", qtype: dns.TypeA},
		{name: "unknown service", qname: "nope.demo.mesh.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "unknown namespace", qname: "hello.nons.mesh.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "unknown short form", qname: "hello.mesh.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "unknown port", qname: "_nope._tcp.hello.demo.mesh.", qtype: dns.TypeSRV, rcode: dns.RcodeNameError},
		{name: "udp port", qname: "_http._udp.hello.demo.mesh.", qtype: dns.TypeSRV, rcode: dns.RcodeNameError},
		{name: "too deep", qname: "a.hello.demo.mesh.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "escaped dot", qname: `hello\.demo.mesh.`, qtype: dns.TypeA, rcode: dns.RcodeNameError},
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				r := query(t, network, s.Addr(), tt.qname, tt.qtype)
				if r.Rcode != tt.rcode {
					t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode])
				}
				if !r.Authoritative {
					t.Error("AA not set on an answer from the zone")
				}
				if got := rrStrings(r.Answer); !slices.Equal(got, tt.answer) {
					t.Errorf("answer\n got %q\nwant %q", got, tt.answer)
				}
				if got := rrStrings(r.Extra); !slices.Equal(got, tt.extra) {
					t.Errorf("extra\n got %q\nwant %q", got, tt.extra)
				}
				for _, rr := range r.Answer {
					if rr.Header().Name != tt.qname && tt.qtype != dns.TypeSOA {
						t.Errorf("owner %q, want %q as asked", rr.Header().Name, tt.qname)
					}
					if rr.Header().Ttl != 5 {
						t.Errorf("TTL %d, want 5", rr.Header().Ttl)
					}
				}
				if len(r.Answer) == 0 {
					// NODATA and NXDOMAIN carry the SOA for negative caching.
					if got := rrStrings(r.Ns); len(got) != 1 || !strings.HasPrefix(got[0], "SOA ") {
						t.Errorf("authority %q, want the zone's SOA", got)
					}
				}
			})
		}
	}
}

func TestConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     meshdns.Config
		wantErr string
	}{
		{name: "bad addr", cfg: meshdns.Config{Addr: "127.0.0.1"}, wantErr: "missing port"},
		{name: "bad zone", cfg: meshdns.Config{Addr: "127.0.0.1:0", Zone: "a..b"}, wantErr: "zone"},
		{name: "root zone", cfg: meshdns.Config{Addr: "127.0.0.1:0", Zone: "."}, wantErr: "root"},
		{name: "bad namespace", cfg: meshdns.Config{Addr: "127.0.0.1:0", DefaultNamespace: "a.b"}, wantErr: "default namespace"},
		{name: "bad upstream", cfg: meshdns.Config{Addr: "127.0.0.1:0", Upstreams: []string{"192.0.2.1"}}, wantErr: "upstream"},
		{name: "port in use", cfg: meshdns.Config{Addr: "PLACEHOLDER"}, wantErr: "listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.cfg.Addr == "PLACEHOLDER" {
				s := startServer(t, meshdns.Config{}, nil)
				tt.cfg.Addr = s.Addr()
			}
			s, err := meshdns.New(tt.cfg, testServices)
			if err == nil {
				s.Close()
				t.Fatalf("New: no error, want one containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "meshdns: ") {
				t.Fatalf("New: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestCustomZone(t *testing.T) {
	s := startServer(t, meshdns.Config{Zone: "Svc.Fog.", TTL: 30, DefaultNamespace: "demo"}, nil)
	r := query(t, "udp", s.Addr(), "hello.svc.fog.", dns.TypeA)
	if got := rrStrings(r.Answer); !slices.Equal(got, []string{"A 10.96.0.10"}) || r.Answer[0].Header().Ttl != 30 {
		t.Fatalf("answer %v", r.Answer)
	}
	if r := query(t, "udp", s.Addr(), "hello.demo.mesh.", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("name outside the zone without upstreams: rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
}

// startUpstream starts a miekg/dns server on 127.0.0.1 over UDP and TCP on
// the same port. It answers example.test. A 192.0.2.1, and big.test. with
// 60 TXT records, truncated over UDP.
func startUpstream(t *testing.T) string {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	for range 10 {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no port free for both UDP and TCP")
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.RecursionAvailable = true
		switch q := req.Question[0]; {
		case q.Name == "example.test." && q.Qtype == dns.TypeA:
			rr, _ := dns.NewRR("example.test. 60 IN A 192.0.2.1")
			m.Answer = []dns.RR{rr}
		case q.Name == "big.test.":
			for i := range 60 {
				rr, _ := dns.NewRR(fmt.Sprintf("big.test. 60 IN TXT \"record %02d padding padding padding\"", i))
				m.Answer = append(m.Answer, rr)
			}
		default:
			m.Rcode = dns.RcodeNameError
		}
		if _, ok := w.RemoteAddr().(*net.UDPAddr); ok {
			m.Truncate(dns.MinMsgSize)
		}
		w.WriteMsg(m)
	})
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return pc.LocalAddr().String()
}

// silentUpstream returns the address of a UDP socket that never answers.
func silentUpstream(t *testing.T) string {
	addr, _, _ := silentUpstreamSeen(t)
	return addr
}

// silentUpstreamSeen is silentUpstream whose channel gets a value for each
// query that reaches it (dropped when nobody waits), so a test can wait
// until a forward is in flight; stop closes it and waits for its reader.
func silentUpstreamSeen(t *testing.T) (addr string, seen <-chan struct{}, stop func()) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{}, 1)
	exited := make(chan struct{})
	stop = func() { pc.Close(); <-exited }
	t.Cleanup(stop)
	go func() {
		defer close(exited)
		buf := make([]byte, 512)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return pc.LocalAddr().String(), ch, stop
}

func TestForward(t *testing.T) {
	up := startUpstream(t)

	t.Run("relay", func(t *testing.T) {
		s := startServer(t, meshdns.Config{Upstreams: []string{up}}, nil)
		for _, network := range []string{"udp", "tcp"} {
			r := query(t, network, s.Addr(), "example.test.", dns.TypeA)
			if r.Rcode != dns.RcodeSuccess || !slices.Equal(rrStrings(r.Answer), []string{"A 192.0.2.1"}) {
				t.Fatalf("%s: got %v", network, r)
			}
			if r.Authoritative {
				t.Errorf("%s: relayed answer has AA set", network)
			}
			r = query(t, network, s.Addr(), "nope.test.", dns.TypeA)
			if r.Rcode != dns.RcodeNameError {
				t.Fatalf("%s: rcode %s, want NXDOMAIN relayed", network, dns.RcodeToString[r.Rcode])
			}
		}
		// Mesh names are still answered locally.
		if r := query(t, "udp", s.Addr(), "hello.demo.mesh.", dns.TypeA); len(r.Answer) != 1 {
			t.Fatalf("mesh name: %v", r)
		}
	})

	t.Run("truncated retried over tcp", func(t *testing.T) {
		s := startServer(t, meshdns.Config{Upstreams: []string{up}}, nil)
		r := query(t, "tcp", s.Addr(), "big.test.", dns.TypeTXT)
		if len(r.Answer) != 60 || r.Truncated {
			t.Fatalf("got %d records, truncated=%v; want all 60", len(r.Answer), r.Truncated)
		}
		// Over UDP the relayed answer is cut to what the client takes.
		r = query(t, "udp", s.Addr(), "big.test.", dns.TypeTXT)
		r.Compress = true // as on the wire
		if !r.Truncated || r.Len() > dns.MinMsgSize {
			t.Fatalf("udp: truncated=%v len=%d; want TC set and at most 512 bytes", r.Truncated, r.Len())
		}
	})

	t.Run("silent upstream", func(t *testing.T) {
		s := startServer(t, meshdns.Config{Upstreams: []string{silentUpstream(t)}}, nil)
		start := time.Now()
		r := query(t, "udp", s.Addr(), "example.test.", dns.TypeA)
		if r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
		}
		if d := time.Since(start); d > 4*time.Second {
			t.Fatalf("SERVFAIL after %v, want within the 2 s upstream timeout", d)
		}
	})

	t.Run("next upstream", func(t *testing.T) {
		s := startServer(t, meshdns.Config{Upstreams: []string{silentUpstream(t), up}}, func(s *meshdns.Server) {
			s.SetTimeoutsForTest(time.Second, time.Second, time.Second, 200*time.Millisecond)
		})
		r := query(t, "udp", s.Addr(), "example.test.", dns.TypeA)
		if !slices.Equal(rrStrings(r.Answer), []string{"A 192.0.2.1"}) {
			t.Fatalf("got %v", r)
		}
	})

	t.Run("no upstreams", func(t *testing.T) {
		s := startServer(t, meshdns.Config{Upstreams: []string{}}, nil)
		if r := query(t, "udp", s.Addr(), "example.test.", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
		}
	})
}

func TestDig(t *testing.T) {
	dig := testenv.NeedTool(t, "dig")
	s := startServer(t, meshdns.Config{}, nil)
	host, port, _ := net.SplitHostPort(s.Addr())
	for _, transport := range []string{"+notcp", "+tcp"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := exec.CommandContext(ctx, dig, "@"+host, "-p", port, "hello.demo.mesh", "A", "+short", "+time=2", "+tries=1", transport).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("dig %s: %v\n%s", transport, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != "10.96.0.10" {
			t.Fatalf("dig %s: %q, want 10.96.0.10", transport, got)
		}
	}
}

func TestHostileUDP(t *testing.T) {
	s := startServer(t, meshdns.Config{}, nil)
	conn, err := net.Dial("udp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 11, 12, 13, 40, 512, 4000, 9000} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if _, err := conn.Write(b); err != nil {
			t.Fatalf("write %d random bytes: %v", n, err)
		}
	}
	if _, err := conn.Write([]byte{0x12, 0x34, 0x01}); err != nil { // truncated header
		t.Fatal(err)
	}

	// A header claiming 50 questions, followed by one.
	q := new(dns.Msg)
	q.SetQuestion("hello.demo.mesh.", dns.TypeA)
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	binary.BigEndian.PutUint16(b[4:], 50)
	for _, pkt := range [][]byte{b, b[:12]} {
		if _, err := conn.Write(pkt); err != nil {
			t.Fatal(err)
		}
	}
	// Read what came back: nothing for most, possibly answers for the
	// question-count lies. None may break the server.
	conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 65536)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			break
		}
		var m dns.Msg
		if err := m.Unpack(buf[:n]); err != nil {
			t.Errorf("server sent a reply that does not unpack: %v", err)
		}
	}

	for _, network := range []string{"udp", "tcp"} {
		if r := query(t, network, s.Addr(), "hello.demo.mesh.", dns.TypeA); len(r.Answer) != 1 {
			t.Fatalf("%s after garbage: %v", network, r)
		}
	}
}

func TestHostileTCP(t *testing.T) {
	const timeout = 300 * time.Millisecond
	s := startServer(t, meshdns.Config{}, func(s *meshdns.Server) {
		s.SetTimeoutsForTest(timeout, timeout, timeout, time.Second)
	})
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// expectDropped checks the server closes c within a few timeouts.
	expectDropped := func(name string, c net.Conn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(5 * timeout))
		_, err := io.Copy(io.Discard, c)
		if err != nil {
			t.Errorf("%s: server did not drop the connection: %v", name, err)
		}
	}
	start := time.Now()

	rng := rand.New(rand.NewPCG(3, 4))
	garbage := make([]byte, 3000)
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	random := dial()
	random.Write(garbage)

	slow := dial()
	slow.Write([]byte{0xff, 0xff}) // 65535 bytes announced, none sent

	half := dial()
	half.Write([]byte{0x00, 0x28, 0x12, 0x34, 0x01, 0x00}) // 40 announced, 4 sent
	half.Close()

	silent := dial()

	// While the slow and silent clients hold their connections, others
	// are served.
	for _, network := range []string{"tcp", "udp"} {
		if r := query(t, network, s.Addr(), "hello.demo.mesh.", dns.TypeA); len(r.Answer) != 1 {
			t.Fatalf("%s during attack: %v", network, r)
		}
	}
	expectDropped("random bytes", random)
	expectDropped("slow sender", slow)
	expectDropped("silent client", silent)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("attack took %v to clear", d)
	}

	// A well-behaved client can send several queries on one connection.
	c := dial()
	co := &dns.Conn{Conn: c}
	for i := range 3 {
		m := new(dns.Msg)
		m.SetQuestion("web.mesh.", dns.TypeA)
		if err := co.WriteMsg(m); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		r, err := co.ReadMsg()
		if err != nil || len(r.Answer) != 1 {
			t.Fatalf("query %d: %v %v", i, r, err)
		}
	}
}

func TestIPv6(t *testing.T) {
	pc, err := net.ListenPacket("udp", "[::1]:0")
	if err != nil {
		t.Skipf("cannot bind [::1]: %v", err)
	}
	pc.Close()
	s := startServer(t, meshdns.Config{Addr: "[::1]:0"}, nil)
	if !strings.HasPrefix(s.Addr(), "[::1]:") {
		t.Fatalf("Addr %q, want [::1]:port", s.Addr())
	}
	for _, network := range []string{"udp", "tcp"} {
		if r := query(t, network, s.Addr(), "hello.demo.mesh.", dns.TypeAAAA); !slices.Equal(rrStrings(r.Answer), []string{"AAAA fd00::10"}) {
			t.Fatalf("%s: %v", network, r)
		}
	}
}

func TestFormErr(t *testing.T) {
	s := startServer(t, meshdns.Config{}, nil)
	m := new(dns.Msg)
	m.Id = dns.Id()
	m.Question = []dns.Question{
		{Name: "hello.demo.mesh.", Qtype: dns.TypeA, Qclass: dns.ClassINET},
		{Name: "example.test.", Qtype: dns.TypeA, Qclass: dns.ClassINET},
	}
	for _, network := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: network, Timeout: 5 * time.Second}
		r, _, err := c.Exchange(m, s.Addr())
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		if r.Rcode != dns.RcodeFormatError {
			t.Fatalf("%s: rcode %s, want FORMERR", network, dns.RcodeToString[r.Rcode])
		}
	}
}

func TestMetrics(t *testing.T) {
	set := metrics.NewSet()
	s := startServer(t, meshdns.Config{Metrics: set}, nil)
	query(t, "udp", s.Addr(), "hello.demo.mesh.", dns.TypeA)
	query(t, "udp", s.Addr(), "hello.demo.mesh.", dns.TypeA)
	query(t, "tcp", s.Addr(), "nope.demo.mesh.", dns.TypeA)
	query(t, "udp", s.Addr(), "hello.demo.mesh.", dns.TypeMX)
	query(t, "udp", s.Addr(), "example.test.", dns.TypeA)
	want := map[string]uint64{"answer": 2, "nxdomain": 1, "nodata": 1, "servfail": 1, "forward": 0, "formerr": 0}
	for result, n := range want {
		name := fmt.Sprintf("fogmesh_dns_queries_total{result=%q}", result)
		if got := set.GetOrCreateCounter(name).Get(); got != n {
			t.Errorf("%s = %d, want %d", name, got, n)
		}
	}
}

func TestLifecycle(t *testing.T) {
	t.Run("close without serve", func(t *testing.T) {
		s, err := meshdns.New(meshdns.Config{Addr: "127.0.0.1:0", Upstreams: []string{}}, testServices)
		if err != nil {
			t.Fatal(err)
		}
		addr := s.Addr()
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if err := s.Serve(context.Background()); err != nil {
			t.Fatalf("Serve after Close: %v, want nil", err)
		}
		if err := s.Serve(context.Background()); err == nil {
			t.Fatal("second Serve: no error")
		}
		// The sockets are released.
		s2, err := meshdns.New(meshdns.Config{Addr: addr, Upstreams: []string{}}, testServices)
		if err != nil {
			t.Fatalf("rebinding %s: %v", addr, err)
		}
		s2.Close()
	})

	t.Run("context cancel", func(t *testing.T) {
		s, err := meshdns.New(meshdns.Config{Addr: "127.0.0.1:0", Upstreams: []string{}}, testServices)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx) }()
		query(t, "udp", s.Addr(), "hello.demo.mesh.", dns.TypeA)
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Serve: %v, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Serve did not return after cancel")
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close after Serve returned: %v", err)
		}
	})
}

// TestNoGoroutineLeak serves UDP and TCP clients and a forward that is in
// flight at Close, and checks that Close is quick and leaves no goroutines.
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		upstream, forwarded, stopUpstream := silentUpstreamSeen(t)
		defer stopUpstream()
		s, err := meshdns.New(meshdns.Config{Addr: "127.0.0.1:0", Upstreams: []string{upstream}}, testServices)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Serve(context.Background()) }()
		query(t, "udp", s.Addr(), "hello.demo.mesh.", dns.TypeA)
		query(t, "tcp", s.Addr(), "hello.demo.mesh.", dns.TypeA)

		idle, err := net.Dial("tcp", s.Addr()) // an idle TCP client
		if err != nil {
			t.Fatal(err)
		}
		defer idle.Close()
		fwd := new(dns.Msg).SetQuestion("example.test.", dns.TypeA)
		b, _ := fwd.Pack()
		uc, err := net.Dial("udp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer uc.Close()
		uc.Write(b) // forwarded to the silent upstream
		select {
		case <-forwarded: // the forward is in flight
		case <-time.After(5 * time.Second):
			t.Fatal("the query never reached the upstream")
		}

		start := time.Now()
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("Close took %v; want in-flight forwards aborted", d)
		}
		if err := <-done; err != nil {
			t.Fatalf("Serve: %v", err)
		}
	}()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines before, %d after Close:\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}

// fetchingResolver holds "demo/hello" and, on a miss, fetches: "demo/late"
// arrives, "demo/gone" does not exist, anything else cannot be told in
// time (it waits for ctx, bounded by the test's deadline).
type fetchingResolver struct {
	staticResolver
	fetched chan string
}

func (r fetchingResolver) FetchService(ctx context.Context, namespace, name string) (meshdns.Record, bool, error) {
	r.fetched <- namespace + "/" + name
	switch namespace + "/" + name {
	case "demo/late":
		return meshdns.Record{V4: netip.MustParseAddr("10.96.0.40"), Ports: []meshdns.Port{{Name: "http", Port: 80}}}, true, nil
	case "demo/gone":
		return meshdns.Record{}, false, nil
	}
	return meshdns.Record{}, false, fmt.Errorf("not known yet")
}

// A Resolver that is a Fetcher is asked on a miss only: a fetched service
// is answered, one the Fetcher says does not exist is NXDOMAIN, and one it
// cannot tell is SERVFAIL (not a negative answer a resolver caches).
func TestFetcherOnMiss(t *testing.T) {
	r := fetchingResolver{staticResolver: testServices, fetched: make(chan string, 10)}
	s, err := meshdns.New(meshdns.Config{Addr: "127.0.0.1:0", Upstreams: []string{}}, r)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	t.Cleanup(func() { s.Close(); <-done })

	if m := query(t, "udp", s.Addr(), "hello.demo.mesh.", dns.TypeA); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Fatalf("held name: %v", m)
	}
	if len(r.fetched) != 0 {
		t.Fatalf("a held name was fetched: %s", <-r.fetched)
	}
	m := query(t, "udp", s.Addr(), "late.demo.mesh.", dns.TypeA)
	if got := rrStrings(m.Answer); m.Rcode != dns.RcodeSuccess || len(got) != 1 || got[0] != "A 10.96.0.40" {
		t.Fatalf("fetched name: rcode %s, answer %v", dns.RcodeToString[m.Rcode], got)
	}
	if m := query(t, "udp", s.Addr(), "gone.demo.mesh.", dns.TypeA); m.Rcode != dns.RcodeNameError {
		t.Fatalf("name that does not exist: rcode %s, want NXDOMAIN", dns.RcodeToString[m.Rcode])
	}
	if m := query(t, "udp", s.Addr(), "_http._tcp.unsure.demo.mesh.", dns.TypeSRV); m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("name not known in time: rcode %s, want SERVFAIL", dns.RcodeToString[m.Rcode])
	}
}
