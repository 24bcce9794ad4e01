package transport

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// testPeerIdle is the bound the pruning tests give a client: idle peers
// are forgotten within a few polls of eventually.
const testPeerIdle = 50 * time.Millisecond

// newPruningClient is a client (node-a) that forgets peers idle for idle.
// Its cleanup fails the test, where newClient's would hang it, when Close
// waits for a session it missed: one left on a forgotten peer.
func newPruningClient(t *testing.T, cfg ClientConfig, idle time.Duration) *Client {
	t.Helper()
	cfg.SourceNode = "node-a"
	c := NewClient(cfg)
	t.Cleanup(func() { closeWithin(t, c, 5*time.Second, "Client.Close waits: a session outlived its peer") })
	c.SetPeerIdleForTest(idle)
	return c
}

// hasPeer reports whether c keeps state for meshAddr, in either index.
func hasPeer(c *Client, meshAddr string) bool {
	peers, rtts := c.PeersForTest()
	return slices.Contains(peers, meshAddr) || slices.Contains(rtts, meshAddr)
}

// sweepPast dials trigger (an echo endpoint) until the peer at idle, which
// was dialed after every peer the test holds, is pruned: a sweep ran once
// all of them had been idle past the bound.
func sweepPast(t *testing.T, c *Client, trigger, idle string) {
	t.Helper()
	eventually(t, "the idle peer "+idle+" to be pruned", func() bool {
		dialRoundTrip(t, c, trigger, "echo", "sweep")
		return !hasPeer(c, idle)
	})
}

// TestIdlePeersPruned: peers that went away (a node replaced, an address
// changed) are forgotten once idle past the bound, so that a long-running
// agent's client does not grow with every mesh address it ever dialed.
func TestIdlePeersPruned(t *testing.T) {
	d := mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)}
	up := startServer(t, listen(t, "127.0.0.1:0"), d, nil)
	// Kept for an hour while the peers are dialed: a CI run took over
	// testPeerIdle to start, dial and stop them all, and a dial swept the
	// first ones before they were counted.
	c := newPruningClient(t, ClientConfig{}, time.Hour)

	const n = 8
	for range n {
		gone := startServer(t, listen(t, "127.0.0.1:0"), d, nil)
		dialRoundTrip(t, c, gone.addr, "echo", "before it goes")
		gone.stop(t)
	}
	eventually(t, "the sessions to the gone peers to close", func() bool { return c.Sessions() == 0 })
	if peers, rtts := c.PeersForTest(); len(peers) != n || len(rtts) != n {
		t.Fatalf("%d peers, %d RTT entries before the sweep; want %d", len(peers), len(rtts), n)
	}
	c.SetPeerIdleForTest(testPeerIdle)
	// A Dial sweeps once the bound has passed.
	eventually(t, "only the peer still up to be kept", func() bool {
		dialRoundTrip(t, c, up.addr, "echo", "sweep")
		peers, rtts := c.PeersForTest()
		return slices.Equal(peers, []string{up.addr}) && slices.Equal(rtts, []string{up.addr})
	})
}

// TestLivePeerNotPruned: a peer with a live session is kept however long
// it was not dialed, with its session and RTT, while a peer whose session
// was dropped is pruned; that one dials again as a new peer.
func TestLivePeerNotPruned(t *testing.T) {
	d := mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)}
	live, dropped, trigger := startServer(t, listen(t, "127.0.0.1:0"), d, nil),
		startServer(t, listen(t, "127.0.0.1:0"), d, nil), startServer(t, listen(t, "127.0.0.1:0"), d, nil)
	c := newPruningClient(t, ClientConfig{PingInterval: 20 * time.Millisecond}, testPeerIdle)

	dialRoundTrip(t, c, live.addr, "echo", "live")
	eventually(t, "an RTT to the live peer", func() bool { _, ok := c.RTT(live.addr); return ok })
	dialRoundTrip(t, c, dropped.addr, "echo", "dropped")
	c.DropSession(dropped.addr)
	sweepPast(t, c, trigger.addr, dropped.addr)

	if !hasPeer(c, live.addr) {
		t.Fatal("the peer with a live session was pruned")
	}
	if _, ok := c.RTT(live.addr); !ok {
		t.Error("the live peer's RTT was forgotten")
	}
	dialRoundTrip(t, c, live.addr, "echo", "after the sweep")
	if n := live.ln.accepted.Load(); n != 1 {
		t.Errorf("the live peer accepted %d connections, want 1 (its session kept)", n)
	}
	dialRoundTrip(t, c, dropped.addr, "echo", "again")
	if !hasPeer(c, dropped.addr) || c.Sessions() != 3 {
		t.Errorf("after dialing the pruned peer again: known %v, %d sessions; want known, 3", hasPeer(c, dropped.addr), c.Sessions())
	}
}

// TestPeerWithOpenStreamNotPruned: a peer without a session of its own is
// kept while a stream to it is open, on a retired session or on a
// connection of its own (direct), and pruned once it closes.
func TestPeerWithOpenStreamNotPruned(t *testing.T) {
	for _, tc := range []struct {
		name   string
		direct bool // DirectStreams: the stream has a connection of its own
	}{
		{"retired session", false},
		{"direct stream", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)}
			held, idle, trigger := startServer(t, listen(t, "127.0.0.1:0"), d, nil),
				startServer(t, listen(t, "127.0.0.1:0"), d, nil), startServer(t, listen(t, "127.0.0.1:0"), d, nil)
			c := newPruningClient(t, ClientConfig{DirectStreams: tc.direct}, testPeerIdle)

			conn, err := c.Dial(t.Context(), held.addr, header("echo"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if !tc.direct && !c.Retire(held.addr) {
				t.Fatal("no session retired")
			}
			dialRoundTrip(t, c, idle.addr, "echo", "idle")
			c.DropSession(idle.addr)
			sweepPast(t, c, trigger.addr, idle.addr)

			if !hasPeer(c, held.addr) {
				t.Fatal("the peer with an open stream was pruned")
			}
			if tc.direct && !c.Live(held.addr) {
				t.Error("the path of an open direct stream is not live")
			}
			roundTrip(t, conn, "still open")
			conn.Close()
			eventually(t, "the peer to be pruned once its stream closed", func() bool {
				dialRoundTrip(t, c, trigger.addr, "echo", "sweep")
				return !hasPeer(c, held.addr)
			})
		})
	}
}

// TestPruneRacesDial: with a bound of zero every Dial sweeps while others
// dial the same peers and their sessions are dropped. No session may be
// left on a forgotten peer: the session gauge would stay above Sessions,
// and Close, which closes the sessions of the peers it knows, would wait
// for it forever.
func TestPruneRacesDial(t *testing.T) {
	d := mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)}
	var addrs []string
	for range 3 {
		addrs = append(addrs, startServer(t, listen(t, "127.0.0.1:0"), d, nil).addr)
	}
	set := metrics.NewSet()
	c := newPruningClient(t, ClientConfig{Metrics: set}, time.Nanosecond)

	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 25 {
				addr := addrs[(g+i)%len(addrs)]
				if conn, err := c.Dial(t.Context(), addr, header("echo")); err == nil {
					conn.Close() // a Dial may fail: another dropped its session
				}
				if i%3 == g%3 {
					c.DropSession(addr)
				}
			}
		})
	}
	wg.Wait()
	eventually(t, "every open session to be a known peer's", func() bool {
		return strings.Contains(metricsText(set), fmt.Sprintf("fogmesh_mesh_sessions{dir=\"out\"} %d\n", c.Sessions()))
	})
	closeWithin(t, c, 5*time.Second, "Client.Close waits: a session outlived its peer")
}
