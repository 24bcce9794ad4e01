package transport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// Tests of the QUIC carrier's bounds and lifecycle: backpressure,
// keepalives, configuration, the shared socket, leaks. Helpers are in
// quic_test.go.

// pipeDialer connects every stream to one end of a net.Pipe, whose other
// end the test holds: a workload that reads only when the test says.
type pipeDialer struct{ peer chan net.Conn }

func (d pipeDialer) DialLocal(ctx context.Context, h Header) (net.Conn, error) {
	a, b := net.Pipe()
	d.peer <- b
	return a, nil
}

// TestQUICBackpressure: a workload that stops reading makes the sender's
// writes block (QUIC flow control) after at most one stream window,
// instead of buffering without bound; nothing written is lost.
func TestQUICBackpressure(t *testing.T) {
	p := newQUICPair(t)
	d := pipeDialer{peer: make(chan net.Conn, 1)}
	ts := startQUICServer(t, nil, p.srvSrc, d, nil)
	c, _ := quicClient(t, p.cli, "node-a", nil)
	conn, err := c.Dial(t.Context(), ts.addr, header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	work := <-d.peer
	defer work.Close()

	const limit = 64 << 20 // an unbounded buffer would take all of it
	chunk := bytes.Repeat([]byte("x"), 32<<10)
	var written int
	blocked := false
	for written < limit {
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		n, err := conn.Write(chunk)
		written += n
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("write after %d bytes: %v, want a timeout", written, err)
			}
			blocked = true
			break
		}
	}
	if !blocked || written > DefaultStreamWindow+1<<20 {
		t.Fatalf("wrote %d bytes to a stalled reader without blocking (blocked=%v); want at most a stream window (%d)",
			written, blocked, DefaultStreamWindow)
	}
	t.Logf("writer blocked after %d bytes", written)

	// The workload resumes: every byte written arrives.
	conn.SetWriteDeadline(time.Time{})
	work.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.CopyN(io.Discard, work, int64(written))
	if err != nil || got != int64(written) {
		t.Fatalf("workload read %d of %d bytes: %v", got, written, err)
	}
}

// TestQUICKeepAlive: keepalives hold an idle connection open past the
// idle timeout (as they hold a NAT mapping), so no redial is needed.
func TestQUICKeepAlive(t *testing.T) {
	p := newQUICPair(t)
	timers := QUICTimers{KeepAlive: 200 * time.Millisecond, IdleTimeout: 1500 * time.Millisecond}
	ts := startQUICServer(t, nil, p.srvSrc, mapDialer{"web-1": serveWorkload(t, "127.0.0.1:0", echo)},
		func(c *QUICServerConfig) { c.Timers = timers })
	c, _ := quicClient(t, p.cli, "node-a", func(c *QUICClientConfig) { c.Timers = timers })
	dialRoundTrip(t, c, ts.addr, "web-1", "before idle")
	c.mu.Lock()
	first := c.peers[ts.addr].conn
	c.mu.Unlock()

	// Stay idle for two idle timeouts: the property under test is time.
	idle := time.NewTimer(2 * timers.IdleTimeout)
	select {
	case <-idle.C:
	case <-first.Context().Done():
		t.Fatalf("idle connection closed despite keepalives: %v", context.Cause(first.Context()))
	}
	dialRoundTrip(t, c, ts.addr, "web-1", "after idle")
	c.mu.Lock()
	same := c.peers[ts.addr].conn == first
	c.mu.Unlock()
	if !same {
		t.Error("the client redialed: the idle connection was lost")
	}
}

// TestQUICConfig: bad configurations are refused with a clear error.
func TestQUICConfig(t *testing.T) {
	p := newQUICPair(t)
	tlsConf := p.srvSrc.ServerConfig(identity.AuthorizeNode())
	for _, tc := range []struct {
		name string
		cfg  QUICServerConfig
		want string
	}{
		{"no transport", QUICServerConfig{Dialer: mapDialer{}, TLS: tlsConf}, "no Transport"},
		{"no dialer", QUICServerConfig{Transport: udpTransport(t), TLS: tlsConf}, "no Dialer"},
		{"no TLS", QUICServerConfig{Transport: udpTransport(t), Dialer: mapDialer{}}, "no TLS"},
		{"keepalive above idle", QUICServerConfig{Transport: udpTransport(t), Dialer: mapDialer{}, TLS: tlsConf,
			Timers: QUICTimers{KeepAlive: time.Minute, IdleTimeout: 30 * time.Second}}, "not below"},
		{"negative", QUICServerConfig{Transport: udpTransport(t), Dialer: mapDialer{}, TLS: tlsConf,
			Timers: QUICTimers{KeepAlive: -1}}, "negative"},
	} {
		if _, err := NewQUICServer(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := NewQUICClient(QUICClientConfig{Transport: udpTransport(t)}); err == nil || !strings.Contains(err.Error(), "no TLS") {
		t.Errorf("client without TLS: %v", err)
	}
	// The default keepalive holds NAT mappings: below 30 s.
	var timers QUICTimers
	if err := timers.validate(); err != nil || timers.KeepAlive >= 30*time.Second || timers.KeepAlive >= timers.IdleTimeout {
		t.Errorf("default timers %+v, %v", timers, err)
	}
}

// TestQUICOneSocketBothWays: each agent serves and dials from one UDP
// socket (what hole punching needs: the peer sees the dialer at the same
// address it listens on), and the socket still delivers non-QUIC
// datagrams (STUN) to its owner.
func TestQUICOneSocketBothWays(t *testing.T) {
	p := newQUICPair(t)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	da := &peerDialer{mapDialer: mapDialer{"web-1": work}}
	db := &peerDialer{mapDialer: mapDialer{"web-1": work}}
	a := startQUICServer(t, nil, p.cli, da, nil)    // node-a
	b := startQUICServer(t, nil, p.srvSrc, db, nil) // node-b
	newClient := func(tr *quic.Transport, src *identity.Source, node string) *QUICClient {
		c, err := NewQUICClient(QUICClientConfig{Transport: tr, SourceNode: node, DialTimeout: 5 * time.Second,
			TLS: src.ClientConfig(identity.AuthorizeNode())})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ca := newClient(a.tr, p.cli, "node-a")
	cb := newClient(b.tr, p.srvSrc, "node-b")

	for _, tc := range []struct {
		from *QUICClient
		to   *quicTestServer
		d    *peerDialer
		src  string
	}{{ca, b, db, a.addr}, {cb, a, da, b.addr}} {
		conn, err := tc.from.Dial(t.Context(), tc.to.addr, header("web-1"))
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, conn, "both ways")
		if conn.LocalAddr().String() != tc.src {
			t.Errorf("dialed from %s, want the listening socket %s", conn.LocalAddr(), tc.src)
		}
		conn.Close()
	}

	// A datagram that is not QUIC reaches the socket's owner.
	probe, err := net.DialUDP("udp", nil, a.tr.Conn.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	stun := []byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42} // a STUN binding request's first bytes
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	// quic-go drops non-QUIC datagrams that arrive before the first
	// ReadNonQUICPacket call (a CI run sent the probe first and lost it), so
	// the probe is repeated until it is read, within the deadline.
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			probe.Write(stun)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	buf := make([]byte, 1500)
	n, from, err := a.tr.ReadNonQUICPacket(ctx, buf)
	cancel()
	if err != nil || !bytes.Equal(buf[:n], stun) || from.String() != probe.LocalAddr().String() {
		t.Fatalf("non-QUIC packet = %x from %v, %v; want %x from %s", buf[:n], from, err, stun, probe.LocalAddr())
	}
}

// TestQUICNoGoroutineLeak: closing the client and the server ends every
// goroutine they started, including streams left open and a stream stuck
// in its header.
func TestQUICNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Run("work", func(t *testing.T) {
		p := newQUICPair(t)
		d := mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo), "hold": serveHold(t)}
		ts := startQUICServer(t, nil, p.srvSrc, d, func(c *QUICServerConfig) { c.HeaderTimeout = 200 * time.Millisecond })
		c, _ := quicClient(t, p.cli, "node-a", nil)
		for range 5 {
			dialRoundTrip(t, c, ts.addr, "echo", "leak?")
		}
		if _, err := c.Dial(t.Context(), ts.addr, header("hold")); err != nil { // left open
			t.Fatal(err)
		}
		c.mu.Lock()
		qc := c.peers[ts.addr].conn
		c.mu.Unlock()
		st, err := qc.OpenStreamSync(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		st.Write([]byte("FMS1")) // a stream stuck in its header: refused after HeaderTimeout
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		if code, _, err := ReadStatus(st); err != nil || code != StatusBadHeader {
			t.Errorf("stuck header: status %v, %v; want bad header", code, err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		ts.stop(t)
	})
	waitGoroutines(t, before)
}

// TestQUICIPv6: the QUIC carrier works over IPv6 loopback.
func TestQUICIPv6(t *testing.T) {
	p := newQUICPair(t)
	ts := startQUICServer(t, udpTransportOn(t, net.IPv6loopback), p.srvSrc,
		mapDialer{"web-1": serveWorkload(t, "[::1]:0", echo)}, nil)
	c, _ := quicClient(t, p.cli, "node-a", func(c *QUICClientConfig) { c.Transport = udpTransportOn(t, net.IPv6loopback) })
	dialRoundTrip(t, c, ts.addr, "web-1", "hello over QUIC/IPv6")
}

// BenchmarkQUICMeshStream is BenchmarkMeshStream over the QUIC carrier:
// one stream's bulk throughput client -> QUIC/UDP -> server -> sink.
func BenchmarkQUICMeshStream(b *testing.B) {
	const chunk = 1 << 20
	sink, sunk := startSink(b)
	p := newQUICPair(b)
	ts := startQUICServer(b, nil, p.srvSrc, mapDialer{"sink": sink}, nil)
	c, _ := quicClient(b, p.cli, "node-a", nil)
	conn, err := c.Dial(context.Background(), ts.addr, header("sink"))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()

	benchBulk(b, conn, chunk, sunk)
}
