package transport

import (
	"context"
	"io"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
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
// AcceptBacklog (256) streams sit in yamux's accept queue for the life of
// the session, each holding the data the peer sent (up to the initial
// 256 KiB window), and they keep a retired session from ever closing.
const pushStreams = 64

func TestClientSessionRefusesPeerOpenedStreams(t *testing.T) {
	opened := make(chan int, 1)
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
		// Then push 256 streams of 256 KiB at the client.
		buf := make([]byte, 256<<10)
		n := 0
		for range pushStreams {
			s2, err := sess.OpenStream()
			if err != nil {
				break
			}
			if _, err := s2.Write(buf); err != nil {
				t.Logf("push write: %v", err)
				break
			}
			n++
		}
		opened <- n
		io.Copy(io.Discard, st)
		st.Close()
		<-sess.CloseChan()
	})

	c := NewClient(ClientConfig{SourceNode: "node-a", DialTimeout: 5 * time.Second})
	t.Cleanup(func() { c.Close() })
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	conn, err := c.Dial(t.Context(), addr, header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	var n int
	select {
	case n = <-opened:
	case <-time.After(10 * time.Second):
		t.Fatal("peer could not push its streams")
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	held := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("peer opened %d streams on the client's session; client heap grew by %d MiB", n, held>>20)

	// Retire the session and end the only stream the client opened: the
	// retired session should close once its streams are done.
	c.Retire(addr)
	conn.Close()
	sess := conn.(*streamConn).Stream.Session()
	deadline := time.Now().Add(5 * time.Second)
	for !sess.IsClosed() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	if !sess.IsClosed() {
		t.Errorf("retired session still open after its last stream closed: NumStreams = %d (peer-opened streams never accepted)", sess.NumStreams())
	}
	if n > 0 && held > int64(n)*(128<<10) {
		t.Errorf("client holds %d MiB for %d streams the peer opened and the client never accepts", held>>20, n)
	}
}
