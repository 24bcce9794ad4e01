package transport

import (
	"errors"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// The per-peer budget of yamux stream windows (peerbuffer.go): a peer's
// streams over yamux hold at most the budget here, however many it opens
// and however slowly their workloads read; a peer that leaves refused
// streams open loses its session; the default budget refuses nothing the
// stream cap takes; no cap, no default budget.

// fillStream writes the test stream to c until a write makes no progress
// for stall, or limit bytes are written, and returns the bytes written.
func fillStream(c net.Conn, stall time.Duration, limit int) (int, error) {
	const chunk = 16 << 10
	written := 0
	for written < limit {
		c.SetWriteDeadline(time.Now().Add(stall))
		n, err := c.Write(pattern(written, chunk))
		written += n
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			return written, err
		}
	}
	c.SetWriteDeadline(time.Time{})
	return written, nil
}

// rawPeer is a peer agent's yamux session to srv, driven by hand.
func rawPeer(t *testing.T, srv *testServer, window int) *yamux.Session {
	t.Helper()
	raw, err := net.Dial("tcp", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := yamux.Client(raw, yamuxConfig(window))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	return sess
}

// openTo opens a stream of sess to endpoint and returns it with the
// server's answer; it never closes the stream.
func openTo(sess *yamux.Session, endpoint string) (*yamux.Stream, Status, string, error) {
	st, err := sess.OpenStream()
	if err != nil {
		return nil, 0, "", err
	}
	st.SetDeadline(time.Now().Add(5 * time.Second))
	h := header(endpoint)
	h.Source = "node-a"
	if err := WriteHeader(st, h); err != nil {
		return st, 0, "", err
	}
	code, msg, err := ReadStatus(st)
	st.SetDeadline(time.Time{})
	return st, code, msg, err
}

// TestPeerBufferBoundsServedStreams: a peer opens 64 streams to workloads
// that never read and writes all it can on each. Without the budget each
// stream buffers its window here (64 × 256 KiB = 16 MiB); with a budget
// of 16 windows at most 16 are served and the rest refused as busy, and
// the bytes the agent took stay within the budget (plus each relay's
// buffer).
func TestPeerBufferBoundsServedStreams(t *testing.T) {
	const (
		window  = MinStreamWindow
		limit   = 16 // the budget in windows
		streams = 64
	)
	d := pipeDialer{peer: make(chan net.Conn, streams)}
	t.Cleanup(func() { // the workloads, which never read
		for {
			select {
			case w := <-d.peer:
				w.Close()
			default:
				return
			}
		}
	})
	srv := startServer(t, listen(t, "127.0.0.1:0"), d, func(c *ServerConfig) {
		c.StreamWindow = window
		c.PeerStreams = NewPeerStreams(0, limit*window, c.Metrics)
	})
	c, _ := newClient(t)

	var served []net.Conn
	refused := 0
	for range streams {
		conn, err := c.Dial(t.Context(), srv.addr, header("web-1"))
		if err != nil {
			if !errors.Is(err, ErrPeerBusy) {
				t.Fatalf("stream: %v, want served or refused as busy", err)
			}
			refused++
			continue
		}
		served = append(served, conn)
	}
	t.Cleanup(func() {
		for _, conn := range served {
			conn.Close()
		}
	})
	var (
		mu       sync.Mutex
		total    int
		failures []error
		wg       sync.WaitGroup
	)
	for _, conn := range served {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := fillStream(conn, 500*time.Millisecond, 4*window)
			mu.Lock()
			defer mu.Unlock()
			total += n
			if err != nil {
				failures = append(failures, err)
			}
		}()
	}
	wg.Wait()
	for _, err := range failures {
		t.Errorf("writing a served stream: %v", err)
	}
	t.Logf("%d streams served, %d refused; %d KiB taken by the agent", len(served), refused, total>>10)
	if len(served) > limit {
		t.Errorf("%d streams served at once, want at most %d (a budget of %d windows)", len(served), limit, limit)
	}
	if max := limit*window + len(served)*relaySlack; total > max {
		t.Errorf("the agent took %d bytes from the peer's streams, want at most %d (the budget and the relays' buffers)", total, max)
	}
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_rejections_total `+strconv.Itoa(refused))
}

// TestPeerBufferCutsPeerLeavingRefusedStreamsOpen: a refused stream stays
// in yamux, its window granted, until the peer closes it too (or for a
// minute). A peer that opens streams, is refused and never closes them
// made the agent hold as many as it opened in a minute (refusing them over
// the budget alone does not help: each refusal lingers too); now the
// streams yamux holds for it stay within bufferCutAt (the budget, and what
// a burst explains): past it, its session is cut, which
// frees them all, and the peer may start again.
func TestPeerBufferCutsPeerLeavingRefusedStreamsOpen(t *testing.T) {
	const (
		window = MinStreamWindow
		limit  = 16 // the budget in windows
		opens  = 2000
	)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"web-1": work}, func(c *ServerConfig) {
		c.StreamWindow = window
		c.PeerStreams = NewPeerStreams(0, limit*window, c.Metrics)
	})
	sess := rawPeer(t, srv, window)
	maxHeld, answered, busy := 0, 0, 0
	for range opens {
		_, code, msg, err := openTo(sess, "nope") // an unknown endpoint: refused
		if err != nil {
			break // the session was cut
		}
		if code != StatusRefused {
			t.Fatalf("stream to an unknown endpoint: status %v %q, want refused", code, msg)
		}
		answered++
		if strings.HasPrefix(msg, errPeerStreams.Error()) {
			busy++
		}
		maxHeld = max(maxHeld, srv.yamuxStreamsForTest())
	}
	t.Logf("%d refused streams left open (%d over the budget); the agent's yamux held at most %d streams", answered, busy, maxHeld)
	if max := bufferCutAt(limit); maxHeld > max {
		t.Errorf("the agent's yamux held %d streams of a peer that leaves refused ones open, want at most %d (a budget of %d)", maxHeld, max, limit)
	}
	if answered == opens {
		t.Fatal("the peer's session was never cut")
	}
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_session_cuts_total 1`)
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_rejections_total `+strconv.Itoa(busy))
	eventually(t, "the cut session's streams freed", func() bool { return srv.yamuxStreamsForTest() == 0 })

	c, _ := newClient(t)
	dialRoundTrip(t, c, srv.addr, "web-1", "the peer is served again")
}

// TestPeerBufferBurstNotCut: a burst of 128 streams at once from this
// agent's client, against a budget of 16 windows, fills the session's
// accept backlog, which yamux counts as held: the budget's streams are
// served (the backlog is not counted against it) and the rest refused as
// busy, and the session is not cut (refused streams are closed by the
// client at once).
func TestPeerBufferBurstNotCut(t *testing.T) {
	const (
		window = MinStreamWindow
		limit  = 16
		burst  = 128
	)
	work := serveWorkload(t, "127.0.0.1:0", echo)
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"web-1": work}, func(c *ServerConfig) {
		c.StreamWindow = window
		c.PeerStreams = NewPeerStreams(0, limit*window, c.Metrics)
	})
	c, _ := newClient(t)
	var (
		mu          sync.Mutex
		served, bus int
		conns       []net.Conn
		wg          sync.WaitGroup
	)
	for range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := c.Dial(t.Context(), srv.addr, header("web-1"))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				served++
				conns = append(conns, conn) // held until the burst is over
			case errors.Is(err, ErrPeerBusy):
				bus++
			default:
				t.Errorf("stream of a burst: %v, want served or refused as busy", err)
			}
		}()
	}
	wg.Wait()
	for _, conn := range conns {
		conn.Close()
	}
	t.Logf("%d served, %d refused as busy", served, bus)
	if served == 0 || served > limit {
		t.Errorf("%d streams of the burst served, want 1 to %d", served, limit)
	}
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_session_cuts_total 0`)
	eventually(t, "the served streams ended", func() bool { return srv.ActiveStreams() == 0 })
	dialRoundTrip(t, c, srv.addr, "web-1", "the session still serves")
}

// TestPeerBufferDefaultWithinCap: with the default budget (twice the
// stream cap's windows) the cap decides alone, even while the agent's
// ended streams linger in yamux: a peer holds its cap of streams the agent
// closed (their header timed out) and not yet closed by the peer, and
// still gets its cap of new streams; the next one is refused by the cap.
func TestPeerBufferDefaultWithinCap(t *testing.T) {
	const maxStreams = 64
	work := serveWorkload(t, "127.0.0.1:0", echo)
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"web-1": work}, func(c *ServerConfig) {
		c.HeaderTimeout = 500 * time.Millisecond
		c.PeerStreams = NewPeerStreams(maxStreams, 0, c.Metrics)
	})
	sess := rawPeer(t, srv, DefaultStreamWindow)
	var lingering []*yamux.Stream
	for range maxStreams { // no header: the agent closes them after HeaderTimeout
		st, err := sess.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		lingering = append(lingering, st)
	}
	for _, st := range lingering {
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		if code, _, err := ReadStatus(st); err != nil || code != StatusBadHeader {
			t.Fatalf("a stream without its header: %v %v, want a bad header", err, code)
		}
	}
	eventually(t, "the header-less streams closed by the agent", func() bool { return srv.ActiveStreams() == 0 })
	if n := srv.yamuxStreamsForTest(); n != maxStreams {
		t.Fatalf("yamux holds %d streams, want the %d the peer keeps open", n, maxStreams)
	}

	for i := range maxStreams {
		st, code, msg, err := openTo(sess, "web-1")
		if err != nil || code != StatusOK {
			t.Fatalf("stream %d within the cap, %d lingering: %v %v %q, want served", i, len(lingering), err, code, msg)
		}
		defer st.Close()
	}
	_, code, msg, err := openTo(sess, "web-1")
	if err != nil || code != StatusRefused || !strings.HasPrefix(msg, errPeerStreams.Error()) {
		t.Fatalf("stream over the cap: %v %v %q, want refused as too many streams", err, code, msg)
	}
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_stream_limit_rejections_total 1`)
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_rejections_total 0`)
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_session_cuts_total 0`)
	for _, st := range lingering {
		st.Close()
	}
	eventually(t, "the lingering streams freed", func() bool { return srv.yamuxStreamsForTest() == maxStreams+1 })
}

// TestPeerBufferNoCapNoBudget: without a stream cap there is no default
// budget: a peer that leaves hundreds of refused streams open is still
// served, and its session kept.
func TestPeerBufferNoCapNoBudget(t *testing.T) {
	const opens = 300
	work := serveWorkload(t, "127.0.0.1:0", echo)
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"web-1": work}, func(c *ServerConfig) {
		c.StreamWindow = MinStreamWindow
		c.PeerStreams = NewPeerStreams(-1, 0, c.Metrics)
	})
	sess := rawPeer(t, srv, MinStreamWindow)
	for i := range opens {
		if _, code, msg, err := openTo(sess, "nope"); err != nil || code != StatusRefused {
			t.Fatalf("stream %d to an unknown endpoint: %v %v %q, want refused", i, err, code, msg)
		}
	}
	st, code, msg, err := openTo(sess, "web-1")
	if err != nil || code != StatusOK {
		t.Fatalf("stream after %d lingering: %v %v %q, want served", opens, err, code, msg)
	}
	st.Close()
	if n := srv.yamuxStreamsForTest(); n < opens {
		t.Errorf("yamux holds %d streams, want the %d the peer left open", n, opens)
	}
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_rejections_total 0`)
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_session_cuts_total 0`)
}

// TestPeerBufferStreams: the budget in streams for each setting, and a cut
// bound no lower than it (a sum past int wrapped to a cut at every stream).
func TestPeerBufferStreams(t *testing.T) {
	for _, tc := range []struct{ max, buffer, window, want int }{
		{0, 0, 1 << 20, 2 * DefaultMaxStreamsPerPeer}, // default: twice the cap
		{100, 0, 1 << 20, 200},
		{-1, 0, 1 << 20, 0},       // no cap: no default budget
		{0, -1, 1 << 20, 0},       // negative: none
		{-1, 8 << 20, 1 << 20, 8}, // a budget without a cap
		{0, 8 << 20, 256 << 10, 32},
		{0, 1, 1 << 20, 1},                             // at least one stream
		{math.MaxInt, 0, 1 << 20, math.MaxInt / 2 * 2}, // twice a cap past half of int: saturates, not wraps to no budget
	} {
		got := NewPeerStreams(tc.max, tc.buffer, nil).bufferStreams(tc.window)
		if got != tc.want {
			t.Errorf("max %d, buffer %d, window %d: %d streams, want %d", tc.max, tc.buffer, tc.window, got, tc.want)
		}
		if cut := bufferCutAt(got); got > 0 && cut < got {
			t.Errorf("max %d, buffer %d, window %d: a budget of %d streams cuts past %d", tc.max, tc.buffer, tc.window, got, cut)
		}
	}
}

// TestPeerBufferCutBoundOverSessions: the streams yamux holds are counted
// over all of a peer's sessions: a peer spreading refused streams it
// leaves open over 4 sessions holds no more than over one, and each
// session that takes a stream past the bound is cut.
func TestPeerBufferCutBoundOverSessions(t *testing.T) {
	const (
		window = MinStreamWindow
		limit  = 16
		opens  = 4000
	)
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, func(c *ServerConfig) {
		c.StreamWindow = window
		c.PeerStreams = NewPeerStreams(0, limit*window, c.Metrics)
	})
	var live []*yamux.Session
	for range 4 {
		live = append(live, rawPeer(t, srv, window))
	}
	maxHeld, cut := 0, 0
	for i := 0; i < opens && len(live) > 0; i++ {
		k := i % len(live)
		if _, _, _, err := openTo(live[k], "nope"); err != nil {
			live = append(live[:k], live[k+1:]...)
			cut++
			continue
		}
		maxHeld = max(maxHeld, srv.yamuxStreamsForTest())
	}
	t.Logf("%d sessions cut; the agent's yamux held at most %d streams", cut, maxHeld)
	if max := bufferCutAt(limit); maxHeld > max {
		t.Errorf("the agent's yamux held %d streams over 4 sessions, want at most %d", maxHeld, max)
	}
	if cut != 4 {
		t.Errorf("%d of 4 sessions cut, want all", cut)
	}
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_session_cuts_total 4`)
}

// TestPeerBufferServedExactAcrossSessions: the sessions of one peer
// accepting streams at the same moment are held to the budget together.
// Each session checks the served count as it accepts a stream: a check
// that only read the count let every session that checked before any of
// them counted its stream pass (up to one per session over the budget, 64
// sessions over a budget of 16 windows: five times it). A verdict to serve
// takes its place in the count as it is given.
func TestPeerBufferServedExactAcrossSessions(t *testing.T) {
	const (
		limit    = 8
		sessions = 64
	)
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, func(c *ServerConfig) {
		c.StreamWindow = MinStreamWindow
		c.PeerStreams = NewPeerStreams(0, limit*MinStreamWindow, c.Metrics)
	})
	pc := &peerCount{}
	var (
		start sync.WaitGroup
		done  sync.WaitGroup
		mu    sync.Mutex
		ok    int
	)
	start.Add(1)
	for range sessions {
		done.Add(1)
		go func() { // one session's accept loop, at its check
			defer done.Done()
			start.Wait()
			if srv.overBuffer(nil, &peerAuth{}, pc, limit, srv.log) == bufferOK {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	start.Done()
	done.Wait()
	if ok != limit {
		t.Errorf("%d streams given to serve by %d sessions at once, want the budget's %d", ok, sessions, limit)
	}
	if n := pc.yamux.served.Load(); n != limit {
		t.Errorf("served count %d after %d verdicts to serve, want %d", n, ok, limit)
	}
}

// BenchmarkPeerBufferCheck is the budget's cost per accepted stream (the
// check and the served count's add and release), for a peer with one
// session and with the most it may have (maxSessionsPerPeer).
func BenchmarkPeerBufferCheck(b *testing.B) {
	for _, n := range []int{1, maxSessionsPerPeer} {
		b.Run(strconv.Itoa(n)+"sessions", func(b *testing.B) {
			srv := startServer(b, listen(b, "127.0.0.1:0"), mapDialer{}, nil)
			pc := &peerCount{}
			for range n {
				c1, c2 := net.Pipe()
				sess, err := yamux.Server(c1, yamuxConfig(DefaultStreamWindow))
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { sess.Close(); c2.Close() })
				pc.yamux.add(sess, &peerAuth{}, nil)
			}
			pa := &peerAuth{}
			b.ReportAllocs()
			for b.Loop() {
				if srv.overBuffer(nil, pa, pc, 2*DefaultMaxStreamsPerPeer, srv.log) != bufferOK {
					b.Fatal("refused")
				}
				pc.yamux.unserve()
			}
		})
	}
}

// TestPeerBufferHeldSkipsClosedSessions: yamux keeps counting the streams
// of a closed session (its map is not cleared), and a session is closed
// (cut, dropped, its connection dead) a moment before its serveConn lets
// it go; in that moment its streams, freed, must not count against the
// peer's other sessions, which would be cut in turn.
func TestPeerBufferHeldSkipsClosedSessions(t *testing.T) {
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, nil)
	closed := rawPeer(t, srv, MinStreamWindow)
	live := rawPeer(t, srv, MinStreamWindow)
	for range 3 {
		if _, err := closed.OpenStream(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := live.OpenStream(); err != nil {
		t.Fatal(err)
	}
	var p peerSessions
	p.add(closed, &peerAuth{}, nil)
	p.add(live, &peerAuth{}, nil)
	if n := p.held(); n != 4 {
		t.Fatalf("held %d streams of two sessions, want 4", n)
	}
	closed.Close()
	if n := closed.NumStreams(); n != 3 {
		t.Fatalf("yamux counts %d streams of a closed session of 3: this test no longer tests anything", n)
	}
	if n := p.held(); n != 1 {
		t.Errorf("held %d streams with one session closed, want its live session's 1", n)
	}
}
