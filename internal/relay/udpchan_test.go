package relay

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// bindPair has x bind a UDP channel to y, y open it from UDPIncoming, and
// waits until the relay knows both sides.
func bindPair(t *testing.T, x, y *testNode) (cx, cy *UDPChannel) {
	t.Helper()
	type res struct {
		ch  *UDPChannel
		err error
	}
	got := make(chan res, 1)
	go func() {
		select {
		case in := <-y.c.UDPIncoming():
			if in.Peer != x.id {
				got <- res{nil, fmt.Errorf("incoming channel from %s, want %s", in.Peer, x.id)}
				return
			}
			ch, err := in.Open(ctx20(t))
			got <- res{ch, err}
		case <-time.After(20 * time.Second):
			got <- res{nil, errors.New("no incoming channel")}
		}
	}()
	cx, err := x.c.BindUDP(ctx20(t), y.id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cx.Close() })
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	cy = r.ch
	t.Cleanup(func() { cy.Close() })
	for _, ch := range []*UDPChannel{cx, cy} {
		if err := ch.WaitPeer(ctx20(t)); err != nil {
			t.Fatal(err)
		}
	}
	return cx, cy
}

// echoWorkloads is a node's workloads: every mesh stream goes to a TCP
// echo server on loopback; it records the peers it served.
type echoWorkloads struct {
	addr string
	dial DialFunc
	mu   sync.Mutex
	seen []spiffeid.ID
}

func newEchoWorkloads(t *testing.T, listen func(network, address string) (net.Listener, error), dial DialFunc) *echoWorkloads {
	t.Helper()
	ln, err := listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return &echoWorkloads{addr: ln.Addr().String(), dial: dial}
}

func (e *echoWorkloads) DialLocal(ctx context.Context, h transport.Header) (net.Conn, error) {
	if p, ok := transport.PeerFromContext(ctx); ok {
		e.mu.Lock()
		e.seen = append(e.seen, p.ID)
		e.mu.Unlock()
	}
	return e.dial(ctx, "tcp", e.addr)
}

func (e *echoWorkloads) peers() []spiffeid.ID {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]spiffeid.ID(nil), e.seen...)
}

// quicOver runs the mesh over QUIC on a UDP channel, as the path manager
// would: a QUICServer and a QUICClient on one transport; the client
// expects the channel's peer at its PeerAddr.
type quicOver struct {
	ch  *UDPChannel
	cli *transport.QUICClient
	w   *echoWorkloads
}

func startQUICOver(t *testing.T, src *identity.Source, ch *UDPChannel, w *echoWorkloads) *quicOver {
	t.Helper()
	tr := transport.NewQUICTransport(ch)
	srv, err := transport.NewQUICServer(transport.QUICServerConfig{Transport: tr, Dialer: w,
		TLS: src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background()) }()
	peer := spiffeid.RequireFromString(ch.Peer())
	_, self, _ := identity.ParseNodeID(src.SVID().ID)
	cli, err := transport.NewQUICClient(transport.QUICClientConfig{Transport: tr,
		TLS:        src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh),
		SourceNode: self, DialTimeout: 10 * time.Second,
		PeerID: func(addr string) spiffeid.ID {
			if addr == ch.PeerAddr().String() {
				return peer
			}
			return spiffeid.ID{}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cli.Close()
		srv.Close()
		<-served
		tr.Close()
	})
	return &quicOver{ch: ch, cli: cli, w: w}
}

// meshEcho opens a mesh stream from q to its channel's peer and echoes
// msg through the peer's workloads.
func (q *quicOver) meshEcho(ctx context.Context, msg string) error {
	conn, err := q.cli.Dial(ctx, q.ch.PeerAddr().String(), transport.Header{Namespace: "default", Service: "echo", Endpoint: "e1", Port: "tcp"})
	if err != nil {
		return fmt.Errorf("QUIC over the UDP channel: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(msg)); err != nil {
		return err
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
		return fmt.Errorf("echo = %q, %v; want %q", got, err, msg)
	}
	return nil
}

// TestUDPChannelCarriesQUICMesh: x binds a UDP channel to y through the
// relay; both get the same channel, and the mesh runs over QUIC on it in
// both directions, end to end: the marker inside crosses the relay but is
// never in what it forwarded. Closing one side closes the other's.
func TestUDPChannelCarriesQUICMesh(t *testing.T) {
	f := newFixture(t, nil)
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	cx, cy := bindPair(t, x, y)
	if cx.Channel() != cy.Channel() || cx.Peer() != y.id || cy.Peer() != x.id || !cx.Binder() || cy.Binder() {
		t.Fatalf("channels %s/%s peers %s/%s binder %v/%v", cx.Channel(), cy.Channel(), cx.Peer(), cy.Peer(), cx.Binder(), cy.Binder())
	}
	if got := f.metric("fogmesh_relay_udp_channels_active"); got != 1 {
		t.Errorf("udp_channels_active = %v, want 1", got)
	}

	qx := startQUICOver(t, x.src, cx, newEchoWorkloads(t, net.Listen, (&net.Dialer{}).DialContext))
	qy := startQUICOver(t, y.src, cy, newEchoWorkloads(t, net.Listen, (&net.Dialer{}).DialContext))
	if err := qx.meshEcho(ctx20(t), marker+" from x"); err != nil {
		t.Fatal(err)
	}
	if err := qy.meshEcho(ctx20(t), marker+" from y"); err != nil {
		t.Fatal(err)
	}
	if p := qy.w.peers(); len(p) != 1 || p[0].String() != x.id {
		t.Errorf("y's workloads served %v, want %s", p, x.id)
	}
	if p := qx.w.peers(); len(p) != 1 || p[0].String() != y.id {
		t.Errorf("x's workloads served %v, want %s", p, y.id)
	}

	f.tapMu.Lock()
	seen := f.tapped[cx.Channel()]
	f.tapMu.Unlock()
	if len(seen) < 2*len(marker) {
		t.Fatalf("the relay forwarded %d bytes on the channel", len(seen))
	}
	if bytes.Contains(seen, []byte(marker)) {
		t.Fatal("the relay saw the plaintext: QUIC is not end to end")
	}
	if got := f.metric("fogmesh_relay_udp_bytes_total"); got < float64(len(seen)) {
		t.Errorf("udp_bytes_total = %v, want at least the %d bytes forwarded", got, len(seen))
	}

	cx.Close()
	select {
	case <-cy.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("y's side is still open after x closed the channel")
	}
	if !errors.Is(cy.Err(), ErrUDPChannelClosed) || !strings.Contains(cy.Err().Error(), "closed by the peer") {
		t.Errorf("y's channel ended with %v", cy.Err())
	}
	waitFor(t, "no active channel", func() bool { return f.metric("fogmesh_relay_udp_channels_active") == 0 })
}

// relayChan returns the relay's state of a channel.
func relayChan(t *testing.T, f *fixture, id [udpChanIDLen]byte) *udpChan {
	t.Helper()
	f.srv.mu.Lock()
	defer f.srv.mu.Unlock()
	ch := f.srv.udpChans[id]
	if ch == nil {
		t.Fatal("the relay has no such channel")
	}
	return ch
}

// sideAddr is where the relay forwards a side's datagrams (loopback:
// the port tells the sockets apart).
func sideAddr(ch *udpChan, side int) int {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return int(ch.sides[side].addr.Port()) // 0 until the side is seen
}

func port(a net.Addr) int { return a.(*net.UDPAddr).Port }

// readChan reads one datagram from ch within 10 s.
func readChan(t *testing.T, ch *UDPChannel) string {
	t.Helper()
	ch.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer ch.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	n, from, err := ch.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if from.String() != ch.PeerAddr().String() {
		t.Errorf("datagram from %s, want the pseudo address %s", from, ch.PeerAddr())
	}
	return string(buf[:n])
}

// readRaw reads one datagram from pc within 10 s.
func readRaw(t *testing.T, pc net.PacketConn) []byte {
	t.Helper()
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// TestUDPChannelRefusesForgedSpoofedReplayed attacks a channel from
// another socket: forged tags, the other side's key, a recorded datagram
// sent again, an unknown channel and a truncated datagram are refused and
// counted, and the relay keeps forwarding to the real agent. Only a
// datagram sealed with the side's key and a fresh sequence number moves
// the side's address (NAT rebinding), and the relay never answers with
// more bytes than it received.
func TestUDPChannelRefusesForgedSpoofedReplayed(t *testing.T) {
	f := newFixture(t, nil)
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	// No keepalive during the test: x's address moves only when the test
	// says so.
	x.c.SetUDPOptions(UDPOptions{KeepAlive: time.Hour})
	cx, cy := bindPair(t, x, y)
	waitFor(t, "x's fast keepalives to end", cx.slow.Load)
	rc := relayChan(t, f, cx.id)
	if got := sideAddr(rc, 0); got != port(cx.LocalAddr()) {
		t.Fatalf("the relay sends x's datagrams to port %d, want %s", got, cx.LocalAddr())
	}
	atk, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer atk.Close()
	send := func(p []byte) {
		t.Helper()
		if _, err := atk.WriteTo(p, f.udp); err != nil {
			t.Fatal(err)
		}
	}
	// yToX has y send msg and checks it reaches x, not the attacker.
	yToX := func(msg string) {
		t.Helper()
		if _, err := cy.WriteTo([]byte(msg), cy.PeerAddr()); err != nil {
			t.Fatal(err)
		}
		if got := readChan(t, cx); got != msg {
			t.Fatalf("x read %q, want %q (a refused datagram got through?)", got, msg)
		}
	}
	xToY := func(msg string) {
		t.Helper()
		if _, err := cx.WriteTo([]byte(msg), cx.PeerAddr()); err != nil {
			t.Fatal(err)
		}
		if got := readChan(t, cy); got != msg {
			t.Fatalf("y read %q, want %q (a refused datagram got through?)", got, msg)
		}
	}
	xToY("hello")
	yToX("hello back")
	xToY("") // an empty datagram is one too

	// A forged tag (a guessed key) for x's side, from the attacker.
	guess := hmac.New(sha256.New, bytes.Repeat([]byte{7}, udpKeyLen))
	send(appendSealed(nil, udpTypeData, cx.id, 0, cx.seq.Load()+10, []byte("forged"), guess))
	// y's own key claiming x's side: one side cannot speak for the other.
	cy.macMu.Lock()
	send(appendSealed(nil, udpTypeData, cx.id, 0, cx.seq.Load()+10, []byte("other side's key"), cy.mac))
	cy.macMu.Unlock()
	// x's keepalive recorded on the wire and sent again from elsewhere.
	cx.macMu.Lock()
	recorded := appendSealed(nil, udpTypeKeep, cx.id, 0, 1, []byte{0}, cx.mac)
	cx.macMu.Unlock()
	send(recorded)
	// A flipped payload bit under x's valid tag.
	cx.macMu.Lock()
	tampered := appendSealed(nil, udpTypeData, cx.id, 0, cx.seq.Add(1), []byte("tampered"), cx.mac)
	cx.macMu.Unlock()
	tampered[udpSealedHdr] ^= 1
	send(tampered)
	// An unknown channel and a truncated datagram.
	other := cx.id
	other[0] ^= 0xff
	send(appendSealed(nil, udpTypeData, other, 0, 1, []byte("x"), guess))
	send(recorded[:udpSealedOver-1])
	waitFor(t, "every attack counted", func() bool {
		return f.metric(refused(ReasonUDPBadTag)) == 3 && f.metric(refused(ReasonUDPReplay)) == 1 &&
			f.metric(refused(ReasonUDPUnknownChannel)) == 1 && f.metric(refused(ReasonUDPMalformed)) == 1
	})
	if got := sideAddr(rc, 0); got != port(cx.LocalAddr()) {
		t.Fatalf("after the attacks the relay sends x's datagrams to port %d, want %s", got, cx.LocalAddr())
	}
	xToY("still x") // none of the attacks reached y before this
	yToX("still y")

	// x's NAT rebinds: a keepalive sealed with x's key and a fresh seq
	// from the new address moves x there. The answer is no larger than
	// the keepalive.
	cx.macMu.Lock()
	keep := appendSealed(nil, udpTypeKeep, cx.id, 0, cx.seq.Add(100), []byte{0}, cx.mac)
	cx.macMu.Unlock()
	send(keep)
	ack := readRaw(t, atk)
	if len(ack) > len(keep) {
		t.Fatalf("answer of %d bytes to a keepalive of %d: amplification", len(ack), len(keep))
	}
	sp, err := parseSealed(ack)
	if err != nil || sp.Type != udpTypeAck || sp.Body[0]&udpAckPeerKnown == 0 {
		t.Fatalf("answer %+v, %v", sp, err)
	}
	const msg = "to x's new address"
	if _, err := cy.WriteTo([]byte(msg), nil); err != nil {
		t.Fatal(err)
	}
	fwd := readRaw(t, atk)
	if id, payload, err := parseForward(fwd); err != nil || id != cx.id || string(payload) != msg {
		t.Fatalf("forwarded %q (%v)", fwd, err)
	}
	if len(fwd) >= len(msg)+UDPChannelOverhead {
		t.Errorf("forwarded %d bytes for %d received: more than received", len(fwd), len(msg)+UDPChannelOverhead)
	}
	// x sends again, with a fresh seq past the attacker's, and is back.
	cx.seq.Add(100)
	xToY("x is back")
	yToX("to x again")
}

// TestUDPChannelLimits: the per-node channel limit, the byte budget
// (datagrams over it dropped and counted), an unconnected peer, the idle
// timeout, a channel the peer never opens, the end of a side's control
// connection, and a relay without UDP.
func TestUDPChannelLimits(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.MaxUDPChannelsPerNode = 1
		c.UDPIdleTimeout = 2 * time.Second
		c.AcceptTimeout = 2 * time.Second
		c.BytesPerSecond = 1000
		c.Burst = 20_000
	})
	x := f.node("site-a", "x")
	y := f.node("site-b", "y")
	z := f.node("site-c", "z")
	for _, n := range []*testNode{x, y, z} {
		n.c.SetUDPOptions(UDPOptions{KeepAlive: time.Hour})
	}
	cx, cy := bindPair(t, x, y)

	var re *Error
	if _, err := x.c.BindUDP(ctx20(t), z.id); !errors.As(err, &re) || re.Reason != ReasonUDPChannelLimit {
		t.Fatalf("second channel of x: %v, want %s", err, ReasonUDPChannelLimit)
	}
	if _, err := z.c.BindUDP(ctx20(t), y.id); !errors.As(err, &re) || re.Reason != ReasonUDPChannelLimit {
		t.Fatalf("second channel of y: %v, want %s", err, ReasonUDPChannelLimit)
	}
	gone := source(t, f.ca, "site-d", "gone").SVID().ID.String()
	if _, err := z.c.BindUDP(ctx20(t), gone); !errors.As(err, &re) || re.Reason != ReasonNotConnected {
		t.Fatalf("channel to an unconnected node: %v, want %s", err, ReasonNotConnected)
	}

	// 40 datagrams of 1000 bytes against a burst of 20 000 bytes at
	// 1000 bytes/s: about half are dropped at the relay.
	payload := bytes.Repeat([]byte{'u'}, 1000)
	for range 40 {
		if _, err := cx.WriteTo(payload, nil); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "datagrams over the budget dropped", func() bool { return f.metric(refused(ReasonUDPRateLimit)) >= 15 })
	if got := f.metric("fogmesh_relay_udp_bytes_total"); got > 25_000 {
		t.Errorf("forwarded %v bytes, over the budget", got)
	}

	// No datagram for UDPIdleTimeout: the relay closes the channel and
	// tells both.
	for _, ch := range []*UDPChannel{cx, cy} {
		select {
		case <-ch.Done():
		case <-time.After(20 * time.Second):
			t.Fatal("idle channel still open")
		}
		if !strings.Contains(fmt.Sprint(ch.Err()), "idle") {
			t.Errorf("channel ended with %v, want idle", ch.Err())
		}
	}
	waitFor(t, "no active channel", func() bool { return f.metric("fogmesh_relay_udp_channels_active") == 0 })

	// z never opens the channel x binds to it: the relay closes it after
	// AcceptTimeout, and x's WaitPeer says so.
	cz, err := x.c.BindUDP(ctx20(t), z.id)
	if err != nil {
		t.Fatal(err)
	}
	defer cz.Close()
	if err := cz.WaitPeer(ctx20(t)); !errors.Is(err, ErrUDPChannelClosed) {
		t.Fatalf("WaitPeer on a channel never opened: %v", err)
	}

	// A side's control connection ends: the other side's channel ends.
	cx2, _ := bindPair(t, x, y)
	y.c.Close()
	select {
	case <-cx2.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("channel still open after the peer left the relay")
	}
	if !strings.Contains(fmt.Sprint(cx2.Err()), "disconnected") {
		t.Errorf("channel ended with %v, want the peer disconnected", cx2.Err())
	}
	waitFor(t, "no active channel", func() bool { return f.metric("fogmesh_relay_udp_channels_active") == 0 })

	// A relay with no UDP socket refuses.
	srv, err := New(Config{Source: source(t, f.ca, "relay", "tcp-only")})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	defer func() { srv.Close(); <-done }()
	c, err := DialClient(ctx20(t), ln.Addr().String(), x.src.ClientConfig(AuthorizeRelay(f.td)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.BindUDP(ctx20(t), z.id); !errors.As(err, &re) || re.Reason != ReasonUDPUnavailable {
		t.Fatalf("bind on a relay without UDP: %v, want %s", err, ReasonUDPUnavailable)
	}
}

// TestReplayWindow: each sequence number once, within 64 of the highest.
func TestReplayWindow(t *testing.T) {
	var w replayWindow
	for _, c := range []struct {
		seq        uint64
		ok, newest bool
	}{
		{0, false, false}, {1, true, true}, {1, false, false}, {3, true, true}, {2, true, false}, {2, false, false},
		{100, true, true}, {36, false, false}, {37, true, false}, {37, false, false}, {99, true, false}, {1000, true, true},
		{999, true, false}, {936, false, false},
	} {
		if ok, newest := w.accept(c.seq); ok != c.ok || newest != c.newest {
			t.Errorf("seq %d: ok %v newest %v, want %v %v", c.seq, ok, newest, c.ok, c.newest)
		}
	}
}

// FuzzUDPChannelDatagram: no datagram crashes the channel parsers, and
// what they accept is consistent with its length.
func FuzzUDPChannelDatagram(f *testing.F) {
	var id [udpChanIDLen]byte
	copy(id[:], "0123456789abcdef")
	mac := hmac.New(sha256.New, bytes.Repeat([]byte{1}, udpKeyLen))
	f.Add(appendSealed(nil, udpTypeData, id, 0, 1, []byte("quic packet"), mac))
	f.Add(appendSealed(nil, udpTypeKeep, id, 1, 2, []byte{0}, mac))
	f.Add(appendSealed(nil, udpTypeAck, id, 1, 2, []byte{1}, mac))
	f.Add(appendSealed(nil, udpTypeKeep, id, 1, 2, nil, mac))
	f.Add(append(append([]byte(udpMagic+"\x05"), id[:]...), "payload"...))
	f.Add([]byte(udpMagic + "\x03"))
	f.Fuzz(func(t *testing.T, p []byte) {
		if sp, err := parseSealed(p); err == nil {
			if len(sp.Body) != len(p)-udpSealedOver || sp.Side > 1 || (sp.Type != udpTypeData && len(sp.Body) < 1) {
				t.Fatalf("accepted %+v from %d bytes", sp, len(p))
			}
			sp.verify(mac)
		}
		if _, payload, err := parseForward(p); err == nil && len(payload) != len(p)-udpFwdHdr {
			t.Fatalf("payload of %d bytes from %d", len(payload), len(p))
		}
		_ = isChannelPacket(p)
	})
}

// recordingConn is a relay socket that records the size of what the
// relay sends.
type recordingConn struct {
	net.PacketConn // nil: only WriteTo and LocalAddr are used
	sent           []int
}

func (c *recordingConn) WriteTo(p []byte, _ net.Addr) (int, error) {
	c.sent = append(c.sent, len(p))
	return len(p), nil
}

func (c *recordingConn) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 7073}
}

// FuzzRelayUDPDatagram feeds datagrams to a real relay's UDP handler
// with one open channel whose sides are known: none crashes it, and it
// never sends more bytes than it received (no amplification), whatever
// it answers or forwards.
func FuzzRelayUDPDatagram(f *testing.F) {
	ca := newCA(f)
	srv, err := New(Config{Source: source(f, ca, "relay", "r1")})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	keys := [2][]byte{bytes.Repeat([]byte{1}, udpKeyLen), bytes.Repeat([]byte{2}, udpKeyLen)}
	var id [udpChanIDLen]byte
	copy(id[:], "0123456789abcdef")
	addrs := [2]netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.2:2")}
	ch := &udpChan{id: id, hexID: "fuzz", created: time.Now(), last: time.Now()}
	for i := range ch.sides {
		ch.sides[i] = udpSide{node: &node{}, mac: hmac.New(sha256.New, keys[i]), addr: addrs[i]}
	}
	srv.udpChans[id] = ch
	seal := func(typ byte, side byte, seq uint64, body []byte) []byte {
		return appendSealed(nil, typ, id, side, seq, body, hmac.New(sha256.New, keys[side]))
	}
	f.Add(seal(udpTypeData, 0, 1, []byte("quic packet")))
	f.Add(seal(udpTypeData, 1, 5, []byte("quic packet back")))
	f.Add(seal(udpTypeKeep, 0, 2, []byte{0}))
	f.Add(seal(udpTypeKeep, 1, 1<<40, []byte{0, 0, 0}))
	f.Add(seal(udpTypeAck, 0, 3, []byte{1}))
	f.Add(seal(udpTypeData, 0, 0, nil))
	req, _ := AppendUDPRequest(nil, strings.Repeat("ab", 16))
	f.Add(req)
	f.Add([]byte(udpMagic + "\x05"))
	f.Fuzz(func(t *testing.T, p []byte) {
		pc := &recordingConn{}
		sock := newUDPSock(pc)
		ch.mu.Lock()
		for i := range ch.sides {
			ch.sides[i].win = replayWindow{} // every run starts fresh
			ch.sides[i].addr, ch.sides[i].sock = addrs[i], sock
		}
		ch.mu.Unlock()
		n := len(p)
		srv.handleUDP(sock, append([]byte(nil), p...), netip.MustParseAddrPort("192.0.2.1:9"))
		for _, s := range pc.sent {
			if s > n {
				t.Fatalf("sent %d bytes for a datagram of %d", s, n)
			}
		}
	})
}
