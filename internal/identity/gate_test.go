package identity

import (
	"net"
	"testing"
)

func tcpAddr(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 40000} }

// TestHandshakeGateBounds: a source past its bound is refused as
// source_busy while others still enter; past the listener's bound every
// source is refused as busy; released slots come back, once each.
func TestHandshakeGateBounds(t *testing.T) {
	g := NewHandshakeGate(5, 2)
	var rel []func()
	enter := func(ip, want string) {
		t.Helper()
		r, reason := g.Enter(tcpAddr(ip))
		if reason != want {
			t.Fatalf("Enter(%s) = %q, want %q", ip, reason, want)
		}
		if r != nil {
			rel = append(rel, r)
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
	if g.InProgress() != 0 || len(g.bySource) != 0 {
		t.Fatalf("after every release: %d in progress, sources %v", g.InProgress(), g.bySource)
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
		if r, reason := g.Enter(tcpAddr("127.63.9.1")); r == nil {
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
			if r, reason := g.Enter(tcpAddr(ip)); r == nil {
				t.Fatalf("source %d, handshake %d refused as %s with no total bound", s, i+1, reason)
			}
		}
		if _, reason := g.Enter(tcpAddr(ip)); reason != ReasonSourceBusy {
			t.Fatalf("source %d past the default per-source bound: %q, want %q", s, reason, ReasonSourceBusy)
		}
	}
	if n := g.InProgress(); n != sources*DefaultMaxHandshakesPerSource || n <= DefaultMaxHandshakes {
		t.Fatalf("%d in progress, want %d, past the default total", n, sources*DefaultMaxHandshakesPerSource)
	}

	// A total bound with no per-source one: one source may take it all.
	g = NewHandshakeGate(4, -1)
	for i := range 4 {
		if r, reason := g.Enter(tcpAddr("127.63.9.2")); r == nil {
			t.Fatalf("handshake %d refused as %s", i+1, reason)
		}
	}
	if _, reason := g.Enter(tcpAddr("127.63.9.3")); reason != ReasonBusy {
		t.Fatalf("past the total: %q, want %q", reason, ReasonBusy)
	}
}
