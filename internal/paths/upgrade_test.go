package paths

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestUpgradeUnderLoad: streams opened in a loop while the relayed path
// is upgraded to a punched one all work; once punched, no relayed session
// stays behind (every one is retired and closes with its last stream) and
// the path gauges count the peer as punched.
func TestUpgradeUnderLoad(t *testing.T) {
	l := newLab(t)
	punching := func(c *Config) { c.UDPAddr = "127.0.0.1:0" }
	a := l.node("site-a", "a", punching)
	b := l.node("site-b", "b", punching)
	waitRelay(t, true, a, b)
	pb := b.peer()
	pb.Addr = closedAddr(t)
	openEcho(t, a.m, pb).Close()

	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				c, err := a.m.Dial(t.Context(), pb, header("echo"))
				if err != nil {
					errs <- err
					return
				}
				c.Close()
			}
		}()
	}
	waitFor(t, "a punched path", func() bool { p, _ := pathTo(a.m, "b"); return p.Kind == Punched })
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a stream failed during the upgrade: %v", err)
	}
	waitFor(t, "no relayed session left", func() bool { return gaugeValue(b.srvSet, meshSessionsIn) == 0 })
	if n, p := a.m.count(Relayed), a.m.count(Punched); n != 0 || p != 1 {
		t.Fatalf("paths by kind: %d relayed, %d punched; want 0, 1", n, p)
	}
	a.m.mu.Lock()
	kind := a.m.peers["b"].kind
	a.m.mu.Unlock()
	if kind != Punched {
		t.Fatalf("a relayed stream opened during the upgrade made the punched peer's path %q", kind)
	}
}

// punchState is whether a punch to name runs and when the next may.
func punchStateOf(m *Manager, name string) (on bool, at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.peers[name]; st != nil {
		return st.punchOn, st.punchAt
	}
	return false, time.Time{}
}

// TestNoPunchingWhenUDPBlocked: when the relay's UDP port does not
// answer, Status says why punching is off, and peers are reached through
// the relay with no punch attempted.
func TestNoPunchingWhenUDPBlocked(t *testing.T) {
	l := newLabUDP(t, false)
	punching := func(c *Config) { c.UDPAddr = "127.0.0.1:0" }
	a := l.node("site-a", "a", punching)
	b := l.node("site-b", "b", punching)
	waitRelay(t, false, a, b)
	var st Status
	waitFor(t, "the punching verdict", func() bool { st = a.m.Status(); return st.PunchNote != "waiting for a relay" })
	if st.Punching || !strings.Contains(st.PunchNote, "UDP does not get out") || len(st.Candidates) == 0 {
		t.Fatalf("status %+v, want punching off because UDP is blocked, with the local candidates", st)
	}
	pb := b.peer()
	pb.Addr = closedAddr(t)
	s := openEcho(t, a.m, pb)
	defer s.Close()
	if p, _ := pathTo(a.m, "b"); p.Kind != Relayed {
		t.Fatalf("path %+v", p)
	}
	if on, at := punchStateOf(a.m, "b"); on || !at.IsZero() {
		t.Fatal("a punch was attempted without a punching socket")
	}
}

// TestPunchFailureStaysRelayed: a punch the peer does not answer (its
// punching is off) fails in the background; the relayed path and its
// streams stay, and no new punch starts before its backoff (punchBackoff).
func TestPunchFailureStaysRelayed(t *testing.T) {
	l := newLab(t)
	a := l.node("site-a", "a", func(c *Config) { c.UDPAddr = "127.0.0.1:0" })
	b := l.node("site-b", "b", func(c *Config) { c.UDPAddr = "off" })
	waitRelay(t, true, a)
	waitRelay(t, false, b)
	if st := b.m.Status(); st.Punching || st.PunchNote != "punching off (udpAddr)" {
		t.Fatalf("b's status %+v", st)
	}
	pb := b.peer()
	pb.Addr = closedAddr(t)
	s := openEcho(t, a.m, pb)
	defer s.Close()
	var failedAt time.Time
	waitFor(t, "the punch to fail", func() bool {
		on, at := punchStateOf(a.m, "b")
		failedAt = at
		return !on && !at.IsZero()
	})
	s.echo(t, "after the failed punch")
	// The next stream schedules the next punch for the backoff after the
	// failure, and does not start it sooner (a punch would move punchAt).
	openEcho(t, a.m, pb).Close()
	if on, at := punchStateOf(a.m, "b"); !on || !at.Equal(failedAt) || !at.After(time.Now()) {
		t.Fatalf("after a failed punch: scheduled %v, next at %v (failed-at mark %v); want one scheduled for then", on, at, failedAt)
	}
	if p, _ := pathTo(a.m, "b"); p.Kind != Relayed || p.Relay != l.relay {
		t.Fatalf("path after the failed punch %+v", p)
	}
}

// TestDropEndsRetiredSessions: a stream opened on the relayed path before
// the upgrade to a punched one (its session retired, draining) ends at
// once on DropNode (the node is dead) and on DropPeer (it was revoked),
// like every other stream to that node.
func TestDropEndsRetiredSessions(t *testing.T) {
	for _, drop := range []string{"DropNode", "DropPeer"} {
		t.Run(drop, func(t *testing.T) {
			l := newLab(t)
			punching := func(c *Config) { c.UDPAddr = "127.0.0.1:0" }
			a := l.node("site-a", "a", punching)
			b := l.node("site-b", "b", punching)
			waitRelay(t, true, a, b)
			pb := b.peer()
			pb.Addr = closedAddr(t)
			s := openEcho(t, a.m, pb)
			defer s.Close()
			waitFor(t, "a punched path", func() bool { p, _ := pathTo(a.m, "b"); return p.Kind == Punched })
			s.echo(t, "on the retired session")
			s2 := openEcho(t, a.m, pb)
			defer s2.Close()
			if s2.RemoteAddr().Network() != "udp" {
				t.Fatal("second stream not punched")
			}
			if drop == "DropNode" {
				a.m.DropNode("b")
			} else if n := a.m.DropPeer(b.id); n != 2 {
				t.Errorf("DropPeer closed %d sessions, want the retired relayed one and the punched one", n)
			}
			if err := streamEnded(s); err != nil {
				t.Fatalf("the stream on the retired relayed session: %v", err)
			}
			if err := streamEnded(s2); err != nil {
				t.Fatalf("the stream on the punched path: %v", err)
			}
		})
	}
}

// TestRevalidateCutsEveryPath: once the deny list names the peer,
// Revalidate cuts its sessions on every path, on the side that dialed
// them (the relayed session retired by the upgrade, and the punched QUIC
// connection) and on the side that accepted them (the relayed session on
// the mesh server, the QUIC connection on the punched socket's server);
// their streams end.
func TestRevalidateCutsEveryPath(t *testing.T) {
	for _, side := range []string{"dialer", "acceptor"} {
		t.Run(side, func(t *testing.T) {
			l := newLab(t)
			punching := func(c *Config) { c.UDPAddr = "127.0.0.1:0" }
			a := l.node("site-a", "a", punching)
			b := l.node("site-b", "b", punching)
			waitRelay(t, true, a, b)
			pb := b.peer()
			pb.Addr = closedAddr(t)
			s := openEcho(t, a.m, pb)
			defer s.Close()
			waitFor(t, "a punched path", func() bool { p, _ := pathTo(a.m, "b"); return p.Kind == Punched })
			s.echo(t, "on the retired session")
			s2 := openEcho(t, a.m, pb)
			defer s2.Close()
			if s2.RemoteAddr().Network() != "udp" {
				t.Fatal("second stream not punched")
			}
			if n := a.m.Revalidate() + b.m.Revalidate() + b.srv.Revalidate(); n != 0 {
				t.Fatalf("Revalidate cut %d sessions with nothing denied", n)
			}
			var n int
			if side == "dialer" {
				a.src.SetDenied([]string{b.id.String()})
				n = a.m.Revalidate()
			} else {
				b.src.SetDenied([]string{a.id.String()})
				n = b.m.Revalidate() + b.srv.Revalidate()
			}
			if n != 2 {
				t.Errorf("Revalidate cut %d sessions, want the relayed one and the punched one", n)
			}
			if err := streamEnded(s); err != nil {
				t.Fatalf("the stream on the relayed session: %v", err)
			}
			if err := streamEnded(s2); err != nil {
				t.Fatalf("the stream on the punched path: %v", err)
			}
		})
	}
}

// TestRelayFailover: with two relays, a relayed path goes through one;
// when that relay goes away, its streams end, and the next stream goes
// through the other relay, which Status then names.
func TestRelayFailover(t *testing.T) {
	l := newLab(t)
	l.addRelay(true)
	a := l.node("site-a", "a", nil)
	b := l.node("site-b", "b", nil)
	waitRelay(t, false, a, b)
	pb := b.peer()
	pb.Addr = closedAddr(t)
	s := openEcho(t, a.m, pb)
	defer s.Close()
	p, _ := pathTo(a.m, "b")
	if p.Kind != Relayed || !slices.Contains(l.relays, p.Relay) {
		t.Fatalf("path %+v, want relayed through one of %v", p, l.relays)
	}
	first := p.Relay
	other := l.relays[0]
	if other == first {
		other = l.relays[1]
	}
	l.stop[first]()
	if err := streamEnded(s); err != nil {
		t.Fatalf("a stream through the closed relay: %v", err)
	}
	s2 := openEcho(t, a.m, pb)
	defer s2.Close()
	if p, _ := pathTo(a.m, "b"); p.Kind != Relayed || p.Relay != other || p.Remote != other {
		t.Fatalf("path after the relay closed %+v, want relayed through %s", p, other)
	}
	if n := relayDials(a.m); n != 2 {
		t.Fatalf("%d relayed sessions, want 2", n)
	}
}

// TestPeerUpdatesDuringPunch: the registry updating a peer's address
// while a punch to it completes is no data race (run with -race).
func TestPeerUpdatesDuringPunch(t *testing.T) {
	l := newLab(t)
	punching := func(c *Config) { c.UDPAddr = "127.0.0.1:0" }
	a := l.node("site-a", "a", punching)
	b := l.node("site-b", "b", punching)
	waitRelay(t, true, a, b)
	pb := b.peer()
	pb.Addr = closedAddr(t)
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pa, pb2 := a.peer(), pb
		for i := 0; !stop.Load(); i++ {
			pa.Addr = fmt.Sprint("127.0.0.1:", i%2+1) // closed ports
			pb2.Addr = pb.Addr
			if i%2 == 0 {
				pb2.Addr = "127.0.0.1:1"
			}
			b.m.state(pa)
			a.m.state(pb2)
		}
	}()
	s := openEcho(t, a.m, pb)
	defer s.Close()
	waitFor(t, "punched paths both ways", func() bool {
		p, _ := pathTo(a.m, "b")
		q, _ := pathTo(b.m, "a")
		return p.Kind == Punched && q.Kind == Punched
	})
	stop.Store(true)
	wg.Wait()
}

// TestPunchBackoff: a failed punch is tried again after a sixth of
// RetryAfter, doubling with each failure in a row, never beyond it (a
// first punch often meets a peer that is not ready: TestCrossSitePaths
// once stayed relayed for 40 s after one).
func TestPunchBackoff(t *testing.T) {
	for fails, want := range map[int]time.Duration{1: 5 * time.Second, 2: 10 * time.Second, 3: 20 * time.Second, 4: 30 * time.Second, 50: 30 * time.Second} {
		if got := punchBackoff(30*time.Second, fails); got != want {
			t.Errorf("after %d failures: %v, want %v", fails, got, want)
		}
	}
}
