package identity

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

func tcpAddr(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000} }

// TestHandshakeGateBounds: a source past its bound is refused as
// source_busy while others still enter; past the listener's bound every
// source is refused as busy; released slots come back, once each.
func TestHandshakeGateBounds(t *testing.T) {
	g := NewHandshakeGate(5, 2)
	var rel []func() bool
	enter := func(ip, want string) {
		t.Helper()
		r, reason := g.Enter(tcpAddr(ip), nil)
		if reason != want {
			t.Fatalf("Enter(%s) = %q, want %q", ip, reason, want)
		}
		if r != nil {
			rel = append(rel, r.Release)
		}
	}
	enter("127.63.0.1", "")
	enter("127.63.0.1", "")
	enter("127.63.0.1", ReasonSourceBusy)
	enter("::ffff:127.63.0.1", ReasonSourceBusy) // the same IPv4 source
	enter("127.63.0.2", "")
	enter("2001:db8::1", "")
	enter("2001:db8::2", "")
	enter("2001:db8::3", ReasonBusy)
	if g.InProgress() != 5 {
		t.Fatalf("InProgress = %d, want 5", g.InProgress())
	}
	if total, src := g.Load(tcpAddr("2001:db8::9")); total != 5 || src != 2 { // ::1 and ::2's /64
		t.Fatalf("Load = %d, %d, want 5, 2", total, src)
	}
	rel[4]() // 2001:db8::2
	rel[4]() // idempotent: frees one slot only
	if g.InProgress() != 4 {
		t.Fatalf("InProgress = %d after a release, want 4", g.InProgress())
	}
	enter("2001:db8::3", "") // the same /64 as ::1, under its bound again
	enter("127.63.0.3", ReasonBusy)
	for _, r := range rel {
		r()
	}
	if g.InProgress() != 0 || len(g.sources) != 0 {
		t.Fatalf("after every release: %d in progress, sources %v", g.InProgress(), g.sources)
	}
	if max, per := NewHandshakeGate(0, 0).Limits(); max != DefaultMaxHandshakes || per != DefaultMaxHandshakesPerSource {
		t.Fatalf("default limits %d, %d", max, per)
	}
}

// TestHandshakeGateNegativeUnbounded: a negative bound is none, 0 the
// default: more than the default handshakes proceed from one source with
// both negative; with only the total negative, the per-source default
// still holds while sources together pass the default total.
func TestHandshakeGateNegativeUnbounded(t *testing.T) {
	g := NewHandshakeGate(-1, -1)
	for i := range DefaultMaxHandshakes + 8 {
		if r, reason := g.Enter(tcpAddr("127.63.9.1"), func() {}); r == nil {
			t.Fatalf("unbounded gate: handshake %d refused as %s", i+1, reason)
		}
	}
	if max, per := g.Limits(); max >= 0 || per >= 0 {
		t.Fatalf("unbounded gate's limits %d, %d, want negative (none)", max, per)
	}

	g = NewHandshakeGate(-1, 0)
	if max, per := g.Limits(); max >= 0 || per != DefaultMaxHandshakesPerSource {
		t.Fatalf("limits %d, %d, want none and the default %d", max, per, DefaultMaxHandshakesPerSource)
	}
	sources := DefaultMaxHandshakes/DefaultMaxHandshakesPerSource + 2
	for s := range sources {
		ip := net.IPv4(127, 63, 10, byte(s+1)).String()
		for i := range DefaultMaxHandshakesPerSource {
			if r, reason := g.Enter(tcpAddr(ip), nil); r == nil {
				t.Fatalf("source %d, handshake %d refused as %s with no total bound", s, i+1, reason)
			}
		}
		if _, reason := g.Enter(tcpAddr(ip), nil); reason != ReasonSourceBusy {
			t.Fatalf("source %d past the default per-source bound: %q, want %q", s, reason, ReasonSourceBusy)
		}
	}
	if n := g.InProgress(); n != sources*DefaultMaxHandshakesPerSource || n <= DefaultMaxHandshakes {
		t.Fatalf("%d in progress, want %d, past the default total", n, sources*DefaultMaxHandshakesPerSource)
	}

	// A total bound with no per-source one: one source may take it all
	// (here entries that cannot be evicted).
	g = NewHandshakeGate(4, -1)
	for i := range 4 {
		if r, reason := g.Enter(tcpAddr("127.63.9.2"), nil); r == nil {
			t.Fatalf("handshake %d refused as %s", i+1, reason)
		}
	}
	if _, reason := g.Enter(tcpAddr("127.63.9.3"), func() {}); reason != ReasonBusy {
		t.Fatalf("past the total: %q, want %q", reason, ReasonBusy)
	}
}

// gateSlots enters n handshakes from ip, each evictable: the returned
// counters count how often each one's cancel was called.
func gateSlots(t *testing.T, g *HandshakeGate, ip string, n int) (rel []func() bool, cancels []*int) {
	t.Helper()
	for i := range n {
		c := new(int)
		r, reason := g.Enter(tcpAddr(ip), func() { *c++ })
		if r == nil {
			t.Fatalf("Enter(%s) #%d refused as %s", ip, i+1, reason)
		}
		rel = append(rel, r.Release)
		cancels = append(cancels, c)
	}
	return rel, cancels
}

// TestHandshakeGateEvictsBusiest: with the gate full, a newcomer from a
// source holding fewer slots than the busiest one minus one takes the
// busiest source's oldest slot: its cancel is called (once), the newcomer
// enters at once, the total never passes max, and the evicted entry's
// release frees nothing.
func TestHandshakeGateEvictsBusiest(t *testing.T) {
	g := NewHandshakeGate(6, 4)
	ra, ca := gateSlots(t, g, "127.68.200.1", 4) // a: 4, the busiest
	if r, reason := g.Enter(tcpAddr("127.68.200.1"), func() {}); r != nil || reason != ReasonSourceBusy {
		t.Fatalf("a at its per-source bound: %q, want %q", reason, ReasonSourceBusy)
	}
	_, cb := gateSlots(t, g, "127.68.200.2", 2) // b: 2; full
	if r, reason := g.Enter(tcpAddr("127.68.200.1"), func() {}); r != nil || reason != ReasonBusy {
		t.Fatalf("a, the busiest, with the gate full: %q, want %q", reason, ReasonBusy)
	}
	rc, cc := gateSlots(t, g, "127.68.200.3", 1) // c: 0+1 < 4: evicts a's oldest
	if *ca[0] != 1 || *ca[1] != 0 || *cb[0] != 0 || *cb[1] != 0 {
		t.Fatalf("cancels a %d %d, b %d %d: want a's oldest only", *ca[0], *ca[1], *cb[0], *cb[1])
	}
	if n := g.InProgress(); n != 6 {
		t.Fatalf("%d in progress after an eviction, want 6", n)
	}
	if _, src := g.Load(tcpAddr("127.68.200.1")); src != 3 {
		t.Fatalf("a holds %d after an eviction, want 3", src)
	}
	if ra[0]() || ra[0]() { // the evicted entry's release: a no-op, reporting it evicted
		t.Fatal("the evicted entry's release reported its slot held")
	}
	if total, src := g.Load(tcpAddr("127.68.200.1")); total != 6 || src != 3 {
		t.Fatalf("after the evicted entry's release: %d in progress, a %d, want 6, 3", total, src)
	}
	// c (1) again: 2 < 3 holds, a's next oldest goes.
	gateSlots(t, g, "127.68.200.3", 1)
	if *ca[1] != 1 || *ca[0] != 1 {
		t.Fatalf("second eviction: cancels a %d %d, want 1 1", *ca[0], *ca[1])
	}
	// Now a 2, b 2, c 2: equal shares, nobody is evicted.
	for _, ip := range []string{"127.68.200.1", "127.68.200.2", "127.68.200.3"} {
		if r, reason := g.Enter(tcpAddr(ip), func() {}); r != nil || reason != ReasonBusy {
			t.Fatalf("equal shares, Enter(%s) = %q, want %q", ip, reason, ReasonBusy)
		}
	}
	if *ca[2] != 0 || *ca[3] != 0 || *cb[0] != 0 || *cb[1] != 0 || *cc[0] != 0 {
		t.Fatal("an entry was cancelled at equal shares")
	}
	if n := g.InProgress(); n != 6 {
		t.Fatalf("%d in progress, want 6", n)
	}
	if !rc[0]() || !ra[2]() {
		t.Fatal("a release of a slot not evicted reported it evicted")
	}
	if total, src := g.Load(tcpAddr("127.68.200.1")); total != 4 || src != 1 {
		t.Fatalf("after two releases: %d in progress, a %d, want 4, 1", total, src)
	}
}

// TestHandshakeGateEvictionSkipsUncancellable: an entry entered with a nil
// cancel (a QUIC handshake) is never evicted; a source holding only such
// entries is passed over for the busiest one that has an evictable entry.
func TestHandshakeGateEvictionSkipsUncancellable(t *testing.T) {
	g := NewHandshakeGate(6, -1)
	for range 4 {
		if r, _ := g.Enter(tcpAddr("127.68.201.1"), nil); r == nil {
			t.Fatal("refused")
		}
	}
	_, cb := gateSlots(t, g, "127.68.201.2", 2)
	// d (0): a (4, none evictable) is passed over; b (2) > 0+1: its oldest goes.
	gateSlots(t, g, "127.68.201.4", 1)
	if *cb[0] != 1 || *cb[1] != 0 {
		t.Fatalf("cancels b %d %d, want 1 0", *cb[0], *cb[1])
	}
	// d (1), b (1), a (4, none evictable): refused.
	if r, reason := g.Enter(tcpAddr("127.68.201.5"), func() {}); r != nil || reason != ReasonBusy {
		t.Fatalf("only uncancellable entries above: %q, want %q", reason, ReasonBusy)
	}
	if n := g.InProgress(); n != 6 {
		t.Fatalf("%d in progress, want 6", n)
	}
}

// TestHandshakeGateEvictionStorm: sources entering and releasing at once,
// with evictions, never hold more than max slots, and every slot comes
// back (run with -race).
func TestHandshakeGateEvictionStorm(t *testing.T) {
	const max = 8
	g := NewHandshakeGate(max, 4)
	var wg sync.WaitGroup
	var over atomic.Int32
	for s := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var rel []func() bool
			for i := range 300 {
				if r, _ := g.Enter(tcpAddr(fmt.Sprintf("127.68.202.%d", s+1)), func() {}); r != nil {
					rel = append(rel, r.Release)
				}
				if n := g.InProgress(); n > max {
					over.Store(int32(n))
				}
				if i%3 == 2 && len(rel) > 0 {
					rel[0]()
					rel = rel[1:]
				}
			}
			for _, r := range rel {
				r()
			}
		}()
	}
	wg.Wait()
	if n := over.Load(); n != 0 {
		t.Fatalf("%d handshakes in progress, over the bound %d", n, max)
	}
	if g.InProgress() != 0 || len(g.sources) != 0 {
		t.Fatalf("after every release: %d in progress, %d sources", g.InProgress(), len(g.sources))
	}
}

// TestGateCancelAfterRelease: an eviction racing with the victim's release
// (its handshake just finished): if Release reported the slot held, the
// victim's cancel is never called after it; if the cancel is called,
// Release reports false, so the server does not serve a connection the
// gate is about to close (it did: a cancel after a release that returned).
func TestGateCancelAfterRelease(t *testing.T) {
	var bad, evicted atomic.Int32
	for range 10000 {
		g := NewHandshakeGate(2, 2)
		var held, cancelled atomic.Bool
		var releasedHeld atomic.Bool // Release returned true
		ra, _ := g.Enter(tcpAddr("127.69.0.1"), func() {
			cancelled.Store(true)
			if releasedHeld.Load() {
				bad.Add(1)
			}
		})
		g.Enter(tcpAddr("127.69.0.1"), func() {})
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			ok := ra.Release()
			held.Store(ok)
			releasedHeld.Store(ok)
		}()
		go func() { defer wg.Done(); g.Enter(tcpAddr("127.69.0.2"), func() {}) }()
		wg.Wait()
		if cancelled.Load() {
			evicted.Add(1)
			if held.Load() {
				bad.Add(1)
			}
		}
		if ra.Release() != held.Load() {
			t.Fatal("a second Release reported otherwise than the first")
		}
	}
	if n := bad.Load(); n > 0 {
		t.Fatalf("%d cancels of a slot whose Release reported it held", n)
	}
	t.Logf("%d of 10000 evicted", evicted.Load())
}

// TestGateSlotPin: a pinned slot is never evicted and still counts against
// its source; the busiest source's next evictable one goes instead, and
// with none left the newcomer is refused as busy. Pin reports false for a
// slot already evicted.
func TestGateSlotPin(t *testing.T) {
	g := NewHandshakeGate(4, 3)
	var ca [3]int
	var sa [3]*GateSlot
	for i := range sa {
		sa[i], _ = g.Enter(tcpAddr("127.69.1.1"), func() { ca[i]++ })
	}
	if !sa[0].Pin() || !sa[0].Pin() {
		t.Fatal("Pin of a held slot reported false")
	}
	gateSlots(t, g, "127.69.1.2", 1) // b: 1; full
	gateSlots(t, g, "127.69.1.3", 1) // c: 0+1 < 3: a's oldest evictable (sa[1]) goes
	if ca != [3]int{0, 1, 0} {
		t.Fatalf("cancels of a %v, want [0 1 0]: the pinned oldest kept", ca)
	}
	if sa[1].Pin() || sa[1].Release() {
		t.Fatal("Pin or Release of an evicted slot reported it held")
	}
	if _, src := g.Load(tcpAddr("127.69.1.1")); src != 2 {
		t.Fatalf("a holds %d, want 2 (the pinned one counts)", src)
	}
	// a 2 (one pinned), b 1, c 1: d (0+1 < 2) evicts sa[2]; then a holds
	// only its pinned slot and e (0+1 < 1 fails) is refused.
	gateSlots(t, g, "127.69.1.4", 1)
	if ca != [3]int{0, 1, 1} {
		t.Fatalf("cancels of a %v, want [0 1 1]", ca)
	}
	if r, reason := g.Enter(tcpAddr("127.69.1.5"), func() {}); r != nil || reason != ReasonBusy {
		t.Fatalf("only equal shares and a pinned slot: %q, want %q", reason, ReasonBusy)
	}
	if !sa[0].Release() || g.InProgress() != 3 {
		t.Fatalf("the pinned slot's release: %d in progress, want 3", g.InProgress())
	}
	var nilSlot *GateSlot
	if !nilSlot.Pin() || !nilSlot.Release() {
		t.Fatal("a nil slot reported evicted")
	}
}
