package transport

import (
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestPeerBufferCutReportedAsMeshCut: a session cut over the buffer
// budget is a mesh session cut like a revoked peer's: counted in
// fogmesh_mesh_sessions_cut_total{dir="in",reason="buffer"}, reported to
// OnCut (the agent audits it) with the peer's identity and a cause that
// names the budget, and logged as a warning with the peer's identity.
func TestPeerBufferCutReportedAsMeshCut(t *testing.T) {
	const (
		window = MinStreamWindow
		limit  = 16
	)
	ca := testCA(t, "", nil)
	srvSrc := testSource(testSVID(t, ca, "s", "b"), ca.Bundle())
	cliSrc := testSource(testSVID(t, ca, "s", "a"), ca.Bundle())
	var logs testenv.Buffer
	cuts := &cutLog{}
	ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, func(c *ServerConfig) {
		c.TLS = srvSrc.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)
		c.PeerCheck, c.OnCut = srvSrc.CheckPeer, cuts.add
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.StreamWindow = window
		c.PeerStreams = NewPeerStreams(0, limit*window, c.Metrics)
	})
	wantMetric(t, ts.metrics, `fogmesh_mesh_sessions_cut_total{dir="in",reason="buffer"} 0`) // shown before the first cut

	sess := tlsRawPeer(t, ts.addr, cliSrc, window)
	opened := 0
	for ; opened < 2000; opened++ { // refused streams, left open
		if _, _, _, err := openTo(sess, "nope"); err != nil {
			break
		}
	}
	if opened == 2000 {
		t.Fatal("the session was never cut")
	}

	aID := cliSrc.SVID().ID
	got := cuts.get()
	if len(got) != 1 || got[0].Dir != "in" || got[0].Peer != aID || got[0].Reason != CutBuffer ||
		!errors.Is(got[0].Err, ErrPeerBuffer) || got[0].Streams < bufferCutAt(limit) {
		t.Fatalf("cuts reported: %+v, want one of %s over the buffer budget", got, aID)
	}
	if n := SessionsCut(ts.metrics, "in", CutBuffer); n != 1 {
		t.Errorf("fogmesh_mesh_sessions_cut_total{dir=in,reason=buffer} = %d, want 1", n)
	}
	wantMetric(t, ts.metrics, `fogmesh_agent_peer_buffer_session_cuts_total 1`)
	testenv.WaitFor(t, 5*time.Second, "the cut logged", func() bool {
		for _, line := range strings.Split(logs.String(), "\n") {
			if strings.Contains(line, "level=WARN") && strings.Contains(line, "session cut") &&
				strings.Contains(line, "peerId="+aID.String()) && strings.Contains(line, "reason=buffer") {
				return true
			}
		}
		return false
	})
}

// TestPeerBufferForgetsEndedSessions: a peer's sessions count for the
// budget only while they live. yamux still counts a closed session's
// streams; a session cut over the budget, or closed by the peer, while
// another of the peer's sessions lives on, must not count against that
// one (its streams would all be cut), and once all have ended nothing of
// the peer is left.
func TestPeerBufferForgetsEndedSessions(t *testing.T) {
	const (
		window = MinStreamWindow
		limit  = 16
	)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"web-1": work}, func(c *ServerConfig) {
		c.StreamWindow = window
		c.PeerStreams = NewPeerStreams(0, limit*window, c.Metrics)
	})
	keeper := rawPeer(t, srv, window) // lives through the others' ends
	if st, code, _, err := openTo(keeper, "web-1"); err != nil || code != StatusOK {
		t.Fatalf("first stream: %v %v", err, code)
	} else {
		st.Close()
	}
	var sessions []*yamux.Session
	for range 4 {
		sessions = append(sessions, rawPeer(t, srv, window))
	}
	for _, sess := range sessions[:2] { // left open past the budget: cut
		for i := 0; ; i++ {
			if _, _, _, err := openTo(sess, "nope"); err != nil {
				break
			}
			if i > 4*bufferCutAt(limit) {
				t.Fatal("a session leaving refused streams open was never cut")
			}
		}
	}
	for _, sess := range sessions[2:] { // served, then closed by the peer
		st, code, _, err := openTo(sess, "web-1")
		if err != nil || code != StatusOK {
			t.Fatalf("stream on a session within the budget: %v %v", err, code)
		}
		st.Close()
		sess.Close()
	}
	eventually(t, "the ended sessions let go", func() bool {
		return srv.yamuxStreamsForTest() <= 1 && srv.limit.yamuxSessionsForTest() == 1
	})

	for i := range 2 * limit { // closed at once, as this agent's client does
		st, code, msg, err := openTo(keeper, "web-1")
		if err != nil || code != StatusOK {
			t.Fatalf("stream %d of the peer's live session after the others ended: %v %v %q, want served", i, err, code, msg)
		}
		st.Close()
	}
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_session_cuts_total 2`)
	keeper.Close()
	eventually(t, "the peer forgotten", func() bool { return srv.limit.peersForTest() == 0 })
}

// cutOnce opens a session to srv and streams on it, left open, until the
// server cuts it.
func cutOnce(t *testing.T, srv *testServer) {
	t.Helper()
	sess := rawPeer(t, srv, MinStreamWindow)
	openUntilCut(t, sess)
}

// openUntilCut opens streams on sess, left open, until the server cuts
// the session (a budget of 16 windows), and waits for its end.
func openUntilCut(t *testing.T, sess *yamux.Session) {
	t.Helper()
	for i := 0; ; i++ {
		if _, err := sess.OpenStream(); err != nil {
			break
		}
		if i > 4*bufferCutAt(16) {
			t.Fatal("a session leaving its streams open was never cut")
		}
	}
	select {
	case <-sess.CloseChan():
	case <-time.After(5 * time.Second):
		t.Fatal("a session leaving its streams open was never cut")
	}
}

// TestPeerBufferCutsReportedAtMostEvery: a peer can be cut over the budget
// over and over (a new session, a few hundred streams, about 20 times a
// second from one connection on this machine), unlike a revoked peer,
// which is refused at the handshake. So a peer's buffer cuts are reported
// (logged as a warning, audited through OnCut) at most once every
// peerBufferWarnEvery (the others said later: peerbuffer_report_test.go); every
// cut is counted.
func TestPeerBufferCutsReportedAtMostEvery(t *testing.T) {
	cuts := &cutLog{}
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, func(c *ServerConfig) {
		c.StreamWindow = MinStreamWindow
		c.OnCut = cuts.add
		c.PeerStreams = NewPeerStreams(0, 16*MinStreamWindow, c.Metrics)
	})
	for range 3 {
		cutOnce(t, srv)
	}
	if got := cuts.get(); len(got) != 1 || got[0].Reason != CutBuffer {
		t.Fatalf("cuts reported after 3 in a row: %+v, want the first only", got)
	}
	wantMetric(t, srv.metrics, `fogmesh_mesh_sessions_cut_total{dir="in",reason="buffer"} 3`)
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_session_cuts_total 3`)
}

// TestPeerBufferRefusalNamesTheBudget: a stream refused over the buffer
// budget says so, with the budget's count, to the source agent, which
// logs it. Before, it read as a refusal over maxStreamsPerPeer, "at most
// 1024 open at once", while the peer had two: the operator was sent to
// the wrong setting.
func TestPeerBufferRefusalNamesTheBudget(t *testing.T) {
	const window = MinStreamWindow
	d := pipeDialer{peer: make(chan net.Conn, 4)}
	srv := startServer(t, listen(t, "127.0.0.1:0"), d, func(c *ServerConfig) {
		c.StreamWindow = window
		c.PeerStreams = NewPeerStreams(0, 2*window, c.Metrics)
	})
	c, _ := newClient(t)
	for range 2 {
		conn, err := c.Dial(t.Context(), srv.addr, header("web-1"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		w := <-d.peer
		t.Cleanup(func() { w.Close() })
	}
	_, err := c.Dial(t.Context(), srv.addr, header("web-1"))
	if !errors.Is(err, ErrPeerBusy) {
		t.Fatalf("third stream: %v, want refused as busy", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "meshPeerBuffer") || !strings.Contains(msg, "at most 2 ") || strings.Contains(msg, "1024") {
		t.Errorf("refusal %q: want it to name the buffer budget of 2 streams, not the stream cap", msg)
	}
}

// TestPeerBufferCutsSessionHoldingStreams: a peer with two sessions
// leaves refused streams open on A, up to the cut bound, then opens a
// stream on B to a workload. The stream on B takes the peer past the
// bound, but A holds the streams: A is cut (reported as every buffer cut
// is), and B's stream is served to its end. Before, the session of the
// new stream was cut: B, whose streams were being served, while A kept
// its streams.
func TestPeerBufferCutsSessionHoldingStreams(t *testing.T) {
	const (
		window = MinStreamWindow
		limit  = 16
	)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	cuts := &cutLog{}
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"web-1": work}, func(c *ServerConfig) {
		c.StreamWindow = window
		c.OnCut = cuts.add
		c.PeerStreams = NewPeerStreams(0, limit*window, c.Metrics)
	})
	a, b := rawPeer(t, srv, window), rawPeer(t, srv, window) // one peer: the same address
	for i := range bufferCutAt(limit) {                      // at the bound, not past it: no cut yet
		if _, _, _, err := openTo(a, "nope"); err != nil {
			t.Fatalf("refused stream %d of A, within the bound: %v", i, err)
		}
	}
	st, code, msg, err := openTo(b, "web-1")
	if err != nil || code != StatusOK {
		t.Fatalf("stream on B past the bound: %v %v %q, want served", err, code, msg)
	}
	roundTrip(t, st, "B's stream is served to its end")
	st.Close()
	select {
	case <-a.CloseChan():
	case <-time.After(5 * time.Second):
		t.Fatal("A, holding the peer's streams, was not cut")
	}
	if b.IsClosed() {
		t.Error("B, whose stream took the peer past the bound, was cut")
	}
	got := cuts.get()
	if len(got) != 1 || got[0].Reason != CutBuffer || !errors.Is(got[0].Err, ErrPeerBuffer) || got[0].Streams != bufferCutAt(limit) {
		t.Fatalf("cuts reported: %+v, want one over the buffer budget of the session holding %d streams", got, bufferCutAt(limit))
	}
	wantMetric(t, srv.metrics, `fogmesh_mesh_sessions_cut_total{dir="in",reason="buffer"} 1`)
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_session_cuts_total 1`)
}
