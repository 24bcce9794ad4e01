package transport

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// The reports of cuts over the buffer budget (peerbuffer.go,
// cutreport.go): at most one per peer every window, each peer's own, and
// the cuts not reported at the time said late rather than never.

// tlsCutOnce opens a session to ts authenticated by src and leaves
// streams open on it until the server cuts it.
func tlsCutOnce(t *testing.T, ts *testServer, src *identity.Source) {
	t.Helper()
	raw, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	sess, err := yamux.Client(tc, yamuxConfig(MinStreamWindow))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	openUntilCut(t, sess)
}

// TestPeerBufferCutsReportedPerPeer: two peers cut within the window are
// both reported, each with its own identity (one window shared by all
// peers let a noisy peer hide every other's cut: the second read only as
// "and 1 more cuts" in the first's next record); the first peer's second
// cut in its window is not.
func TestPeerBufferCutsReportedPerPeer(t *testing.T) {
	ca := testCA(t, "", nil)
	srvSrc := testSource(testSVID(t, ca, "s", "b"), ca.Bundle())
	aSrc := testSource(testSVID(t, ca, "s", "a"), ca.Bundle())
	cSrc := testSource(testSVID(t, ca, "s", "c"), ca.Bundle())
	var logs testenv.Buffer
	cuts := &cutLog{}
	ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, func(c *ServerConfig) {
		c.TLS = srvSrc.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)
		c.PeerCheck, c.OnCut = srvSrc.CheckPeer, cuts.add
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.StreamWindow = MinStreamWindow
		c.PeerStreams = NewPeerStreams(0, 16*MinStreamWindow, c.Metrics)
	})
	tlsCutOnce(t, ts, aSrc)
	tlsCutOnce(t, ts, cSrc)
	tlsCutOnce(t, ts, aSrc)
	aID, cID := aSrc.SVID().ID, cSrc.SVID().ID
	got := cuts.get()
	if len(got) != 2 || got[0].Peer != aID || got[1].Peer != cID || got[0].Reason != CutBuffer || got[1].Reason != CutBuffer {
		t.Fatalf("cuts reported: %+v, want one of %s and one of %s", got, aID, cID)
	}
	wantMetric(t, ts.metrics, `fogmesh_agent_peer_buffer_session_cuts_total 3`)
	for _, id := range []string{aID.String(), cID.String()} {
		warned := 0
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, "level=WARN") && strings.Contains(line, "session cut") && strings.Contains(line, "peerId="+id+" ") {
				warned++
			}
		}
		if warned != 1 {
			t.Errorf("%d warnings of a cut of %s, want 1", warned, id)
		}
	}
}

// cutDirect cuts, over the buffer budget, a session of srv's (over a
// pipe) from the peer key with identity pa.id, as its accept loop does.
func cutDirect(t *testing.T, srv *testServer, key string, pa peerAuth) {
	t.Helper()
	c1, c2 := net.Pipe()
	sess, err := yamux.Server(c1, yamuxConfig(MinStreamWindow))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close(); c2.Close() })
	pa.cause = new(atomic.Pointer[error])
	srv.cutOverBuffer(peerSession{sess, &pa, nil}, &peerCount{key: key}, fmt.Errorf("%w: test", ErrPeerBuffer))
}

// TestPeerBufferCutUnsaidReportedLate: a peer cut 3 times in its window
// and then gone has its 2 cuts not reported at the time said at the
// window's end (they were said only with a later cut, and never if none
// came); a peer cut 50 times in its window is reported twice.
func TestPeerBufferCutUnsaidReportedLate(t *testing.T) {
	const window = time.Second
	for _, n := range []int{3, 50} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			cuts := &cutLog{}
			srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, func(c *ServerConfig) {
				c.OnCut = cuts.add
				c.PeerStreams = NewPeerStreams(0, 16*MinStreamWindow, c.Metrics)
			})
			srv.setCutEveryForTest(window)
			start := time.Now()
			for range n {
				cutDirect(t, srv, "127.85.0.1", peerAuth{})
			}
			if took := time.Since(start); took >= window {
				t.Fatalf("%d cuts took %v, not within the window of %v: the test no longer tests anything", n, took, window)
			}
			if got := cuts.get(); len(got) != 1 {
				t.Fatalf("cuts reported at once: %+v, want the first", got)
			}
			testenv.WaitFor(t, 5*window, "the cuts not reported said", func() bool { return len(cuts.get()) == 2 })
			got := cuts.get()
			if late := got[1].Err; !errors.Is(late, ErrPeerBuffer) || !strings.Contains(late.Error(), fmt.Sprintf("of %d cuts of this peer", n-1)) {
				t.Errorf("late report %v, want one saying the %d cuts of this peer", late, n-1)
			}
			if took := time.Since(start); took < window/2 {
				t.Errorf("late report after %v, want at the window's end (%v)", took, window)
			}
			wantMetric(t, srv.metrics, fmt.Sprintf(`fogmesh_mesh_sessions_cut_total{dir="in",reason="buffer"} %d`, n))
		})
	}
}

// TestPeerBufferCutReportsStopWithServer: a late report still pending
// when the server closes is dropped (its cuts stay counted): no timer
// says it after Close, and no goroutine is left.
func TestPeerBufferCutReportsStopWithServer(t *testing.T) {
	// Long enough that the two cuts and the close come before the window's
	// end on a loaded machine (where the late report would rightly be said).
	const window = 2 * time.Second
	before := runtime.NumGoroutine()
	cuts := &cutLog{}
	t.Run("work", func(t *testing.T) {
		srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, func(c *ServerConfig) {
			c.OnCut = cuts.add
		})
		srv.setCutEveryForTest(window)
		for range 2 {
			cutDirect(t, srv, "127.85.0.1", peerAuth{})
		}
		srv.stop(t)
	})
	waitGoroutines(t, before)
	deadline := time.Now().Add(window) // the first cut was before: a late report would be said by then
	for time.Now().Before(deadline) {
		if n := len(cuts.get()); n != 1 {
			t.Fatalf("%d cuts reported, want the first only: the late one was said after Close", n)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// TestPeerBufferCutReportsBounded: a server tracks at most cutReportPeers
// peers for its cut reports; the peers past them share one window, and an
// entry whose window is over makes room for a new peer.
func TestPeerBufferCutReportsBounded(t *testing.T) {
	var said []Cut
	r := newCutReports(func(_ *slog.Logger, c Cut) { said = append(said, c) })
	defer r.close()
	now := time.Now()
	reported := 0
	for i := range cutReportPeers + 50 {
		if _, ok := r.cut("peer-"+strconv.Itoa(i), Cut{Err: ErrPeerBuffer}, nil, now); ok {
			reported++
		}
	}
	if len(r.peers) != cutReportPeers {
		t.Errorf("%d peers tracked, want at most %d", len(r.peers), cutReportPeers)
	}
	if reported != cutReportPeers+1 {
		t.Errorf("%d cuts of %d peers reported at once, want one per tracked peer and one for the others: %d", reported, cutReportPeers+50, cutReportPeers+1)
	}
	// A cut of a tracked peer: in its window, not reported.
	if _, ok := r.cut("peer-0", Cut{Err: ErrPeerBuffer}, nil, now.Add(time.Second)); ok {
		t.Error("a tracked peer's second cut in its window reported")
	}
	// The others' window: its next report says the 49 not reported.
	c, ok := r.cut("peer-new", Cut{Err: ErrPeerBuffer}, nil, now.Add(peerBufferWarnEvery/2))
	if ok {
		t.Errorf("a cut of a peer past the map, in the others' window, reported: %v", c.Err)
	}
	// Past the window, the peers whose window is over (and nothing
	// pending) make room for a new one.
	later := now.Add(peerBufferWarnEvery + time.Second)
	if _, ok := r.cut("peer-new", Cut{Err: ErrPeerBuffer}, nil, later); !ok {
		t.Error("a new peer's first cut after the window not reported")
	}
	if _, ok := r.peers["peer-new"]; !ok || len(r.peers) > cutReportPeers {
		t.Errorf("peer-new tracked %v, %d peers tracked: want it tracked after eviction, at most %d", ok, len(r.peers), cutReportPeers)
	}
	if _, ok := r.peers["peer-0"]; !ok {
		t.Error("peer-0, with a report pending, evicted")
	}
}
