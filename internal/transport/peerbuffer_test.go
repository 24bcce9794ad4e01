package transport

import (
	"errors"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// The per-peer budget of stream windows (peerbuffer.go): a peer's streams
// over yamux hold at most the budget in the agent, however many it opens
// and however slowly their workloads read, and each stream it is allowed
// still gets its whole window.

// fillStream writes the test stream to c until a write makes no progress
// for stall after at least atLeast bytes went through (a stall before that
// is a busy machine, retried for up to 20 s), or until limit bytes are
// written, and returns the bytes written: fillUntilBlocked for a goroutine.
func fillStream(c net.Conn, stall time.Duration, atLeast, limit int) (int, error) {
	const chunk = 16 << 10
	deadline := time.Now().Add(20 * time.Second)
	written := 0
	for written < limit {
		c.SetWriteDeadline(time.Now().Add(stall))
		n, err := c.Write(pattern(written, chunk))
		written += n
		if err == nil {
			continue
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return written, err
		}
		if written >= atLeast || time.Now().After(deadline) {
			break
		}
	}
	c.SetWriteDeadline(time.Time{})
	return written, nil
}

// TestPeerBufferBoundsBufferedBytes: a peer opens 64 streams to workloads
// that never read and writes all it can on each. Without the budget each
// stream buffers its window in the agent (64 × 256 KiB = 16 MiB); with a
// budget of 16 windows the agent serves at most 16 of them and refuses
// the rest as busy, so the bytes it took stay within the budget (plus the
// relay's buffer per stream), and every served stream still gets its whole
// window, with nothing lost.
func TestPeerBufferBoundsBufferedBytes(t *testing.T) {
	const (
		window  = MinStreamWindow
		budget  = 16 * window
		streams = 64
	)
	d := pipeDialer{peer: make(chan net.Conn, streams)}
	defer func() { // the workloads, which never read
		for {
			select {
			case w := <-d.peer:
				w.Close()
			default:
				return
			}
		}
	}()
	srv := startServer(t, listen(t, "127.0.0.1:0"), d, func(c *ServerConfig) {
		c.StreamWindow = window
		c.PeerStreams = NewPeerStreams(0, budget, c.Metrics)
	})
	c, _ := newClient(t)

	var (
		mu       sync.Mutex
		served   []net.Conn
		written  []int
		refused  int
		failures []error
	)
	var wg sync.WaitGroup
	for range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := c.Dial(t.Context(), srv.addr, header("web-1"))
			if err != nil {
				mu.Lock()
				defer mu.Unlock()
				if errors.Is(err, ErrPeerBusy) {
					refused++
				} else {
					failures = append(failures, err)
				}
				return
			}
			n, err := fillStream(conn, 500*time.Millisecond, window-headerRoom, 4*window)
			mu.Lock()
			defer mu.Unlock()
			served = append(served, conn)
			written = append(written, n)
			if err != nil {
				failures = append(failures, err)
			}
		}()
	}
	wg.Wait()
	defer func() {
		for _, conn := range served {
			conn.Close()
		}
	}()
	for _, err := range failures {
		t.Errorf("stream: %v, want served or refused as busy", err)
	}
	total := 0
	for _, n := range written {
		total += n
	}
	t.Logf("%d streams served, %d refused; %d KiB taken by the agent", len(served), refused, total>>10)
	if len(served) > budget/window {
		t.Errorf("%d streams served at once, want at most %d (budget %d bytes, window %d)", len(served), budget/window, budget, window)
	}
	if max := budget + len(served)*relaySlack; total > max {
		t.Errorf("the agent took %d bytes from the peer's streams, want at most %d (the budget and the relays' buffers)", total, max)
	}
	for i, n := range written {
		if n < window-headerRoom {
			t.Errorf("served stream %d: %d bytes in flight before writes blocked, want its whole window (%d)", i, n, window)
		}
	}
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_rejections_total `+strconv.Itoa(refused))
}

// TestPeerBufferKeepsStreamWindow: a budget of one window still lets the
// peer's one stream have its whole window in flight (the rate of a single
// stream is its window per RTT), and its bytes arrive whole.
func TestPeerBufferKeepsStreamWindow(t *testing.T) {
	d := pipeDialer{peer: make(chan net.Conn, 1)}
	srv := startServer(t, listen(t, "127.0.0.1:0"), d, func(c *ServerConfig) {
		c.StreamWindow = MaxStreamWindow
		c.PeerStreams = NewPeerStreams(0, MaxStreamWindow, c.Metrics)
	})
	c, _ := newClient(t)
	conn, err := c.Dial(t.Context(), srv.addr, header("web-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	work := <-d.peer
	defer work.Close()
	written := fillUntilBlocked(t, conn, MaxStreamWindow-headerRoom, 64<<20)
	if written > MaxStreamWindow+relaySlack {
		t.Errorf("%d bytes in flight, want at most the window %d and the relay's buffer", written, MaxStreamWindow)
	}
	readPattern(t, work, written)
}

// TestPeerBufferLingeringStreamsBounded: a stream refused (here over the
// stream cap) is closed by the agent, but yamux keeps it, and up to its
// window of data, until the peer closes it too, or for StreamCloseTimeout
// (a minute). A peer that opens streams, is refused and never closes them
// made the agent hold as many as it opened in a minute. Now the agent
// stops taking the peer's streams once it holds 9/8 of its budget, and
// takes them again when the peer closes its streams.
func TestPeerBufferLingeringStreamsBounded(t *testing.T) {
	const (
		window = MinStreamWindow
		limit  = 16 // the budget in streams
		opens  = 600
	)
	srv := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{}, func(c *ServerConfig) {
		c.HeaderTimeout = 30 * time.Second // the held streams below wait for their header all test long
		c.StreamWindow = window
		c.PeerStreams = NewPeerStreams(4, limit*window, c.Metrics)
	})
	raw, err := net.Dial("tcp", srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := yamux.Client(raw, yamuxConfig(window))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	for range 4 { // the cap's 4 places, held by streams that send no header
		if _, err := sess.OpenStream(); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "4 streams awaiting their header", func() bool { return srv.ActiveStreams() == 4 })

	var refused []*yamux.Stream
	var pending *yamux.Stream // the first stream the agent did not answer
	for range opens {
		st, err := sess.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		st.SetReadDeadline(time.Now().Add(2 * time.Second))
		code, _, err := ReadStatus(st)
		if err != nil {
			pending = st
			break
		}
		if code != StatusRefused {
			t.Fatalf("stream over the cap: status %v, want refused", code)
		}
		refused = append(refused, st) // never closed
	}
	held := srv.yamuxStreamsForTest()
	t.Logf("%d refused streams left open; the agent's yamux holds %d streams", len(refused), held)
	if max := limit + limit/8 + 2; held > max {
		t.Fatalf("the agent's yamux holds %d streams of a peer that leaves refused ones open, want at most %d (9/8 of its budget of %d, one over and one waiting)", held, max, limit)
	}
	if pending == nil {
		t.Fatal("the agent answered every stream")
	}
	wantMetric(t, srv.metrics, `fogmesh_agent_peer_buffer_pauses_total 1`)

	for _, st := range refused {
		st.Close()
	}
	pending.SetReadDeadline(time.Now().Add(5 * time.Second))
	if code, msg, err := ReadStatus(pending); err != nil || code != StatusRefused {
		t.Fatalf("waiting stream once the peer closed its refused ones: %v %q, %v; want refused over the cap", code, msg, err)
	}
}
