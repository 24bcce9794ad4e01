package paths

import (
	"testing"
	"time"
)

// TestPunchedPathStatus: a punched path shows an RTT before any stream
// has used it (the punch's probe measured one), and the side that only
// answered the peer's introduction shows the path with the time it was
// punched, not the zero time.
func TestPunchedPathStatus(t *testing.T) {
	l := newLab(t)
	punching := func(c *Config) { c.UDPAddr = "127.0.0.1:0" }
	a := l.node("site-a", "a", punching)
	b := l.node("site-b", "b", punching)
	waitRelay(t, true, a, b)
	pb := b.peer()
	pb.Addr = closedAddr(t)
	start := time.Now()
	s := openEcho(t, a.m, pb) // relayed; the punch follows in the background
	defer s.Close()

	var p PathStatus
	waitFor(t, "a punched path to b", func() bool { p, _ = pathTo(a.m, "b"); return p.Kind == Punched })
	if p.RTTMs <= 0 {
		t.Errorf("a's punched path to b shows no RTT: %+v", p)
	}
	if rtt, ok := a.m.RTT("b"); !ok || rtt <= 0 {
		t.Errorf("RTT(b) on the punched path = %v, %v", rtt, ok)
	}
	var bp PathStatus
	waitFor(t, "b's punched path to a", func() bool { bp, _ = pathTo(b.m, "a"); return bp.Kind == Punched })
	if bp.Since.Before(start) || bp.Since.After(time.Now()) {
		t.Errorf("b's answered punched path to a since %v, want between %v and now", bp.Since, start)
	}
	if bp.RTTMs <= 0 {
		t.Errorf("b's punched path to a shows no RTT: %+v", bp)
	}
}
