package transport

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// pingFrames is n yamux ping requests (SYN), ids 0..n-1.
func pingFrames(n int) []byte {
	b := make([]byte, yamuxHeaderLen*n)
	for i := range n {
		h := b[i*yamuxHeaderLen:]
		h[1] = 2                             // typePing
		binary.BigEndian.PutUint16(h[2:], 1) // flagSYN
		binary.BigEndian.PutUint32(h[8:], uint32(i))
	}
	return b
}

// TestPingFloodEndsSession: yamux answers every ping from a goroutine of
// its own that waits until the answer is queued, so a peer that sends
// pings and reads nothing made the agent start a goroutine per 12 bytes
// it sent, until keepalive gave up on the session (15 s): gigabytes. A
// session whose peer asks for more than maxPingsOwed unanswered pings is
// closed instead; pings answered as they come are fine.
func TestPingFloodEndsSession(t *testing.T) {
	t.Run("plaintext", func(t *testing.T) {
		ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, nil)
		testPingFlood(t, ts, func() (net.Conn, *net.TCPConn) {
			c, err := net.Dial("tcp", ts.addr)
			if err != nil {
				t.Fatal(err)
			}
			return c, c.(*net.TCPConn)
		})
	})
	t.Run("mTLS", func(t *testing.T) {
		ca := testCA(t, "", nil)
		ts := startTLSServer(t, testSource(testSVID(t, ca, "s", "node-b"), ca.Bundle()), mapDialer{})
		cfg := testSource(testSVID(t, ca, "s", "node-a"), ca.Bundle()).ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh)
		testPingFlood(t, ts, func() (net.Conn, *net.TCPConn) {
			raw, err := net.Dial("tcp", ts.addr)
			if err != nil {
				t.Fatal(err)
			}
			c := tls.Client(raw, cfg)
			if err := c.Handshake(); err != nil {
				t.Fatal(err)
			}
			return c, raw.(*net.TCPConn)
		})
	})
}

// testPingFlood runs TestPingFloodEndsSession on ts, with dial opening a
// connection to it (and returning its socket).
func testPingFlood(t *testing.T, ts *testServer, dial func() (net.Conn, *net.TCPConn)) {
	// A peer that reads its answers may ping as often as it likes.
	polite, _ := dial()
	defer polite.Close()
	polite.SetDeadline(time.Now().Add(5 * time.Second))
	answer := make([]byte, yamuxHeaderLen)
	for i := range 3 * maxPingsOwed {
		if _, err := polite.Write(pingFrames(1)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(polite, answer); err != nil {
			t.Fatalf("answer to ping %d: %v", i, err)
		}
	}

	before := runtime.NumGoroutine()
	flood, sock := dial()
	defer flood.Close()
	sock.SetReadBuffer(4 << 10) // the peer reads nothing
	flood.SetWriteDeadline(time.Now().Add(5 * time.Second))
	frames := pingFrames(1000)
	peak := 0
	for range 200 { // until the agent ends the session
		if _, err := flood.Write(frames); err != nil {
			break
		}
		peak = max(peak, runtime.NumGoroutine()-before)
	}
	eventually(t, "the flooding session to end", func() bool {
		peak = max(peak, runtime.NumGoroutine()-before)
		return peak > 4*maxPingsOwed || ts.m.sessions.Get() == 1 // the polite one
	})
	if peak > 4*maxPingsOwed {
		t.Fatalf("%d goroutines more while a peer flooded pings; want at most %d", peak, 4*maxPingsOwed)
	}
	// The polite peer's session is closed by its own end only.
	polite.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := polite.Write(pingFrames(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(polite, answer); err != nil {
		t.Fatalf("the polite peer after the flood: %v", err)
	}
}
