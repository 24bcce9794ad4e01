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
