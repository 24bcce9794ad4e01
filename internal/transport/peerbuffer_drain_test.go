package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// A stream the agent refused stays in yamux, its whole window granted,
// until the peer closes it too (or for a minute); the agent now reads and
// drops what the peer still sends on it (drain.go): a peer that fills its
// refused streams and leaves them open makes the agent hold nothing for
// them, and one that keeps sending past its first window loses its
// session.

// refusedFill writes to st, a stream the server refused on its first
// bytes (h's header), what is left of its first window: all the peer may
// send before it hears of the refusal.
func refusedFill(st *yamux.Stream, h Header, window int, fill []byte) error {
	var hb bytes.Buffer
	if err := WriteHeader(&hb, h); err != nil {
		return err
	}
	st.SetWriteDeadline(time.Now().Add(5 * time.Second))
	defer st.SetWriteDeadline(time.Time{})
	_, err := st.Write(fill[:window-hb.Len()])
	return err
}

// heapInuse returns the heap in use after a collection.
func heapInuse() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

// TestPeerBufferRefusedStreamsFilledNotHeld: a peer opens streams that are
// refused (to an unknown endpoint, then over its budget of 16 windows of
// 256 KiB while it keeps 16 served), up to just below the cut bound, fills
// each one's window and leaves them all open. The agent held each window
// (about 520 × 256 KiB, 130 MiB, against a budget of 4 MiB); now it holds
// no more than a few MiB over its base, and the session is not cut.
func TestPeerBufferRefusedStreamsFilledNotHeld(t *testing.T) {
	const (
		window  = MinStreamWindow
		limit   = 16 // the budget in windows
		unknown = 100
	)
	hold := serveHold(t)
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"hold-1": hold}, func(c *ServerConfig) {
		c.StreamWindow = window
		c.PeerStreams = NewPeerStreams(0, limit*window, c.Metrics)
	})
	sess := rawPeer(t, srv, window)
	fill := make([]byte, window)
	base := heapInuse()

	refused := 0
	open := func(endpoint string, want Status, busy bool) {
		t.Helper()
		st, code, msg, err := openTo(sess, endpoint)
		if err != nil {
			t.Fatalf("stream %d to %s: %v", refused, endpoint, err)
		}
		if code != want || busy != strings.HasPrefix(msg, errPeerStreams.Error()) {
			t.Fatalf("stream %d to %s: status %v %q, want %v (busy: %v)", refused, endpoint, code, msg, want, busy)
		}
		if code == StatusOK {
			return
		}
		h := header(endpoint)
		h.Source = "node-a"
		if err := refusedFill(st, h, window, fill); err != nil {
			t.Fatalf("filling refused stream %d: %v", refused, err)
		}
		refused++
	}
	for range unknown {
		open("nope", StatusRefused, false)
	}
	for range limit {
		open("hold-1", StatusOK, false)
	}
	for srv.yamuxStreamsForTest() < bufferCutAt(limit)-8 {
		open("hold-1", StatusRefused, true)
	}

	// The peer's bytes are all sent; the agent's share of them is what
	// stays in its heap once its readers (or drains) have run.
	bound := int64(limit*window + 8<<20) // the budget, and the streams' own state
	var grew int64
	deadline := time.Now().Add(10 * time.Second)
	for {
		grew = heapInuse() - base
		if grew <= bound || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // poll interval, bounded by the deadline
	}
	t.Logf("%d refused streams filled (%d MiB sent) and left open, %d held by yamux: heap +%d MiB",
		refused, refused*window>>20, srv.yamuxStreamsForTest(), grew>>20)
	if grew > bound {
		t.Errorf("the agent holds %d MiB more for a peer's refused streams, want at most %d MiB (a budget of %d MiB)",
			grew>>20, bound>>20, limit*window>>20)
	}
	if sess.IsClosed() {
		t.Error("the session of a peer that sent no more than its refused streams' first windows was cut")
	}
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_session_cuts_total 0`)
}

// TestPeerBufferCutsPeerSendingPastRefusal: a peer that keeps sending on a
// refused stream past the window it had before the refusal (the agent's
// drain grants more as it reads) ignores the refusal: its session is cut
// and reported as a buffer cut with the peer's identity, instead of the
// agent reading it forever or holding a window for it.
func TestPeerBufferCutsPeerSendingPastRefusal(t *testing.T) {
	const window = MinStreamWindow
	ca := testCA(t, "", nil)
	srvSrc := testSource(testSVID(t, ca, "s", "b"), ca.Bundle())
	cliSrc := testSource(testSVID(t, ca, "s", "a"), ca.Bundle())
	cuts := &cutLog{}
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, func(c *ServerConfig) {
		c.TLS = srvSrc.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)
		c.PeerCheck, c.OnCut = srvSrc.CheckPeer, cuts.add
		c.StreamWindow = window
		c.PeerStreams = NewPeerStreams(0, 16*window, c.Metrics)
	})
	sess := tlsRawPeer(t, srv.addr, cliSrc, window)
	st, code, _, err := openTo(sess, "nope")
	if err != nil || code != StatusRefused {
		t.Fatalf("stream to an unknown endpoint: %v %v, want refused", code, err)
	}
	n, err := fillStream(st, 2*time.Second, 4*window)
	t.Logf("wrote %d KiB on the refused stream: %v", n>>10, err)
	select {
	case <-sess.CloseChan():
	case <-time.After(5 * time.Second):
		t.Fatal("the session of a peer sending past its refused stream's window was not cut")
	}
	got := cuts.get()
	if len(got) != 1 || got[0].Peer != cliSrc.SVID().ID || got[0].Reason != CutBuffer ||
		!errors.Is(got[0].Err, ErrPeerBuffer) || !strings.Contains(got[0].Err.Error(), "stream refused here") {
		t.Fatalf("cuts reported: %+v, want one of %s for sending past a refusal", got, cliSrc.SVID().ID)
	}
	// It held one stream open, and sent past its window: the error must not
	// say it held too many (ErrPeerBuffer's text said so at 832d4ee).
	if msg := got[0].Err.Error(); strings.Contains(msg, "streams open") {
		t.Errorf("the cut's error %q says the peer held too many streams open; it sent past one refused stream's window", msg)
	}
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_session_cuts_total 1`)
	wantMetric(t, srv.metrics, `fogmesh_mesh_sessions_cut_total{dir="in",reason="buffer"} 1`)
}

// tlsRawPeer is a peer agent's yamux session over the mesh's TLS to addr,
// as src's node, driven by hand.
func tlsRawPeer(t *testing.T, addr string, src *identity.Source, window int) *yamux.Session {
	t.Helper()
	return yamuxPeer(t, tlsHandshake(t, dialTCP(t, addr), src), window)
}

func dialTCP(t *testing.T, addr string) net.Conn {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// tlsHandshake makes raw a mesh TLS connection as src.
func tlsHandshake(t *testing.T, raw net.Conn, src *identity.Source) *tls.Conn {
	t.Helper()
	tc := tls.Client(raw, src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return tc
}

// yamuxPeer starts a yamux client session over conn, closed at the
// test's end.
func yamuxPeer(t *testing.T, conn net.Conn, window int) *yamux.Session {
	t.Helper()
	sess, err := yamux.Client(conn, yamuxConfig(window))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// TestPeerBufferRefusalDrainEnds: this agent's client closes a refused
// stream as soon as it reads the refusal (unknown endpoint, or over the
// budget), so the drain of each ends at once: no goroutine is left, the
// client gets the refusal it always got, and the server's yamux lets the
// streams go.
func TestPeerBufferRefusalDrainEnds(t *testing.T) {
	const window = MinStreamWindow
	work := serveWorkload(t, "127.0.0.1:0", echo)
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"web-1": work}, func(c *ServerConfig) {
		c.StreamWindow = window
		c.PeerStreams = NewPeerStreams(0, 4*window, c.Metrics) // room for a refusal's stream not yet let go
	})
	c, _ := newClient(t)
	settled := func() bool { return srv.yamuxStreamsForTest() == 0 && srv.ActiveStreams() == 0 }
	dialRoundTrip(t, c, srv.addr, "web-1", "the session, and its goroutines")
	if _, err := c.Dial(t.Context(), srv.addr, header("nope")); !errors.Is(err, ErrRefused) {
		t.Fatalf("stream to an unknown endpoint: %v, want refused", err)
	}
	eventually(t, "the first streams let go", settled)
	before := runtime.NumGoroutine()

	refuse := func(endpoint string, busy bool) {
		t.Helper()
		for range 20 {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			_, err := c.Dial(ctx, srv.addr, header(endpoint))
			cancel()
			if !errors.Is(err, ErrRefused) || errors.Is(err, ErrPeerBusy) != busy {
				t.Fatalf("stream to %s: %v, want refused (busy: %v)", endpoint, err, busy)
			}
		}
	}
	refuse("nope", false)
	var served []net.Conn
	eventually(t, "four streams served", func() bool { // the last refusals' places given back
		conn, err := c.Dial(t.Context(), srv.addr, header("web-1"))
		if err != nil && !errors.Is(err, ErrPeerBusy) {
			t.Fatal(err)
		}
		if err == nil {
			served = append(served, conn)
		}
		return len(served) == 4
	})
	refuse("web-1", true) // over the budget of four windows
	eventually(t, "the refused streams let go", func() bool { return srv.yamuxStreamsForTest() == 4 })
	for _, conn := range served {
		conn.Close()
	}
	eventually(t, "every stream let go", settled)
	waitGoroutines(t, before)
}

// TestDrainsBoundedWithoutBudget: with the buffer budget off nothing
// counts the streams yamux holds for a peer, so a peer that leaves its
// refused streams open had a drain (a goroutine) for each, without
// bound but StreamCloseTimeout. Past maxDrainsPerPeer its session is cut,
// as over the budget, and its drains end.
func TestDrainsBoundedWithoutBudget(t *testing.T) {
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, func(c *ServerConfig) {
		c.StreamWindow = MinStreamWindow
		c.PeerStreams = NewPeerStreams(0, -1, c.Metrics) // no budget
	})
	before := runtime.NumGoroutine()
	sess := rawPeer(t, srv, MinStreamWindow)
	opened := 0
	for ; opened < maxDrainsPerPeer+64; opened++ {
		if _, code, _, err := openTo(sess, "nope"); err != nil || code != StatusRefused {
			break // cut
		}
	}
	if opened == maxDrainsPerPeer+64 { // the few past it were on their way when it was cut
		t.Fatalf("%d refused streams left open, %d drains, and the session not cut; want a cut past %d",
			opened, goroutinesIn(drainFunc), maxDrainsPerPeer)
	}
	eventually(t, "the session cut", sess.IsClosed)
	wantMetric(t, srv.metrics, `fogmesh_mesh_sessions_cut_total{dir="in",reason="buffer"} 1`)
	waitGoroutines(t, before)
}

// TestDrainsCapCutsOneSession: the peer's count of drains lets a cut
// session's drains go only as each ends, a moment after the cut. A
// refusal on another session of the peer in that moment found the count
// still over maxDrainsPerPeer and cut that session too, the one with the
// most drains left: here one, well under the cap. Held at that moment,
// the peer's other session must stay up, its refused stream drained.
func TestDrainsCapCutsOneSession(t *testing.T) {
	const limit = 8
	old := maxDrainsPerPeer
	maxDrainsPerPeer = limit
	t.Cleanup(func() { maxDrainsPerPeer = old })
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, func(c *ServerConfig) {
		c.StreamWindow = MinStreamWindow
		c.PeerStreams = NewPeerStreams(0, -1, c.Metrics) // no budget: the cap alone
	})
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free) // before the server's Close, which waits for the drains
	refuse := func(sess *yamux.Session, what string) {
		t.Helper()
		if _, code, _, err := openTo(sess, "nope"); err != nil || code != StatusRefused {
			t.Fatalf("%s: %v %v, want refused", what, code, err)
		}
	}

	// Both sessions come from 127.0.0.1: one peer, one count.
	quiet := rawPeer(t, srv, MinStreamWindow)
	refuse(quiet, "the quiet session's stream")
	loud := rawPeer(t, srv, MinStreamWindow)
	for i := range limit - 1 {
		refuse(loud, fmt.Sprintf("the loud session's stream %d", i))
	}
	eventually(t, "every drain started", func() bool { return goroutinesIn(drainFunc) == limit })

	hold := func() { <-release }
	testHookDrainExit.Store(&hold)
	t.Cleanup(func() { testHookDrainExit.Store(nil) })
	openTo(loud, "nope") // past the cap: refused, and the loud session cut
	eventually(t, "the loud session cut", loud.IsClosed)
	wantMetric(t, srv.metrics, `fogmesh_mesh_sessions_cut_total{dir="in",reason="buffer"} 1`)

	// Its drains are held before the count lets them go: the quiet
	// session's second refused stream finds it over the cap.
	refuse(quiet, "the quiet session's second stream")
	eventually(t, "the quiet session cut, or its second stream drained", func() bool {
		// The loud session's drains, held (its refused stream past the
		// cap too), and the quiet session's two.
		return quiet.IsClosed() || goroutinesIn(drainFunc) == limit+2
	})
	if quiet.IsClosed() {
		t.Errorf("the quiet session (one drain, and the stream just refused) was cut too, for the drains of the loud one (%d, cut) that had not ended yet", limit-1)
	}
	wantMetric(t, srv.metrics, `fogmesh_mesh_sessions_cut_total{dir="in",reason="buffer"} 1`)
	free()
}
