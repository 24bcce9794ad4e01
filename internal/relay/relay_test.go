package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// fixture is a test CA and a relay serving on loopback TCP and UDP.
type fixture struct {
	t      *testing.T
	ca     *identity.CA
	td     spiffeid.TrustDomain
	srv    *Server
	set    *metrics.Set
	addr   string
	udp    *net.UDPAddr
	tapMu  sync.Mutex
	tapped map[string][]byte // session → every byte the relay forwarded
}

func newCA(t testing.TB) *identity.CA {
	t.Helper()
	ca, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// source returns a node identity issued by ca the way an agent gets one:
// local key, CSR, signed chain; it trusts ca's bundle.
func source(t testing.TB, ca *identity.CA, site, node string) *identity.Source {
	t.Helper()
	src, err := ca.NodeSource(site, node)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func newFixture(t *testing.T, mod func(*Config)) *fixture {
	t.Helper()
	f := &fixture{t: t, ca: newCA(t), set: metrics.NewSet(), tapped: map[string][]byte{}}
	f.td = f.ca.TrustDomain()
	cfg := Config{Source: source(t, f.ca, "relay", "r1"), Metrics: f.set}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.tap = func(session string, p []byte) {
		f.tapMu.Lock()
		f.tapped[session] = append(f.tapped[session], p...)
		f.tapMu.Unlock()
	}
	f.srv = srv
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr, f.udp = ln.Addr().String(), pc.LocalAddr().(*net.UDPAddr)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); srv.Serve(ln) }()
	go func() { defer wg.Done(); srv.ServeUDP(pc) }()
	t.Cleanup(func() {
		srv.Close()
		wg.Wait()
	})
	return f
}

// node is one test agent: its identity and its relay client.
type testNode struct {
	src *identity.Source
	id  string
	c   *Client
}

func (f *fixture) node(site, name string) *testNode {
	f.t.Helper()
	src := source(f.t, f.ca, site, name)
	c, err := f.dial(src)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { c.Close() })
	return &testNode{src: src, id: src.SVID().ID.String(), c: c}
}

func (f *fixture) dial(src *identity.Source) (*Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return DialClient(ctx, f.addr, src.ClientConfig(AuthorizeRelay(f.td)))
}

// metric returns the value of one series of the relay's metrics.
func (f *fixture) metric(series string) float64 {
	var b bytes.Buffer
	f.set.WritePrometheus(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var x float64
			fmt.Sscan(v, &x)
			return x
		}
	}
	f.t.Fatalf("no series %s in\n%s", series, b.String())
	return 0
}

func refused(reason string) string {
	return fmt.Sprintf(`fogmesh_relay_refused_total{reason=%q}`, reason)
}

// waitFor polls cond until it holds or 20 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, 20*time.Second, what, cond)
}

func ctx20(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// acceptOne takes the next Incoming session of n.
func acceptOne(t *testing.T, n *testNode) (net.Conn, Incoming, error) {
	select {
	case in := <-n.c.Incoming():
		conn, err := n.c.AcceptSession(ctx20(t), in.Session)
		return conn, in, err
	case <-time.After(20 * time.Second):
		return nil, Incoming{}, errors.New("no incoming session")
	}
}

const marker = "FOGMESH-INNER-SECRET-7f3a9c"

// TestRelayIntroduceAndRelayEndToEnd: two agents are introduced (each gets
// the other's candidates, reflexive ones included), then relay bytes with
// an inner mTLS session end to end: the marker sent inside it crosses the
// relay but never appears in what the relay forwarded. A plaintext
// session through the same relay shows the tap does see what is not
// encrypted.
func TestRelayIntroduceAndRelayEndToEnd(t *testing.T) {
	f := newFixture(t, nil)
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	if x.c.Hello().Node != x.id || !strings.HasPrefix(x.c.Hello().Observed, "127.0.0.1:") {
		t.Fatalf("hello %+v", x.c.Hello())
	}
	if err := y.c.SetCandidates([]string{"192.168.1.7:7072"}); err != nil {
		t.Fatal(err)
	}
	// SetCandidates is asynchronous; introductions read it under the
	// relay's lock, so wait until the relay has it.
	waitFor(t, "y's candidates at the relay", func() bool {
		f.srv.mu.Lock()
		defer f.srv.mu.Unlock()
		n := f.srv.nodes[y.id]
		return n != nil && len(n.candidates) == 1
	})
	intro, err := x.c.Introduce(ctx20(t), y.id, []string{"192.168.1.5:7072"})
	if err != nil {
		t.Fatal(err)
	}
	if intro.Peer != y.id || len(intro.Candidates) != 2 || intro.Candidates[0] != "192.168.1.7:7072" ||
		intro.Candidates[1] != y.c.Hello().Observed {
		t.Fatalf("x got %+v", intro)
	}
	select {
	case got := <-y.c.Introductions():
		if got.Peer != x.id || got.Nonce != intro.Nonce || len(got.Candidates) != 2 ||
			got.Candidates[0] != "192.168.1.5:7072" || got.Candidates[1] != x.c.Hello().Observed {
			t.Fatalf("y got %+v", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("y was never introduced")
	}

	// Y: accept, run the inner TLS server, echo one line.
	type yres struct {
		in   Incoming
		line string
		err  error
	}
	ych := make(chan yres, 1)
	go func() {
		conn, in, err := acceptOne(t, y)
		if err != nil {
			ych <- yres{err: err}
			return
		}
		defer conn.Close()
		inner := tls.Server(conn, y.src.ServerConfig(identity.AuthorizeID(x.src.SVID().ID), identity.ALPNMesh))
		line, err := bufio.NewReader(inner).ReadString('\n')
		if err == nil {
			_, err = io.WriteString(inner, "echo "+line)
		}
		ych <- yres{in: in, line: line, err: err}
	}()
	conn, err := x.c.DialPeer(ctx20(t), y.id)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	inner := tls.Client(conn, x.src.ClientConfig(identity.AuthorizeID(y.src.SVID().ID), identity.ALPNMesh))
	if _, err := io.WriteString(inner, marker+"\n"); err != nil {
		t.Fatal(err)
	}
	echo, err := bufio.NewReader(inner).ReadString('\n')
	if err != nil || echo != "echo "+marker+"\n" {
		t.Fatalf("echo %q, %v", echo, err)
	}
	r := <-ych
	if r.err != nil || r.in.Peer != x.id {
		t.Fatalf("y: %+v", r)
	}
	f.tapMu.Lock()
	seen := f.tapped[r.in.Session]
	f.tapMu.Unlock()
	if len(seen) < len(marker) {
		t.Fatalf("the relay forwarded only %d bytes", len(seen))
	}
	if bytes.Contains(seen, []byte(marker)) {
		t.Fatal("the relay saw the marker: the inner session is not end to end")
	}
	if got := f.metric("fogmesh_relay_bytes_total"); got < float64(len(seen)) {
		t.Errorf("bytes_total %v, tapped %d", got, len(seen))
	}

	// Control: the same path without inner TLS is visible to the tap.
	go func() {
		conn, in, err := acceptOne(t, y)
		if err == nil {
			io.Copy(io.Discard, conn)
			conn.Close()
		}
		ych <- yres{in: in, err: err}
	}()
	plain, err := x.c.DialPeer(ctx20(t), y.id)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(plain, marker+"\n")
	plain.(*tls.Conn).CloseWrite()
	r = <-ych
	if r.err != nil {
		t.Fatal(r.err)
	}
	plain.Close()
	f.tapMu.Lock()
	seen = f.tapped[r.in.Session]
	f.tapMu.Unlock()
	if !bytes.Contains(seen, []byte(marker)) {
		t.Fatalf("tap of a plaintext session: %q", seen)
	}
	if got := f.metric("fogmesh_relay_sessions_total"); got != 2 {
		t.Errorf("sessions_total %v", got)
	}
	if got := f.metric("fogmesh_relay_nodes_connected"); got != 2 {
		t.Errorf("nodes_connected %v", got)
	}
}

// TestRelayRefusesUnauthenticatedAndRevoked: plaintext, a TLS client
// without a certificate, a certificate from another CA and a revoked node
// are refused at the handshake and counted by reason; revoking a connected
// node closes its connection.
func TestRelayRefusesUnauthenticatedAndRevoked(t *testing.T) {
	f := newFixture(t, nil)

	plain, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	plain.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	plain.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, _ := plain.Read(make([]byte, 1)); n != 0 {
		t.Error("plaintext got an answer")
	}
	plain.Close()
	waitFor(t, "not_tls counted", func() bool { return f.metric(refused(identity.ReasonNotTLS)) == 1 })

	anon := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPNControl}, MinVersion: tls.VersionTLS13}
	if c, err := tls.Dial("tcp", f.addr, anon); err == nil {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := ReadFrame(c); err == nil {
			t.Error("a client without a certificate got a frame")
		}
		c.Close()
	}
	waitFor(t, "no_certificate counted", func() bool { return f.metric(refused(identity.ReasonNoCertificate)) == 1 })

	stranger := source(t, newCA(t), "site-a", "x")
	stranger.SetBundles(f.ca.Bundle()) // it trusts the relay; the relay does not trust it
	if _, err := f.dial(stranger); err == nil {
		t.Error("a node of another CA connected")
	}
	waitFor(t, "unknown_authority counted", func() bool { return f.metric(refused(identity.ReasonUnknownAuthority)) == 1 })

	revoked := source(t, f.ca, "site-a", "revoked")
	f.srv.SetDenied([]string{revoked.SVID().ID.String()})
	if _, err := f.dial(revoked); err == nil {
		t.Fatal("a revoked node connected")
	}
	waitFor(t, "revoked counted", func() bool { return f.metric(refused(identity.ReasonRevoked)) == 1 })

	// A connected node revoked later is disconnected at once.
	y := f.node("site-b", "y")
	waitFor(t, "y connected", func() bool { return f.srv.ConnectedNodes() == 1 })
	f.srv.SetDenied([]string{revoked.SVID().ID.String(), y.id})
	select {
	case <-y.c.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("a revoked node's control connection stayed open")
	}
	waitFor(t, "y gone", func() bool { return f.srv.ConnectedNodes() == 0 })
	if got := f.metric(refused(ReasonRevokedLive)); got != 1 {
		t.Errorf("revoked_live %v", got)
	}
}

// TestRelayIntroductionRefusals: a replayed nonce, a stale introduction, a
// peer of another trust domain, a pair the policy denies and a peer that
// is not connected are refused with their reason; nothing reaches the
// peer.
func TestRelayIntroductionRefusals(t *testing.T) {
	var denyZ atomic.Pointer[string]
	denyZ.Store(new(string))
	f := newFixture(t, func(c *Config) {
		c.Policy = func(from, to spiffeid.ID) error {
			if to.String() == *denyZ.Load() {
				return errors.New("not z")
			}
			return nil
		}
	})
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	z := f.node("site-c", "z")
	denyZ.Store(&z.id)
	ctx := ctx20(t)

	m := &Introduce{Nonce: newID(), Time: time.Now().UnixMilli(), Peer: y.id}
	if _, err := x.c.introduce(ctx, m); err != nil {
		t.Fatal(err)
	}
	<-y.c.Introductions()
	for name, c := range map[string]struct {
		m      *Introduce
		reason string
	}{
		"replayed nonce": {m, ReasonReplay},
		"stale":          {&Introduce{Nonce: newID(), Time: time.Now().Add(-time.Hour).UnixMilli(), Peer: y.id}, ReasonReplay},
		"other domain":   {&Introduce{Nonce: newID(), Time: time.Now().UnixMilli(), Peer: "spiffe://other.example/site/b/node/y"}, ReasonOtherDomain},
		"policy":         {&Introduce{Nonce: newID(), Time: time.Now().UnixMilli(), Peer: z.id}, ReasonDenied},
		"not connected":  {&Introduce{Nonce: newID(), Time: time.Now().UnixMilli(), Peer: "spiffe://" + f.td.Name() + "/site/b/node/gone"}, ReasonNotConnected},
		"not a node":     {&Introduce{Nonce: newID(), Time: time.Now().UnixMilli(), Peer: "spiffe://" + f.td.Name() + "/control"}, ReasonBadRequest},
	} {
		before := f.metric(refused(c.reason))
		_, err := x.c.introduce(ctx, c.m)
		var re *Error
		if !errors.As(err, &re) || re.Reason != c.reason {
			t.Errorf("%s: got %v, want refusal %s", name, err, c.reason)
		}
		if got := f.metric(refused(c.reason)); got != before+1 {
			t.Errorf("%s: %s counted %v → %v", name, c.reason, before, got)
		}
	}
	// Nothing was forwarded for the refused ones.
	if got := f.metric("fogmesh_relay_introductions_total"); got != 1 {
		t.Errorf("introductions_total %v", got)
	}
	select {
	case got := <-y.c.Introductions():
		t.Errorf("y got a refused introduction %+v", got)
	case got := <-z.c.Introductions():
		t.Errorf("z got a refused introduction %+v", got)
	default:
	}
}

// TestRelaySessionLimit: a node takes part in at most MaxSessionsPerNode
// relayed sessions; the next Dial is refused with session_limit, and one
// ending frees a slot. A node cannot accept a session meant for another.
func TestRelaySessionLimit(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxSessionsPerNode = 2 })
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	z := f.node("site-c", "z")
	ctx := ctx20(t)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 2; i++ {
		done := make(chan error, 1)
		go func() {
			c, _, err := acceptOne(t, y)
			if err == nil {
				conns = append(conns, c)
			}
			done <- err
		}()
		c, err := x.c.DialPeer(ctx, y.id)
		if err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	_, err := x.c.DialPeer(ctx, y.id)
	var re *Error
	if !errors.As(err, &re) || re.Reason != ReasonSessionLimit {
		t.Fatalf("third session: %v", err)
	}
	// y is at its limit too, whoever dials it.
	if _, err := z.c.DialPeer(ctx, y.id); !errors.As(err, &re) || re.Reason != ReasonSessionLimit {
		t.Fatalf("z → y: %v", err)
	}
	if got := f.metric(refused(ReasonSessionLimit)); got != 2 {
		t.Errorf("session_limit counted %v", got)
	}

	conns[0].Close() // x's end of the first session
	conns[1].Close()
	waitFor(t, "a session slot of x freed", func() bool {
		f.srv.mu.Lock()
		defer f.srv.mu.Unlock()
		return f.srv.nodes[x.id].sessions == 1
	})

	// z dials x; y tries to take z's session: refused, x's session waits.
	dialed := make(chan error, 1)
	go func() {
		c, err := z.c.DialPeer(ctx, x.id)
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	var in Incoming
	select {
	case in = <-x.c.Incoming():
	case <-time.After(20 * time.Second):
		t.Fatal("x got no incoming session")
	}
	if _, err := y.c.AcceptSession(ctx, in.Session); !errors.As(err, &re) || re.Reason != ReasonUnknownSession {
		t.Fatalf("y accepting x's session: %v", err)
	}
	c, err := x.c.AcceptSession(ctx, in.Session)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-dialed; err != nil {
		t.Fatal(err)
	}
}

// TestRelayAcceptTimeout: a dialed peer that never accepts leaves the
// dialer with accept_timeout, and the slot is freed.
func TestRelayAcceptTimeout(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.AcceptTimeout = 200 * time.Millisecond; c.MaxSessionsPerNode = 1 })
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	for i := 0; i < 2; i++ { // the second proves the slot was freed
		_, err := x.c.DialPeer(ctx20(t), y.id)
		var re *Error
		if !errors.As(err, &re) || re.Reason != ReasonAcceptTimeout {
			t.Fatalf("dial %d: %v", i, err)
		}
		<-y.c.Incoming()
	}
}

// TestRelayBackpressure: a peer that stops reading blocks the writer
// (bounded buffers end to end) instead of growing the relay's memory: the
// sender's writes stall after at most the sockets' buffers plus the
// relay's copy buffer, far below what it tried to send.
func TestRelayBackpressure(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.BytesPerSecond = -1 })
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _, err := acceptOne(t, y)
		if err != nil {
			t.Error(err)
		}
		accepted <- c
	}()
	conn, err := x.c.DialPeer(ctx20(t), y.id)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	yc := <-accepted
	if yc == nil {
		t.FailNow()
	}
	defer yc.Close() // y never reads

	const limit = 256 << 20 // what an unbounded relay would swallow
	const bound = 64 << 20  // sockets' buffers + relay buffer, generously
	chunk := make([]byte, 256<<10)
	written := 0
	for written < limit {
		// A write that makes no progress for 2 s is blocked: the condition
		// this test waits for. A busy machine can only make it trip early
		// (with less written), never let an unbounded relay pass.
		conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
		n, err := conn.Write(chunk)
		written += n
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
			break
		}
	}
	if written >= limit {
		t.Fatalf("wrote %d MiB to a peer that does not read: no backpressure", written>>20)
	}
	if written > bound {
		t.Fatalf("wrote %d MiB before blocking, want at most %d", written>>20, bound>>20)
	}
	forwarded := f.metric("fogmesh_relay_bytes_total")
	if forwarded > float64(written) {
		t.Fatalf("relay read %v bytes, more than the %d written", forwarded, written)
	}
	t.Logf("writer blocked after %d KiB; relay read %v bytes", written>>10, forwarded)
}

// TestRelayUDPReflexive: the answer is the socket's address as the relay
// saw it, never larger than the request; bad tokens and short packets get
// no answer and are counted; the observed UDP address becomes a candidate
// in introductions.
func TestRelayUDPReflexive(t *testing.T) {
	f := newFixture(t, nil)
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ap, err := x.c.UDPReflexive(ctx20(t), pc, f.udp)
	if err != nil {
		t.Fatal(err)
	}
	if ap.String() != pc.LocalAddr().String() {
		t.Fatalf("reflexive %s, socket %s", ap, pc.LocalAddr())
	}
	if udpResponseLen > udpRequestLen {
		t.Fatalf("answer %d bytes > request %d bytes: amplification", udpResponseLen, udpRequestLen)
	}

	bad, _ := AppendUDPRequest(nil, newID())
	pc.WriteTo(bad, f.udp)
	pc.WriteTo(bad[:udpRequestLen-1], f.udp)
	waitFor(t, "bad udp counted", func() bool {
		return f.metric(refused(ReasonUDPBadToken)) == 1 && f.metric(refused(ReasonUDPShort)) == 1
	})
	if got := f.metric("fogmesh_relay_udp_reflexive_total"); got < 1 {
		t.Errorf("answers %v", got)
	}

	intro, err := y.c.Introduce(ctx20(t), x.id, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{x.c.Hello().Observed, ap.String()}
	if fmt.Sprint(intro.Candidates) != fmt.Sprint(want) {
		t.Fatalf("x's candidates %v, want %v", intro.Candidates, want)
	}
}

// relayedPair opens one relayed session from x to y and returns both ends.
func relayedPair(t *testing.T, x, y *testNode) (xc, yc net.Conn) {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, _, err := acceptOne(t, y)
		ch <- res{c, err}
	}()
	xc, err := x.c.DialPeer(ctx20(t), y.id)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		xc.Close()
		t.Fatal(r.err)
	}
	t.Cleanup(func() { xc.Close(); r.c.Close() })
	return xc, r.c
}

// TestRelayIdleTimeout: a session with no byte either way for IdleTimeout
// is closed at both ends; one moving bytes is not.
func TestRelayIdleTimeout(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.IdleTimeout = 300 * time.Millisecond })
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	xc, yc := relayedPair(t, x, y)
	for _, c := range []net.Conn{xc, yc} {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("an idle session stayed open")
		}
	}
	waitFor(t, "no active session", func() bool {
		f.srv.mu.Lock()
		defer f.srv.mu.Unlock()
		return f.srv.active == 0
	})
}

// TestRelayRateLimit: a node cannot send faster than BytesPerSecond: past
// the burst, the relay reads its bytes no faster than the rate. (A lower
// bound on time: a slow machine only makes it take longer.)
func TestRelayRateLimit(t *testing.T) {
	const rate, burst, total = 64 << 10, 16 << 10, 96 << 10
	f := newFixture(t, func(c *Config) { c.BytesPerSecond = rate; c.Burst = burst })
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	xc, yc := relayedPair(t, x, y)
	start := time.Now()
	go func() {
		xc.Write(make([]byte, total))
		xc.(*tls.Conn).CloseWrite()
	}()
	yc.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := io.Copy(io.Discard, yc)
	if err != nil || n != total {
		t.Fatalf("read %d, %v", n, err)
	}
	min := time.Duration(float64(total-burst) / rate * float64(time.Second))
	if d := time.Since(start); d < min {
		t.Fatalf("%d bytes in %v, faster than %d B/s allows (%v)", total, d, rate, min)
	}
}

// TestRelayCloseEndsEverything: Close with control connections, an open
// session and a pending one returns after every goroutine the relay
// started has ended, and the clients see their connections end.
func TestRelayCloseEndsEverything(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		f := newFixture(t, nil)
		x := f.node("site-a", "x")
		y := f.node("site-b", "y")
		xc, yc := relayedPair(t, x, y)
		pending := make(chan error, 1)
		go func() { _, err := x.c.DialPeer(ctx20(t), y.id); pending <- err }()
		waitFor(t, "a pending session", func() bool {
			f.srv.mu.Lock()
			defer f.srv.mu.Unlock()
			return len(f.srv.pending) == 1
		})
		f.srv.Close()
		if err := <-pending; err == nil {
			t.Error("a pending dial succeeded after Close")
		}
		for _, c := range []net.Conn{xc, yc} {
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("a session outlived Close")
			}
		}
		for _, n := range []*testNode{x, y} {
			select {
			case <-n.c.Done():
			case <-time.After(20 * time.Second):
				t.Fatal("a control connection outlived Close")
			}
			n.c.Close()
		}
		xc.Close()
		yc.Close()
	}()
	waitFor(t, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= base })
}

// TestRelayKeepAlive: Ping measures the round trip; a control connection
// silent for ControlTimeout is closed and counted, one kept alive by
// pings stays.
func TestRelayKeepAlive(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.ControlTimeout = 2 * time.Second })
	live := f.node("site-a", "live")
	if rtt, err := live.c.Ping(ctx20(t)); err != nil || rtt <= 0 {
		var b bytes.Buffer
		f.set.WritePrometheus(&b)
		t.Fatalf("ping: %v %v\n%s", rtt, err, b.String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); live.c.KeepAlive(ctx, 100*time.Millisecond) }()
	defer func() { cancel(); <-done }()
	silent := f.node("site-b", "silent")
	select {
	case <-silent.c.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("a silent control connection stayed open")
	}
	select {
	case <-live.c.Done():
		t.Fatalf("the pinging connection was closed too: %v", live.c.Err())
	default:
	}
	if got := f.metric(refused(ReasonControlTimeout)); got != 1 {
		t.Errorf("control_timeout counted %v", got)
	}
}

// TestRelayHandshakeLimit: with MaxHandshakes connections being
// authenticated (peers that connect and send nothing), the next one is
// closed at once as busy; once they go, nodes connect again.
func TestRelayHandshakeLimit(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxHandshakes = 2 })
	var idle []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	waitFor(t, "two handshakes in progress", func() bool { return f.metric("fogmesh_relay_handshakes_in_progress") == 2 })
	src := source(t, f.ca, "site-a", "x")
	if _, err := f.dial(src); err == nil {
		t.Fatal("a third connection was served past MaxHandshakes")
	}
	if got := f.metric(refused(ReasonBusy)); got != 1 {
		t.Errorf("busy counted %v", got)
	}
	for _, c := range idle {
		c.Close()
	}
	waitFor(t, "handshake slots free", func() bool { return f.metric("fogmesh_relay_handshakes_in_progress") == 0 })
	c, err := f.dial(src)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
