package punch

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/fogmesh/fogmesh/internal/relay"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// loopPuncher is a Puncher on a fresh loopback socket.
func loopPuncher(t *testing.T, self string, mod func(*Config)) (*Puncher, *quic.Transport) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := transport.NewQUICTransport(pc)
	cfg := Config{Transport: tr, Self: self}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); tr.Close(); pc.Close() })
	return p, tr
}

// waitStats polls p's counters until cond holds or 10 s pass.
func waitStats(t *testing.T, p *Puncher, what string, cond func(Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond(p.Stats()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, p.Stats())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestPunchRefusesForgedAndReplayedProbes: the test plays the peer from a
// plain loopback socket. Our own probe sent back, a forged MAC, a probe of
// another introduction, a replayed request and an unsolicited response are
// refused and counted, and none is answered; a genuine request is
// answered, a genuine answer wins the path, and the same introduction
// punched again is refused as a replay.
func TestPunchRefusesForgedAndReplayedProbes(t *testing.T) {
	p, tr := loopPuncher(t, idA, func(c *Config) { c.Timeout = 20 * time.Second; c.KeepAlive = time.Hour })
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	me := tr.Conn.LocalAddr().(*net.UDPAddr)
	key := testKey(t, testNonce) // idA sorts first: role 0; the peer is role 1
	in := relay.Introduced{Nonce: testNonce, Peer: idB, Candidates: []string{peer.LocalAddr().String(), "bogus", "0.0.0.0:9"}}

	type res struct {
		path *Path
		err  error
	}
	done := make(chan res, 1)
	go func() { pa, err := p.Punch(context.Background(), in); done <- res{pa, err} }()

	buf := make([]byte, 2048)
	read := func() []byte {
		t.Helper()
		peer.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _, err := peer.ReadFromUDP(buf)
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Clone(buf[:n])
	}
	send := func(b []byte) {
		t.Helper()
		if _, err := peer.WriteToUDP(b, me); err != nil {
			t.Fatal(err)
		}
	}
	// A request of the Puncher's, genuine.
	req := read()
	pr, err := ParseProbe(req)
	if err != nil || pr.Kind != KindRequest || pr.Role != 0 || !key.Verify(pr, req) {
		t.Fatalf("first datagram %x: %+v, %v", req, pr, err)
	}
	base := p.Stats()

	send(req) // reflected: our own role
	forged := key.Append(nil, KindRequest, 1, 1000)
	forged[ProbeSize-1] ^= 0xff
	send(forged)
	otherKey := testKey(t, "ffeeddccbbaa99887766554433221100")
	send(otherKey.Append(nil, KindRequest, 1, 1001)) // another introduction: unknown session
	send(make([]byte, 3000))                         // oversized: not a probe
	send(append([]byte("\x00FMP"), make([]byte, 100)...))
	send(key.Append(nil, KindResponse, 1, 1<<40)) // answers nothing we sent
	waitStats(t, p, "refusals", func(s Stats) bool {
		return s.Reflected > base.Reflected && s.BadMAC > base.BadMAC && s.UnknownSession > base.UnknownSession &&
			s.NotProbe > base.NotProbe && s.Malformed > base.Malformed && s.Unsolicited > base.Unsolicited
	})
	if s := p.Stats(); s.Answered != 0 || s.Responses != 0 {
		t.Fatalf("a refused probe was answered or accepted: %+v", s)
	}

	// A genuine request is answered (skip the Puncher's own requests).
	ourReq := key.Append(nil, KindRequest, 1, 5)
	send(ourReq)
	for {
		b := read()
		q, err := ParseProbe(b)
		if err != nil {
			t.Fatal(err)
		}
		if q.Kind == KindResponse {
			if q.Seq != 5 || q.Role != 0 || !key.Verify(q, b) {
				t.Fatalf("answer %+v", q)
			}
			break
		}
	}
	// The same request again is a replay: counted, not answered.
	send(ourReq)
	waitStats(t, p, "the replay counted", func(s Stats) bool { return s.Replayed == 1 })
	if s := p.Stats(); s.Answered != 1 {
		t.Fatalf("answered %d requests, want 1", s.Answered)
	}

	// Answer a fresh request of the Puncher's: the path is won.
	for {
		b := read()
		q, err := ParseProbe(b)
		if err != nil {
			t.Fatal(err)
		}
		if q.Kind == KindRequest {
			send(key.Append(nil, KindResponse, 1, q.Seq))
			break
		}
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.path.Close()
	want := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	if r.path.Addr != want || r.path.Peer != idB || !r.path.Dials {
		t.Fatalf("path %+v, want Addr %s, Peer %s, Dials", r.path, want, idB)
	}
	if r.path.LastSeen().IsZero() {
		t.Error("LastSeen not set")
	}

	// The same introduction again: refused as a replay.
	if _, err := p.Punch(context.Background(), in); !errors.Is(err, ErrIntroReplay) {
		t.Fatalf("second Punch of the same nonce: %v, want ErrIntroReplay", err)
	}
	if p.Stats().IntroReplayed != 1 {
		t.Errorf("IntroReplayed = %d", p.Stats().IntroReplayed)
	}
}

// TestPunchGivesUpWithinTimeout: a peer that never answers fails the
// punch with ErrNoPath after Timeout, not much later.
func TestPunchGivesUpWithinTimeout(t *testing.T) {
	p, _ := loopPuncher(t, idB, func(c *Config) { c.Timeout = 300 * time.Millisecond })
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	start := time.Now()
	_, err = p.Punch(context.Background(), relay.Introduced{Nonce: testNonce, Peer: idA, Candidates: []string{silent.LocalAddr().String()}})
	el := time.Since(start)
	if !errors.Is(err, ErrNoPath) {
		t.Fatalf("err = %v, want ErrNoPath", err)
	}
	if el < 300*time.Millisecond || el > 3*time.Second {
		t.Fatalf("gave up after %s, want about 300ms", el)
	}
	if s := p.Stats(); s.Sent < 2 {
		t.Errorf("sent %d probes, want several rounds", s.Sent)
	}
	if _, err := p.Punch(context.Background(), relay.Introduced{Nonce: testNonce, Peer: idA}); !errors.Is(err, ErrIntroReplay) {
		t.Errorf("a failed introduction punched again: %v, want ErrIntroReplay", err)
	}
	// Keys are checked before anything is sent.
	if _, err := p.Punch(context.Background(), relay.Introduced{Nonce: "x", Peer: idA}); err == nil {
		t.Error("a bad nonce punched")
	}
	if _, err := p.Punch(context.Background(), relay.Introduced{Nonce: "aa112233445566778899aabbccddeeff", Peer: idB}); err == nil {
		t.Error("an introduction to ourselves punched")
	}
}

// TestPunchLoopbackThroughRelay: two nodes on loopback, introduced by a
// real relay, punch to each other; one of them could not get a reflexive
// address (its relay UDP port was a silent socket) and still punches on
// its local candidate, so a failed gathering leaves the socket usable.
func TestPunchLoopbackThroughRelay(t *testing.T) {
	ca := newCA(t)
	srv, err := relay.New(relay.Config{Source: source(t, ca, "relay", "r1")})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rpc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{}, 2)
	go func() { srv.Serve(ln); served <- struct{}{} }()
	go func() { srv.ServeUDP(rpc); served <- struct{}{} }()
	t.Cleanup(func() { srv.Close(); <-served; <-served })
	silent, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	type node struct {
		id    string
		rc    *relay.Client
		p     *Puncher
		cands Candidates
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	join := func(name string, relayUDP net.Addr) (node, error) {
		src := source(t, ca, "s", name)
		rc, err := relay.DialClient(ctx, ln.Addr().String(), src.ClientConfig(relay.AuthorizeRelay(ca.TrustDomain())))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rc.Close() })
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cands, gerr := Gather(ctx, rc, pc, relayUDP, 300*time.Millisecond)
		tr := transport.NewQUICTransport(pc)
		p, err := New(Config{Transport: tr, Self: src.SVID().ID.String()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close(); tr.Close(); pc.Close() })
		return node{src.SVID().ID.String(), rc, p, cands}, gerr
	}
	x, err := join("x", silent.LocalAddr())
	if !errors.Is(err, ErrUDPBlocked) || x.cands.Reflexive.IsValid() || len(x.cands.Local) != 1 {
		t.Fatalf("x: gather against a silent port: %+v, %v; want local only and ErrUDPBlocked", x.cands, err)
	}
	y, err := join("y", rpc.LocalAddr())
	if err != nil || !y.cands.Reflexive.IsValid() {
		t.Fatalf("y: gather: %+v, %v", y.cands, err)
	}
	done := make(chan error, 1)
	var yp *Path
	go func() {
		var err error
		yp, err = y.p.Accept(ctx, y.rc)
		done <- err
	}()
	xp, err := x.p.Connect(ctx, x.rc, y.id, x.cands.Strings())
	if err != nil {
		t.Fatal(err)
	}
	defer xp.Close()
	if err := <-done; err != nil {
		t.Fatalf("y: %v", err)
	}
	defer yp.Close()
	if xp.Addr != y.cands.Local[0] || yp.Addr != x.cands.Local[0] || xp.Dials == yp.Dials || xp.Dials != (x.id < y.id) {
		t.Fatalf("paths x %+v, y %+v; candidates x %+v, y %+v", xp, yp, x.cands, y.cands)
	}
}

// recordLog is a slog handler keeping every record's message and reason.
type recordLog struct {
	mu   sync.Mutex
	recs []string // "LEVEL message reason=R"
}

func (h *recordLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordLog) WithGroup(string) slog.Handler            { return h }
func (h *recordLog) Handle(_ context.Context, r slog.Record) error {
	line := r.Level.String() + " " + r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "reason" {
			line += " reason=" + a.Value.String()
		}
		return true
	})
	h.mu.Lock()
	h.recs = append(h.recs, line)
	h.mu.Unlock()
	return nil
}

func (h *recordLog) matching(sub string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.recs {
		if strings.Contains(r, sub) {
			out = append(out, r)
		}
	}
	return out
}

// TestPunchLogsRefusals: forged probes are logged, not only counted, and
// a flood of them makes one log line, not one per probe.
func TestPunchLogsRefusals(t *testing.T) {
	logs := &recordLog{}
	p, tr := loopPuncher(t, idA, func(c *Config) {
		c.Timeout = 20 * time.Second
		c.KeepAlive = time.Hour
		c.Logger = slog.New(logs)
	})
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Punch(ctx, relay.Introduced{Nonce: testNonce, Peer: idB, Candidates: []string{peer.LocalAddr().String()}})
	}()
	defer func() { cancel(); <-done }()
	// Wait for the session: the Puncher's first request reaches the peer.
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := peer.ReadFromUDP(make([]byte, 2048)); err != nil {
		t.Fatal(err)
	}
	key := testKey(t, testNonce)
	me := tr.Conn.LocalAddr().(*net.UDPAddr)
	for i := range 20 {
		forged := key.Append(nil, KindRequest, 1, uint64(100+i))
		forged[ProbeSize-1] ^= 0xff
		if _, err := peer.WriteToUDP(forged, me); err != nil {
			t.Fatal(err)
		}
	}
	waitStats(t, p, "20 forged probes", func(s Stats) bool { return s.BadMAC >= 20 })
	if got := logs.matching("reason=bad_mac"); len(got) != 1 {
		t.Fatalf("log lines about the forged probes: %q, want exactly one", got)
	}
}

// TestDatagramsRightAfterNewAreCounted: a datagram that arrives right after
// New, once the transport reads its socket (a Punch's first probe starts
// it) but before the read loop has run, is still read. quic-go drops
// non-QUIC datagrams until ReadNonQUICPacket is first called. With one
// processor and the race detector's scheduling (as make test runs it) the
// transport's reader ran before the read loop in 4 of 4 runs without New's
// own first call, and the datagram was lost; without -race the read loop
// happens to run first and the test cannot tell.
func TestDatagramsRightAfterNewAreCounted(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	tr := transport.NewQUICTransport(pc)
	defer tr.Close()
	p, err := New(Config{Transport: tr, Self: idA})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := tr.WriteTo([]byte("\x00hello"), peer.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.WriteTo([]byte("\x00not a probe"), pc.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	waitStats(t, p, "the datagram counted", func(s Stats) bool { return s.NotProbe+s.Malformed == 1 })
}
