package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/quic-go/quic-go"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// meshHandshakes reads fogmesh_tls_handshakes_in_progress{port="mesh"} of
// set (-1 when absent).
func meshHandshakes(set *metrics.Set) int {
	return metricInt(set, `fogmesh_tls_handshakes_in_progress{port="mesh"}`)
}

// quicRetries reads fogmesh_mesh_quic_retries_total of set (-1 when absent).
func quicRetries(set *metrics.Set) int { return metricInt(set, `fogmesh_mesh_quic_retries_total`) }

func metricInt(set *metrics.Set, series string) int {
	for line := range strings.Lines(metricsText(set)) {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var n int
			fmt.Sscan(v, &n)
			return n
		}
	}
	return -1
}

// stalledQUIC starts n QUIC handshakes to addr from ip, each from a socket
// of its own, that stall at the client's certificate until the returned
// func is called (or the test ends): peers whose address is real (they
// answer a Retry) but that never finish. Their dial errors arrive on the
// channel.
func stalledQUIC(t *testing.T, n int, ip, addr string, cli *identity.Source) (giveUp func(), errs <-chan error) {
	t.Helper()
	release := make(chan struct{})
	giveUp = sync.OnceFunc(func() { close(release) })
	ch := make(chan error, n)
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		tr := udpTransportOn(t, net.ParseIP(ip))
		conf := cli.ClientConfig(identity.AuthorizeNode(), ALPNMeshQUIC)
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			<-release
			return nil, errors.New("the stalled client gives up")
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			qc, err := tr.Dial(ctx, to, conf, &quic.Config{HandshakeIdleTimeout: time.Minute})
			if err == nil {
				qc.CloseWithError(0, "")
			}
			ch <- err
		}()
	}
	t.Cleanup(giveUp) // before the transports close (cleanups run last first)
	return giveUp, ch
}

// TestQUICHandshakeSourceBound: QUIC handshakes from one source that do
// not finish hold at most the per-source bound of the QUIC mesh server's
// handshake slots: past half of it the source must answer a Retry first
// (address validation), and past the bound its connections are refused at
// once (CONNECTION_REFUSED, counted as source_busy) before any TLS work. A
// peer from another address still authenticates and streams, and holds no
// slot after; when the stalled handshakes fail, their slots come back.
func TestQUICHandshakeSourceBound(t *testing.T) {
	p := newQUICPair(t)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	ts := startQUICServer(t, nil, p.srvSrc, mapDialer{"web-1": work}, func(c *QUICServerConfig) {
		c.HeaderTimeout = time.Minute // the stalled handshakes outlive the test
		c.MaxHandshakes, c.MaxHandshakesPerSource = 16, 4
	})
	refused := func() uint64 { return TLSFailures(ts.metrics, "in", identity.ReasonSourceBusy) }

	giveUp, errs := stalledQUIC(t, 6, "127.65.3.1", ts.addr, p.cli)
	for range 2 { // refused at once, not at a timeout
		select {
		case err := <-errs:
			var te *quic.TransportError
			if !errors.As(err, &te) || te.ErrorCode != quic.ConnectionRefused {
				t.Fatalf("a handshake over the source's bound: %v, want CONNECTION_REFUSED", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("2 handshakes over the source's bound not refused; %d in progress", meshHandshakes(ts.metrics))
		}
	}
	// Counted per Initial packet: a ClientHello may take two.
	eventually(t, "4 handshakes in progress, 2 refused", func() bool {
		return meshHandshakes(ts.metrics) == 4 && refused() >= 2
	})
	if n := quicRetries(ts.metrics); n < 4 { // the 3rd to 6th: past half the source's bound
		t.Fatalf("%d Retries sent, want at least 4", n)
	}
	c, _ := quicClient(t, p.cli, "node-a", func(cc *QUICClientConfig) {
		cc.Transport = udpTransportOn(t, net.ParseIP("127.65.3.2"))
	})
	dialRoundTrip(t, c, ts.addr, "web-1", "authenticated past the stalled handshakes")
	if n := meshHandshakes(ts.metrics); n != 4 {
		t.Fatalf("%d handshakes in progress with an authenticated peer, want 4", n)
	}
	// Read only now: a refused client may have sent its Initials again
	// (a PTO on a loaded machine) before the refusal reached it; those
	// were in the server's socket before this dial's packets, and the
	// server takes new connections' packets in order, so by the end of
	// the dial they are counted (a CI run read 4 before it, 8 after).
	n := refused()

	giveUp()
	eventually(t, "the stalled handshakes' slots freed", func() bool { return meshHandshakes(ts.metrics) == 0 })
	if refused() != n {
		t.Fatalf("%d refused, want still %d", refused(), n)
	}
}

// firstPacketOnly is a client socket that sends its first datagram (the
// start of a QUIC Initial) and nothing after, and reads nothing: what a
// flood of Initials from spoofed addresses looks like to the server.
type firstPacketOnly struct {
	net.PacketConn
	sent atomic.Bool
}

func (c *firstPacketOnly) WriteTo(p []byte, a net.Addr) (int, error) {
	if c.sent.Swap(true) {
		return len(p), nil
	}
	return c.PacketConn.WriteTo(p, a)
}

// SetReadBuffer lets quic-go size the socket's buffer, as it does a
// *net.UDPConn's.
func (c *firstPacketOnly) SetReadBuffer(n int) error {
	return c.PacketConn.(*net.UDPConn).SetReadBuffer(n)
}

func (c *firstPacketOnly) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		if _, _, err := c.PacketConn.ReadFrom(p); err != nil {
			return 0, nil, err
		}
	}
}

// TestQUICUnvalidatedHandshakesRetry: Initials from an address that never
// answers (spoofed) hold at most half of the source's handshake slots: the
// others are answered with a stateless Retry, which the sender never
// returns, so they hold nothing; a real peer from that address answers the
// Retry and still gets a slot. The unvalidated slots come back at the
// handshake idle timeout.
func TestQUICUnvalidatedHandshakesRetry(t *testing.T) {
	p := newQUICPair(t)
	ts := startQUICServer(t, nil, p.srvSrc, mapDialer{}, func(c *QUICServerConfig) {
		c.HeaderTimeout = 5 * time.Second // the unvalidated slots must outlast the next steps
		c.MaxHandshakes, c.MaxHandshakesPerSource = 16, 4
	})
	to, err := net.ResolveUDPAddr("udp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	const src = "127.65.4.1"
	conf := p.cli.ClientConfig(identity.AuthorizeNode(), ALPNMeshQUIC)
	for range 6 {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)})
		if err != nil {
			t.Fatal(err)
		}
		tr := &quic.Transport{Conn: &firstPacketOnly{PacketConn: pc}}
		t.Cleanup(func() { tr.Close(); pc.Close() })
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		go tr.Dial(ctx, to, conf, &quic.Config{HandshakeIdleTimeout: time.Minute})
	}
	eventually(t, "2 unvalidated handshakes in progress, 4 Initials answered by a Retry", func() bool {
		return meshHandshakes(ts.metrics) == 2 && quicRetries(ts.metrics) >= 4
	})
	if n := TLSFailures(ts.metrics, "in", identity.ReasonSourceBusy); n != 0 {
		t.Fatalf("%d refused as source_busy, want 0 (a Retry, not a refusal)", n)
	}

	_, errs := stalledQUIC(t, 1, src, ts.addr, p.cli)
	eventually(t, "a real peer from the address validated and in its handshake", func() bool {
		return meshHandshakes(ts.metrics) == 3
	})
	select {
	case err := <-errs:
		t.Fatalf("the real peer's handshake ended: %v", err)
	default:
	}
	testenv.WaitFor(t, 20*time.Second, "the slots freed at the handshake idle timeout", func() bool {
		return meshHandshakes(ts.metrics) == 0
	})
}

// TestQUICRetryUnbounded: with no bounds (negative) an unvalidated source
// needs no Retry, however many handshakes are in progress; with bounds,
// half of either asks for one (rounded down: a bound of 1 at once).
func TestQUICRetryUnbounded(t *testing.T) {
	src := &net.UDPAddr{IP: net.IPv4(127, 65, 9, 1), Port: 1}
	for _, tc := range []struct {
		max, per, held int
		want           bool
	}{
		{-1, -1, 0, false},
		{-1, -1, 300, false},
		{-1, 8, 3, false},
		{-1, 8, 4, true},
		{8, -1, 4, true},
		{16, 8, 3, false},
		// Odd bounds: half rounded down, so a bound of 1 asks a Retry of the
		// first unvalidated Initial (its only slot), 3 of the second.
		{-1, 1, 0, true},
		{1, -1, 0, true},
		{1, 1, 0, true},
		{-1, 3, 0, false},
		{-1, 3, 1, true},
		{5, -1, 1, false},
		{5, -1, 2, true},
		{7, 5, 2, true},
		{9, 5, 1, false},
	} {
		g := &quicGate{gate: identity.NewHandshakeGate(tc.max, tc.per), m: newMeshMetrics(metrics.NewSet(), "in")}
		for range tc.held {
			if release, reason := g.gate.Enter(src, nil); release == nil {
				t.Fatalf("bounds %d, %d: slot refused (%s)", tc.max, tc.per, reason)
			}
		}
		if got := g.needsRetry(src); got != tc.want {
			t.Errorf("bounds %d, %d with %d in progress: needsRetry %v, want %v", tc.max, tc.per, tc.held, got, tc.want)
		}
	}
}
