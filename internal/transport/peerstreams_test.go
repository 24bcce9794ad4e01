package transport

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// fakePeer accepts mesh connections on loopback and runs a yamux server
// session on each, handing it to onSess (which owns it).
func fakePeer(t *testing.T, onSess func(*yamux.Session)) string {
	t.Helper()
	ln := listen(t, "127.0.0.1:0")
	var wg sync.WaitGroup
	var mu sync.Mutex
	var sessions []*yamux.Session
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, s := range sessions {
			s.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			sess, err := yamux.Server(c, yamuxConfig(DefaultStreamWindow))
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			sessions = append(sessions, sess)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); onSess(sess) }()
		}
	}()
	return ln.Addr().String()
}

// A peer whose session answers pings but does not take streams (wedged or
// hostile) lets 256 SYNs go unacknowledged; from then on Dial blocks in
// yamux's OpenStream, which takes no context, far past DialTimeout
// (until StreamCloseTimeout frees a slot, a minute later).
func TestDialHonoursTimeoutWhenPeerStopsAcceptingStreams(t *testing.T) {
	addr := fakePeer(t, func(sess *yamux.Session) { <-sess.CloseChan() }) // never AcceptStream
	const dialTimeout = 200 * time.Millisecond
	c := NewClient(ClientConfig{SourceNode: "node-a", DialTimeout: dialTimeout})
	t.Cleanup(func() { c.Close() })

	// Fill the 256 in-flight SYN slots: each Dial times out waiting for
	// the status.
	var wg sync.WaitGroup
	for range 256 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Dial(context.Background(), addr, header("web-1"))
		}()
	}
	wg.Wait()

	// Every Dial that opened a stream holds a slot (its SYN is never
	// acknowledged); a few more Dials take whatever slots are left (a Dial
	// that timed out before opening its stream took none). Each must
	// still end near DialTimeout.
	for i := range 64 {
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			_, err := c.Dial(context.Background(), addr, header("web-1"))
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("Dial succeeded against a peer that takes no streams")
			}
		case <-time.After(10 * dialTimeout):
			t.Fatalf("extra Dial %d still blocked after %v with DialTimeout %v (yamux OpenStream ignores ctx)", i, time.Since(start), dialTimeout)
		}
	}
}

// A peer agent (any node with a valid certificate) can open streams on
// the session a client dialed to it. The client never accepts them: up to
// AcceptBacklog (256) streams would sit in yamux's accept queue for the
// life of the session, each holding the data the peer sent (up to the
// initial 256 KiB window), and they would keep a retired session from
// ever closing.
const pushStreams = 64

// TestClientSessionRefusesPeerOpenedStreams: while a peer pushes streams
// at a session the client dialed, no open client session holds more
// streams than the one the client opened (it is closed instead, yamux
// v0.1.2 cannot refuse one stream), and the peer sees its opens refused:
// its session ends. This counts the streams themselves; it measured the
// heap before, which a batch run's garbage made fail once.
func TestClientSessionRefusesPeerOpenedStreams(t *testing.T) {
	opened := make(chan int, 1)
	refused := make(chan struct{})
	addr := fakePeer(t, func(sess *yamux.Session) {
		// Answer the client's first stream as a mesh server would.
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		if _, err := ReadHeader(st); err != nil {
			return
		}
		WriteStatus(st, StatusOK, "")
		// Then push streams of 256 KiB (the initial window) at the client.
		buf := make([]byte, 256<<10)
		n := 0
		for range pushStreams {
			s2, err := sess.OpenStream()
			if err != nil {
				break
			}
			if _, err := s2.Write(buf); err != nil {
				break
			}
			n++
		}
		opened <- n
		<-sess.CloseChan()
		close(refused)
	})

	c := NewClient(ClientConfig{SourceNode: "node-a", DialTimeout: 5 * time.Second})
	t.Cleanup(func() { c.Close() })
	conn, err := c.Dial(t.Context(), addr, header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	sess := conn.(*streamConn).Stream.Session()
	select {
	case n := <-opened:
		t.Logf("the peer opened %d of %d streams", n, pushStreams)
	case <-time.After(10 * time.Second):
		t.Fatal("the peer's pushes neither went through nor failed")
	}
	// yamux keeps a closed session's streams in its count: only a live
	// session's count says what the client holds.
	testenv.WaitFor(t, 5*time.Second, "no open client session holding streams the peer opened", func() bool {
		return sess.IsClosed() || sess.NumStreams() <= 1
	})
	select {
	case <-refused:
	case <-time.After(5 * time.Second):
		t.Fatalf("the peer's session is still open: its streams were taken, not refused (client session: %d streams)", sess.NumStreams())
	}

	// Retire the session and end the only stream the client opened: the
	// retired session is closed (it was, at the peer's first stream).
	c.Retire(addr)
	conn.Close()
	testenv.WaitFor(t, 5*time.Second, "the retired session closed", sess.IsClosed)
}
