package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// udpTransport binds a loopback UDP socket and returns its QUIC endpoint;
// both are closed when the test ends.
func udpTransport(t testing.TB) *quic.Transport {
	t.Helper()
	return udpTransportOn(t, net.IPv4(127, 0, 0, 1))
}

func udpTransportOn(t testing.TB, ip net.IP) *quic.Transport {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	tr := NewQUICTransport(pc)
	t.Cleanup(func() { tr.Close(); pc.Close() })
	return tr
}

type quicTestServer struct {
	*QUICServer
	tr      *quic.Transport
	addr    string
	metrics *metrics.Set
	served  chan error
}

// startQUICServer serves QUIC on tr (a fresh socket if nil) until the
// test ends, with src's node certificate.
func startQUICServer(t testing.TB, tr *quic.Transport, src *identity.Source, d Dialer, tweak func(*QUICServerConfig)) *quicTestServer {
	t.Helper()
	if tr == nil {
		tr = udpTransport(t)
	}
	set := metrics.NewSet()
	cfg := QUICServerConfig{Transport: tr, Dialer: d, Metrics: set, HeaderTimeout: 3 * time.Second,
		TLS: src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := NewQUICServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := &quicTestServer{QUICServer: s, tr: tr, addr: tr.Conn.LocalAddr().String(), metrics: set, served: make(chan error, 1)}
	go func() { ts.served <- s.Serve(context.Background()) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// stop closes the server and checks Serve returned nil.
func (ts *quicTestServer) stop(t testing.TB) {
	t.Helper()
	stopServing(t, "QUICServer", ts.Close, ts.served)
}

func quicClient(t testing.TB, src *identity.Source, node string, tweak func(*QUICClientConfig)) (*QUICClient, *metrics.Set) {
	t.Helper()
	set := metrics.NewSet()
	cfg := QUICClientConfig{Transport: udpTransport(t), SourceNode: node, Metrics: set, DialTimeout: 5 * time.Second,
		TLS: src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh)}
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := NewQUICClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, set
}

// quicPair is one CA, a server node "node-b" and a client node "node-a".
type quicPair struct {
	ca          *identity.CA
	srvSrc, cli *identity.Source
}

func newQUICPair(t testing.TB) quicPair {
	ca := testCA(t, "", nil)
	return quicPair{ca: ca,
		srvSrc: testSource(testSVID(t, ca, "s", "node-b"), ca.Bundle()),
		cli:    testSource(testSVID(t, ca, "s", "node-a"), ca.Bundle())}
}

// TestQUICStreamRoundTrip: a mesh stream over QUIC carries its header to
// the same Dialer as the yamux path, with the authenticated peer, and the
// statuses map to the same errors.
func TestQUICStreamRoundTrip(t *testing.T) {
	p := newQUICPair(t)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	d := &peerDialer{mapDialer: mapDialer{"web-1": work, "locked": "deny"}}
	ts := startQUICServer(t, nil, p.srvSrc, d, nil)
	c, set := quicClient(t, p.cli, "node-a", nil)

	conn, err := c.Dial(t.Context(), ts.addr, header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, conn, "hello over QUIC")
	if conn.RemoteAddr().String() != ts.addr {
		t.Errorf("RemoteAddr = %s, want %s", conn.RemoteAddr(), ts.addr)
	}
	conn.Close()
	d.mu.Lock()
	if len(d.peers) != 1 || d.peers[0].ID.String() != "spiffe://fogmesh.local/site/s/node/node-a" || d.peers[0].Node != "node-a" {
		t.Errorf("peers seen by DialLocal: %+v", d.peers)
	}
	d.mu.Unlock()

	h := header("web-1")
	h.Source = "node-x" // not the authenticated peer
	if _, err := c.Dial(t.Context(), ts.addr, h); !errors.Is(err, ErrRefused) {
		t.Errorf("spoofed source: %v, want ErrRefused", err)
	}
	if _, err := c.Dial(t.Context(), ts.addr, header("nope")); !errors.Is(err, ErrRefused) {
		t.Errorf("unknown endpoint: %v, want ErrRefused", err)
	}
	if _, err := c.Dial(t.Context(), ts.addr, header("locked")); !errors.Is(err, ErrDenied) {
		t.Errorf("denied: %v, want ErrDenied", err)
	}
	if _, ok := c.RTT(ts.addr); !ok {
		t.Error("no RTT on a live connection")
	}
	if n := c.Sessions(); n != 1 {
		t.Errorf("client connections = %d, want 1", n)
	}
	wantMetric(t, set, `fogmesh_mesh_streams_total{dir="out",result="ok"} 1`)
	wantMetric(t, set, `fogmesh_mesh_streams_total{dir="out",result="refused"} 2`)
	wantMetric(t, ts.metrics, `fogmesh_mesh_sessions{dir="in"} 1`)
	eventually(t, "ActiveStreams to reach 0", func() bool { return ts.ActiveStreams() == 0 })
}

// TestQUICConcurrentStreams: many streams at once share one connection.
func TestQUICConcurrentStreams(t *testing.T) {
	p := newQUICPair(t)
	ts := startQUICServer(t, nil, p.srvSrc, mapDialer{"web-1": serveWorkload(t, "127.0.0.1:0", echo)}, nil)
	c, _ := quicClient(t, p.cli, "node-a", nil)

	const n = 64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := c.Dial(t.Context(), ts.addr, header("web-1"))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			msg := strings.Repeat(string(rune('a'+i%26)), 10_000+i)
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(conn, msg); err != nil {
				errs <- err
				return
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
				errs <- errors.New("stream " + string(rune('a'+i%26)) + ": echo mismatch")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := c.Sessions(); got != 1 {
		t.Errorf("client connections = %d, want 1", got)
	}
	wantMetric(t, ts.metrics, `fogmesh_mesh_sessions{dir="in"} 1`)
	eventually(t, "ActiveStreams to reach 0", func() bool { return ts.ActiveStreams() == 0 })
}

// TestQUICHalfClose: CloseWrite ends the send side only; the reply the
// workload sends after EOF still arrives. Close then unblocks a Read.
func TestQUICHalfClose(t *testing.T) {
	p := newQUICPair(t)
	ts := startQUICServer(t, nil, p.srvSrc, mapDialer{
		"upper": serveWorkload(t, "127.0.0.1:0", upper), "hold": serveHold(t)}, nil)
	c, _ := quicClient(t, p.cli, "node-a", nil)

	conn, err := c.Dial(t.Context(), ts.addr, header("upper"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	wantHalfClose(t, conn)

	held, err := c.Dial(t.Context(), ts.addr, header("hold"))
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := held.Read(make([]byte, 1))
		readErr <- err
	}()
	held.Close()
	select {
	case err := <-readErr:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Close did not unblock Read")
	}
	eventually(t, "ActiveStreams to reach 0", func() bool { return ts.ActiveStreams() == 0 })
}

// TestQUICRefusals: the QUIC handshake applies the TLS path's checks: a
// certificate of another CA, a revoked node and a node other than the one
// expected at the address are refused, and counted.
func TestQUICRefusals(t *testing.T) {
	p := newQUICPair(t)
	other := testCA(t, "", nil)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	ts := startQUICServer(t, nil, p.srvSrc, mapDialer{"web-1": work}, nil)
	revoked := testSVID(t, p.ca, "s", "bad")
	p.srvSrc.SetDenied([]string{revoked.ID.String()})

	cases := []struct {
		name   string
		src    *identity.Source
		reason string
	}{
		{"another CA", testSource(testSVID(t, other, "s", "x"), p.ca.Bundle()), identity.ReasonUnknownAuthority},
		{"revoked", testSource(revoked, p.ca.Bundle()), identity.ReasonRevoked},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, set := quicClient(t, tc.src, "x", nil)
			if conn, err := c.Dial(t.Context(), ts.addr, header("web-1")); err == nil {
				conn.Close()
				t.Fatal("dial succeeded")
			}
			eventually(t, tc.reason+" counted", func() bool { return TLSFailures(ts.metrics, "in", tc.reason) == 1 })
			if got := TLSFailures(set, "out", identity.ReasonPeerRejected); got != 1 {
				t.Errorf("client peer_rejected = %d, want 1", got)
			}
		})
	}

	t.Run("server of another CA", func(t *testing.T) {
		rogue := startQUICServer(t, nil, testSource(testSVID(t, other, "s", "node-b"), other.Bundle()), mapDialer{"web-1": work}, nil)
		c, set := quicClient(t, p.cli, "node-a", nil)
		if conn, err := c.Dial(t.Context(), rogue.addr, header("web-1")); err == nil {
			conn.Close()
			t.Fatal("dial succeeded")
		}
		if got := TLSFailures(set, "out", identity.ReasonUnknownAuthority); got != 1 {
			t.Errorf("client unknown_authority = %d, want 1", got)
		}
	})

	t.Run("unexpected node at the address", func(t *testing.T) {
		want := spiffeid.RequireFromString("spiffe://fogmesh.local/site/s/node/node-z")
		c, _ := quicClient(t, p.cli, "node-a", func(cfg *QUICClientConfig) {
			cfg.PeerID = func(string) spiffeid.ID { return want }
		})
		if conn, err := c.Dial(t.Context(), ts.addr, header("web-1")); err == nil {
			conn.Close()
			t.Fatal("dial succeeded")
		}
		if c.Sessions() != 0 {
			t.Error("connection to the wrong node kept")
		}
	})

	// The server still serves good peers.
	c, _ := quicClient(t, p.cli, "node-a", nil)
	dialRoundTrip(t, c, ts.addr, "web-1", "still serving")

	// A node revoked while connected is dropped with its streams.
	held, err := c.Dial(t.Context(), ts.addr, header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	if n := ts.DropPeer(spiffeid.RequireFromString("spiffe://fogmesh.local/site/s/node/node-a")); n != 1 {
		t.Fatalf("DropPeer closed %d connections, want 1", n)
	}
	held.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := held.Read(make([]byte, 1)); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read on a dropped connection: %v, want io.ErrUnexpectedEOF", err)
	}
	// The very next Dial replaces the dead connection (dropped, not revoked).
	dialRoundTrip(t, c, ts.addr, "web-1", "redialed")
}

// TestQUICServerCloseAndRedial: closing the server fails the client's
// streams at once (not a clean EOF), and the next Dial reconnects to a
// server restarted on the same socket.
func TestQUICServerCloseAndRedial(t *testing.T) {
	p := newQUICPair(t)
	d := mapDialer{"hold": serveHold(t), "web-1": serveWorkload(t, "127.0.0.1:0", echo)}
	tr := udpTransport(t)
	ts := startQUICServer(t, tr, p.srvSrc, d, nil)
	c, _ := quicClient(t, p.cli, "node-a", nil)

	conn, err := c.Dial(t.Context(), ts.addr, header("hold"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	readErr := make(chan error, 1)
	go func() {
		_, err := conn.Read(make([]byte, 1))
		readErr <- err
	}()
	ts.stop(t)
	select {
	case err := <-readErr:
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("read after server close: %v, want io.ErrUnexpectedEOF", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("server close did not fail the client's stream")
	}
	eventually(t, "client to forget the closed connection", func() bool { return c.Sessions() == 0 })

	ts2 := startQUICServer(t, tr, p.srvSrc, d, nil)
	conn2, err := c.Dial(t.Context(), ts2.addr, header("web-1"))
	if err != nil {
		t.Fatalf("dial after restart: %v", err)
	}
	roundTrip(t, conn2, "reconnected")
	conn2.Close()
	wantMetric(t, ts2.metrics, `fogmesh_mesh_sessions{dir="in"} 1`)
}
