package transport

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// The per-peer cap on inbound streams (peerlimit.go): one peer agent may
// have at most maxStreams streams open at a destination, over all its
// sessions, QUIC connections and direct streams; more are refused at once
// with a status that says why, and other peers are served as before.

// capTestStreams is the default cap the tests fill (DefaultMaxStreamsPerPeer).
const capTestStreams = 1024

// openHeld opens n streams to endpoint at addr through c, in parallel, and
// keeps them open until the test ends.
func openHeld(t *testing.T, c meshClient, addr, endpoint string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	errs := make(chan error, n)
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				conn, err := c.Dial(context.Background(), addr, header(endpoint))
				if err != nil {
					errs <- err
					continue
				}
				conns[i] = conn
			}
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	close(errs)
	for err := range errs {
		t.Fatalf("opening %d held streams: %v", n, err)
	}
	return conns
}

// wantCapRefusal dials once more through c and wants the per-peer cap's
// refusal, promptly.
func wantCapRefusal(t *testing.T, c meshClient, addr string) {
	t.Helper()
	start := time.Now()
	conn, err := c.Dial(context.Background(), addr, header("web-1"))
	if err == nil {
		conn.Close()
		t.Fatalf("stream %d of one peer was accepted; want it refused (per-peer cap %d)", capTestStreams+1, capTestStreams)
	}
	if !errors.Is(err, ErrRefused) || !errors.Is(err, ErrPeerBusy) || !strings.Contains(err.Error(), "too many streams") {
		t.Fatalf("stream over the cap: %v; want ErrRefused and ErrPeerBusy saying too many streams", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusal took %s; want it at once", d)
	}
}

// TestPeerStreamCapTLS: a peer's streams over two yamux sessions (mTLS)
// count together; the stream over the cap is refused, another peer is not,
// and a closed stream frees its place.
func TestPeerStreamCapTLS(t *testing.T) {
	ca := testCA(t, "", nil)
	work := serveWorkload(t, "127.0.0.1:0", echo) // ends a stream the peer closes
	ts := startTLSServer(t, testSource(testSVID(t, ca, "s", "node-b"), ca.Bundle()), mapDialer{"web-1": work})
	srcA := testSource(testSVID(t, ca, "s", "node-a"), ca.Bundle())
	c1, _ := tlsClient(t, srcA, "node-a")
	c2, _ := tlsClient(t, srcA, "node-a")

	held := openHeld(t, c1, ts.addr, "web-1", capTestStreams/2)
	openHeld(t, c2, ts.addr, "web-1", capTestStreams/2)
	wantCapRefusal(t, c1, ts.addr)
	wantCapRefusal(t, c2, ts.addr)
	wantMetric(t, ts.metrics, `fogmesh_agent_peer_stream_limit_rejections_total 2`)

	other, _ := tlsClient(t, testSource(testSVID(t, ca, "s", "node-c"), ca.Bundle()), "node-c")
	dialRoundTrip(t, other, ts.addr, "web-1", "another peer is served")

	held[0].Close()
	eventually(t, "a place freed by a closed stream", func() bool {
		conn, err := c1.Dial(context.Background(), ts.addr, header("web-1"))
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
}

// TestPeerStreamCapQUIC: a peer's streams over two QUIC connections count
// together (QUIC's own limit is per connection).
func TestPeerStreamCapQUIC(t *testing.T) {
	p := newQUICPair(t)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	ts := startQUICServer(t, nil, p.srvSrc, mapDialer{"web-1": work}, nil)
	c1, _ := quicClient(t, p.cli, "node-a", nil)
	c2, _ := quicClient(t, p.cli, "node-a", nil)

	openHeld(t, c1, ts.addr, "web-1", capTestStreams/2)
	openHeld(t, c2, ts.addr, "web-1", capTestStreams/2)
	wantCapRefusal(t, c2, ts.addr)
	wantMetric(t, ts.metrics, `fogmesh_agent_peer_stream_limit_rejections_total 1`)

	other, _ := quicClient(t, testSource(testSVID(t, p.ca, "s", "node-c"), p.ca.Bundle()), "node-c", nil)
	dialRoundTrip(t, other, ts.addr, "web-1", "another peer is served")
}

// TestPeerStreamCapDirect: in insecure mode a peer is its address, and its
// direct streams (a TCP connection each) and its session's streams count
// together.
func TestPeerStreamCapDirect(t *testing.T) {
	hold := serveHold(t)
	ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"web-1": hold}, nil)
	conns := make([]net.Conn, 0, capTestStreams)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	direct := func() (Status, string) {
		t.Helper()
		c, err := net.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		h := header("web-1")
		h.Source = "node-a"
		if err := WriteHeader(c, h); err != nil {
			t.Fatal(err)
		}
		code, msg, err := ReadStatus(c)
		if err != nil {
			t.Fatalf("direct stream %d: %v", len(conns), err)
		}
		return code, msg
	}
	for i := range capTestStreams - 1 {
		if code, msg := direct(); code != StatusOK {
			t.Fatalf("direct stream %d: %v %s", i+1, code, msg)
		}
	}
	c, _ := newClient(t) // a yamux session from the same address
	openHeld(t, c, ts.addr, "web-1", 1)
	if code, msg := direct(); code != StatusRefused || !strings.Contains(msg, "too many streams") {
		t.Fatalf("direct stream over the cap: %v %q; want refused, too many streams", code, msg)
	}
	wantCapRefusal(t, c, ts.addr)
}

// TestPeerSessionCap: one peer may have at most maxSessionsPerPeer
// sessions open at once (each holds buffers and goroutines whether or not
// it carries a stream); the next is closed at once, another peer's is not,
// and a session that ends frees its place.
func TestPeerSessionCap(t *testing.T) {
	ca := testCA(t, "", nil)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	ts := startTLSServer(t, testSource(testSVID(t, ca, "s", "node-b"), ca.Bundle()), mapDialer{"web-1": work})
	srcA := testSource(testSVID(t, ca, "s", "node-a"), ca.Bundle())
	const maxSessions = 64
	clients := make([]*Client, maxSessions)
	for i := range clients {
		clients[i], _ = tlsClient(t, srcA, "node-a")
		dialRoundTrip(t, clients[i], ts.addr, "web-1", "one session")
	}
	over, _ := tlsClient(t, srcA, "node-a")
	if conn, err := over.Dial(context.Background(), ts.addr, header("web-1")); err == nil {
		conn.Close()
		t.Fatalf("session %d of one peer was accepted; want it closed (at most %d)", maxSessions+1, maxSessions)
	}
	wantMetric(t, ts.metrics, `fogmesh_agent_peer_session_limit_rejections_total 1`)
	other, _ := tlsClient(t, testSource(testSVID(t, ca, "s", "node-c"), ca.Bundle()), "node-c")
	dialRoundTrip(t, other, ts.addr, "web-1", "another peer is served")

	clients[0].Close()
	eventually(t, "a place freed by a closed session", func() bool {
		conn, err := over.Dial(context.Background(), ts.addr, header("web-1"))
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
}

// TestPeerSessionCapQUIC: QUIC connections count as sessions; the one
// over the cap is closed with the reason.
func TestPeerSessionCapQUIC(t *testing.T) {
	p := newQUICPair(t)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	ts := startQUICServer(t, nil, p.srvSrc, mapDialer{"web-1": work}, nil)
	for range 64 {
		c, _ := quicClient(t, p.cli, "node-a", nil)
		dialRoundTrip(t, c, ts.addr, "web-1", "one connection")
	}
	over, _ := quicClient(t, p.cli, "node-a", nil)
	conn, err := over.Dial(context.Background(), ts.addr, header("web-1"))
	if err == nil {
		conn.Close()
		t.Fatal("QUIC connection 65 of one peer was accepted; want it closed (at most 64)")
	}
	if !strings.Contains(err.Error(), "too many sessions") {
		t.Errorf("QUIC connection over the cap: %v; want it to say too many sessions", err)
	}
	wantMetric(t, ts.metrics, `fogmesh_agent_peer_session_limit_rejections_total 1`)
}
