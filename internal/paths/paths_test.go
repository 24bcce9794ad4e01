package paths

import (
	"errors"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/transport"
)

const meshSessionsIn = `fogmesh_mesh_sessions{dir="in"}`

// TestDirectPath: a peer whose advertised address answers is reached
// directly (the relay, configured, is not used: the direct attempt has
// its head start); Status shows the direct path, its remote address, the
// bytes both ways and, once pinged, its RTT.
func TestDirectPath(t *testing.T) {
	l := newLab(t)
	a := l.node("site-a", "a", nil)
	b := l.node("site-b", "b", nil)
	waitRelay(t, false, a, b)

	s := openEcho(t, a.m, b.peer())
	defer s.Close()
	p, ok := pathTo(a.m, "b")
	if !ok || p.Kind != Direct || p.Remote != b.addr || p.Relay != "" {
		t.Fatalf("path to b: %+v (found %v), want direct to %s", p, ok, b.addr)
	}
	if p.BytesOut == 0 || p.BytesIn == 0 {
		t.Fatalf("no bytes counted on the direct path: %+v", p)
	}
	before := p
	s.echo(t, strings.Repeat("x", 1000))
	waitFor(t, "the echo counted and an RTT measured", func() bool {
		p, _ = pathTo(a.m, "b")
		return p.BytesOut >= before.BytesOut+1000 && p.BytesIn >= before.BytesIn+1000 && p.RTTMs > 0
	})
	if n := relayDials(a.m); n != 0 {
		t.Fatalf("%d relayed sessions opened to a reachable peer", n)
	}
	if rtt, ok := a.m.RTT("b"); !ok || rtt <= 0 {
		t.Fatalf("RTT(b) = %v, %v", rtt, ok)
	}
	if _, ok := a.m.RTT("nobody"); ok {
		t.Fatal("an RTT to a peer never dialed")
	}
}

// TestRelayedThenPunched: a peer whose advertised address refuses is
// reached through the relay as soon as the direct attempt fails (well
// before the head start ends); with punching on, the path is upgraded to
// a punched one in the background. A stream opened on the relayed path
// keeps working after the upgrade (its session is retired, not closed)
// and the retired session closes once that stream ends; new streams take
// the punched path (QUIC over UDP).
func TestRelayedThenPunched(t *testing.T) {
	l := newLab(t)
	punching := func(c *Config) { c.UDPAddr = "127.0.0.1:0" }
	a := l.node("site-a", "a", punching)
	b := l.node("site-b", "b", punching)
	waitRelay(t, true, a, b)
	pb := b.peer()
	pb.Addr = closedAddr(t)

	start := time.Now()
	s := openEcho(t, a.m, pb)
	defer s.Close()
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("relayed stream took %v: the relay waited for the head start", d)
	}
	if n := relayDials(a.m); n != 1 {
		t.Fatalf("%d relayed sessions dialed, want 1", n)
	}
	if s.RemoteAddr().Network() != "tcp" {
		t.Fatalf("first stream runs over %s, want the relayed TCP session", s.RemoteAddr().Network())
	}

	// The upgrade to a punched path.
	var p PathStatus
	waitFor(t, "a punched path to b", func() bool {
		p, _ = pathTo(a.m, "b")
		return p.Kind == Punched
	})
	if p.Relay != "" || p.Remote == "" || p.LastErr != "" {
		t.Fatalf("punched path %+v", p)
	}
	// b answered the punch: it has the path too (its Punch may return a
	// moment after a's Connect).
	waitFor(t, "b's punched path to a", func() bool { bp, _ := pathTo(b.m, "a"); return bp.Kind == Punched })
	// The relayed stream still works and its session is still open.
	s.echo(t, "after the upgrade")
	if v := gaugeValue(b.srvSet, meshSessionsIn); v != 1 {
		t.Fatalf("b's mesh server has %v sessions, want the retired relayed one", v)
	}
	// New streams take the punched path.
	s2 := openEcho(t, a.m, pb)
	defer s2.Close()
	if nw := s2.RemoteAddr().Network(); nw != "udp" {
		t.Fatalf("stream after the upgrade runs over %s, want the punched QUIC path", nw)
	}
	if n := relayDials(a.m); n != 1 {
		t.Fatalf("%d relayed sessions dialed after the upgrade, want still 1", n)
	}
	// The retired relayed session closes once its last stream ends.
	s.Close()
	waitFor(t, "the retired relayed session closed", func() bool { return gaugeValue(b.srvSet, meshSessionsIn) == 0 })
	s2.echo(t, "still punched")
	// b's first stream to a races (a's address refuses: the relay wins)
	// and then takes the punched path a's introduction made.
	pa := a.peer()
	pa.Addr = closedAddr(t)
	openEcho(t, b.m, pa).Close()
	r := openEcho(t, b.m, pa)
	defer r.Close()
	if nw := r.RemoteAddr().Network(); nw != "udp" {
		t.Fatalf("b's stream to a runs over %s, want the punched path", nw)
	}
	// The punched path's bytes count in Status (the relayed session,
	// closed, adds no more).
	before, _ := pathTo(a.m, "b")
	s2.echo(t, strings.Repeat("p", 10000))
	waitFor(t, "bytes counted on the punched path", func() bool {
		p, _ = pathTo(a.m, "b")
		return p.Kind == Punched && p.BytesOut >= before.BytesOut+10000 && p.BytesIn >= before.BytesIn+10000
	})
}

// TestWrongNodeAtAddressUsesRelay: a peer's advertised address is, at
// this site, another node's (overlapping subnets): the direct attempt
// reaches that node, is refused by the identity check, and the relay
// carries the stream to the right node.
func TestWrongNodeAtAddressUsesRelay(t *testing.T) {
	l := newLab(t)
	a := l.node("site-a", "a", nil)
	b := l.node("site-b", "b", nil)
	c := l.node("site-a", "c", nil) // a's neighbour, at b's address as a sees it
	waitRelay(t, false, a, b, c)
	pb := b.peer()
	pb.Addr = c.addr

	start := time.Now()
	s := openEcho(t, a.m, pb) // checks b's workload answered
	defer s.Close()
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %v: the relay waited for the head start", d)
	}
	p, ok := pathTo(a.m, "b")
	if !ok || p.Kind != Relayed || p.Relay != l.relay || p.Remote != l.relay {
		t.Fatalf("path to b: %+v (found %v), want relayed through %s", p, ok, l.relay)
	}
	if k := a.m.PathKind("b"); k != Relayed { // the agent's path label (fogmesh_http_requests_total{path})
		t.Fatalf("PathKind(b) = %q, want relayed", k)
	}
	if k := a.m.PathKind("nobody"); k != "" {
		t.Fatalf("PathKind(nobody) = %q, want none", k)
	}
	if n := c.dialer.calls.Load(); n != 0 {
		t.Fatalf("the wrong node got %d streams", n)
	}
	if n := transport.TLSFailures(a.m.cfg.Metrics, "out", identity.ReasonUnauthorized); n != 1 {
		t.Fatalf("%d refused identities counted, want 1", n)
	}
	// The next stream takes the relayed path at once.
	s2 := openEcho(t, a.m, pb)
	s2.Close()
	if n := relayDials(a.m); n != 1 {
		t.Fatalf("%d relayed sessions, want 1 (reused)", n)
	}
}

// TestPeerRefusalIsFinal: a peer that refuses a stream (unknown
// destination, or denied by policy) answered: the error is returned as
// is, and neither another path nor the head start's end is tried.
func TestPeerRefusalIsFinal(t *testing.T) {
	l := newLab(t)
	a := l.node("site-a", "a", nil)
	b := l.node("site-b", "b", nil)
	waitRelay(t, false, a, b)
	for _, tc := range []struct {
		svc  string
		want error
	}{{"refused", transport.ErrRefused}, {"denied", transport.ErrDenied}} {
		calls := b.dialer.calls.Load()
		start := time.Now()
		_, err := a.m.Dial(ctxT(t), b.peer(), header(tc.svc))
		if !errors.Is(err, tc.want) {
			t.Fatalf("%s: err %v, want %v", tc.svc, err, tc.want)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("%s: took %v", tc.svc, d)
		}
		if n := b.dialer.calls.Load() - calls; n != 1 {
			t.Fatalf("%s: b was asked %d times, want once", tc.svc, n)
		}
		if n := relayDials(a.m); n != 0 {
			t.Fatalf("%s: %d relayed sessions tried after the peer answered", tc.svc, n)
		}
		if p, _ := pathTo(a.m, "b"); p.Kind != Direct {
			t.Fatalf("%s: path %+v, want direct (the peer answered on it)", tc.svc, p)
		}
	}
	// Over a relayed path too.
	pb := b.peer()
	pb.Addr = closedAddr(t)
	c := l.node("site-c", "c", nil)
	waitRelay(t, false, c)
	for range 2 { // the race, then the relayed path found
		_, err := c.m.Dial(ctxT(t), pb, header("refused"))
		if !errors.Is(err, transport.ErrRefused) {
			t.Fatalf("relayed: err %v, want ErrRefused", err)
		}
		if p, _ := pathTo(c.m, "b"); p.Kind != Relayed {
			t.Fatalf("relayed: path %+v", p)
		}
	}
	if n := relayDials(c.m); n != 1 {
		t.Fatalf("%d relayed sessions, want 1", n)
	}
}

// TestDropNodeAndPeer: DropNode and DropPeer close the paths and their
// streams at once; the next Dial finds a path again.
func TestDropNodeAndPeer(t *testing.T) {
	l := newLab(t)
	a := l.node("site-a", "a", nil)
	b := l.node("site-b", "b", nil)
	c := l.node("site-c", "c", nil)
	waitRelay(t, false, a, b, c)
	pc := c.peer()
	pc.Addr = closedAddr(t)

	for _, tc := range []struct {
		name string
		peer Peer
		kind Kind
		drop func()
	}{
		{"DropNode direct", b.peer(), Direct, func() { a.m.DropNode("b") }},
		{"DropPeer direct", b.peer(), Direct, func() {
			if n := a.m.DropPeer(b.id); n != 1 {
				t.Errorf("DropPeer closed %d paths, want 1", n)
			}
		}},
		{"DropNode relayed", pc, Relayed, func() { a.m.DropNode("c") }},
		{"DropPeer relayed", pc, Relayed, func() {
			if n := a.m.DropPeer(c.id); n != 1 {
				t.Errorf("DropPeer closed %d paths, want 1", n)
			}
		}},
	} {
		s := openEcho(t, a.m, tc.peer)
		if p, _ := pathTo(a.m, tc.peer.Name); p.Kind != tc.kind {
			t.Fatalf("%s: path %+v, want %s", tc.name, p, tc.kind)
		}
		tc.drop()
		if err := streamEnded(s); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		s.Close()
		s = openEcho(t, a.m, tc.peer)
		if p, _ := pathTo(a.m, tc.peer.Name); p.Kind != tc.kind {
			t.Fatalf("%s: path after the drop %+v, want %s", tc.name, p, tc.kind)
		}
		s.Close()
	}
	if n := a.m.DropPeer(spiffeid.RequireFromString("spiffe://other.example/node/x/y")); n != 0 {
		t.Fatalf("DropPeer of an unknown node closed %d", n)
	}
	a.m.DropNode("nobody")
}

// TestDropNodePunched: DropNode closes a punched path and its streams;
// the next Dial goes through the relay again and punches again.
func TestDropNodePunched(t *testing.T) {
	l := newLab(t)
	punching := func(c *Config) { c.UDPAddr = "127.0.0.1:0" }
	a := l.node("site-a", "a", punching)
	b := l.node("site-b", "b", punching)
	waitRelay(t, true, a, b)
	pb := b.peer()
	pb.Addr = closedAddr(t)
	openEcho(t, a.m, pb).Close()
	waitFor(t, "a punched path", func() bool { p, _ := pathTo(a.m, "b"); return p.Kind == Punched })
	s := openEcho(t, a.m, pb)
	defer s.Close()
	if s.RemoteAddr().Network() != "udp" {
		t.Fatal("not punched")
	}
	a.m.DropNode("b")
	if err := streamEnded(s); err != nil {
		t.Fatal(err)
	}
	if p, ok := pathTo(a.m, "b"); ok {
		t.Fatalf("a path to b after DropNode: %+v", p)
	}
	s2 := openEcho(t, a.m, pb)
	defer s2.Close()
	waitFor(t, "punched again", func() bool { p, _ := pathTo(a.m, "b"); return p.Kind == Punched })
	s3 := openEcho(t, a.m, pb)
	defer s3.Close()
	if s3.RemoteAddr().Network() != "udp" {
		t.Fatal("not punched again")
	}
}

// TestCloseLeavesNothing: closing the managers (twice) and their servers
// after relayed and punched paths were used ends every goroutine they
// started.
func TestCloseLeavesNothing(t *testing.T) {
	l := newLab(t)
	base := runtime.NumGoroutine()
	punching := func(c *Config) { c.UDPAddr = "127.0.0.1:0" }
	a := l.node("site-a", "a", punching)
	b := l.node("site-b", "b", punching)
	c := l.node("site-c", "c", nil)
	waitRelay(t, true, a, b)
	waitRelay(t, false, c)
	pb := b.peer()
	pb.Addr = closedAddr(t)
	open := openEcho(t, a.m, pb) // left open across Close
	waitFor(t, "a punched path", func() bool { p, _ := pathTo(a.m, "b"); return p.Kind == Punched })
	openEcho(t, a.m, pb).Close()
	openEcho(t, a.m, c.peer()).Close()
	openEcho(t, c.m, b.peer()).Close()

	for _, n := range []*node{a, b, c} {
		n.close()
		if err := n.m.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	if err := streamEnded(open); err != nil {
		t.Fatalf("a stream outlived Close: %v", err)
	}
	open.Close()
	if _, err := a.m.Dial(ctxT(t), c.peer(), header("echo")); err == nil {
		t.Fatal("Dial after Close succeeded")
	}
	if on, at := punchStateOf(a.m, "c"); on || !at.IsZero() {
		t.Fatal("a Dial after Close started a punch")
	}
	deadline := time.Now().Add(20 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines, %d before the nodes:\n%s", n, base, buf[:runtime.Stack(buf, true)])
	}
}

// TestWithoutRelays: without relays the manager is a plain direct client
// (insecure mode works), a peer whose address refuses is an error, and
// Status says punching is off; relays without secure mode are refused.
func TestWithoutRelays(t *testing.T) {
	n := newNode(t, "b")
	startNode(t, n, Config{Self: "b", Dialer: n.dialer})
	a := newNode(t, "a")
	startNode(t, a, Config{Self: "a", Dialer: a.dialer})

	s := openEcho(t, a.m, n.peer())
	defer s.Close()
	st := a.m.Status()
	if len(st.Paths) != 1 || st.Paths[0].Kind != Direct || st.Paths[0].Remote != n.addr || st.Paths[0].BytesIn == 0 {
		t.Fatalf("status %+v", st)
	}
	if st.Punching || st.PunchNote != "no relays configured" || st.Relays != nil {
		t.Fatalf("status %+v", st)
	}
	if a.m.Sessions() != 1 {
		t.Fatalf("%d sessions", a.m.Sessions())
	}
	_, err := a.m.Dial(ctxT(t), Peer{Name: "gone", Addr: closedAddr(t)}, header("echo"))
	var oe *net.OpError
	if err == nil || !errors.As(err, &oe) {
		t.Fatalf("dial to a closed port: %v", err)
	}
	if p, ok := pathTo(a.m, "gone"); ok {
		t.Fatalf("a path to an unreachable peer: %+v", p)
	}
	if _, err := a.m.Dial(ctxT(t), n.peer(), header("refused")); !errors.Is(err, transport.ErrRefused) {
		t.Fatalf("refused: %v", err)
	}

	ca, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	src := source(t, ca, "site-a", "a")
	full := Config{Self: "a", SelfID: src.SVID().ID, Relays: []string{"127.0.0.1:1"},
		TLS: src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh), RelayTLS: src.ClientConfig(identity.AuthorizeNode())}
	for name, mod := range map[string]func(*Config){
		"no mesh TLS":  func(c *Config) { c.TLS = nil },
		"no relay TLS": func(c *Config) { c.RelayTLS = nil },
		"no SelfID":    func(c *Config) { c.SelfID = spiffeid.ID{} },
		"bad relay":    func(c *Config) { c.Relays = []string{"no-port"} },
	} {
		cfg := full
		mod(&cfg)
		if m, err := New(cfg); err == nil {
			m.Close()
			t.Errorf("%s: New accepted it", name)
		}
	}
}

// TestForget: a node that left the registry leaves nothing behind: no
// path, no state, no metric series.
func TestForget(t *testing.T) {
	l := newLab(t)
	a := l.node("site-a", "a", nil)
	b := l.node("site-b", "b", nil)
	openEcho(t, a.m, b.peer()).Close()
	if _, ok := pathTo(a.m, "b"); !ok {
		t.Fatal("no path to b")
	}
	var buf strings.Builder
	a.m.cfg.Metrics.WritePrometheus(&buf)
	if !strings.Contains(buf.String(), `fogmesh_path{peer="b"`) {
		t.Fatalf("no per-peer series before Forget:\n%s", buf.String())
	}
	a.m.Forget("b")
	if _, ok := pathTo(a.m, "b"); ok {
		t.Fatal("a path to b after Forget")
	}
	buf.Reset()
	a.m.cfg.Metrics.WritePrometheus(&buf)
	if strings.Contains(buf.String(), `peer="b"`) {
		t.Fatalf("series of b after Forget:\n%s", buf.String())
	}
}
