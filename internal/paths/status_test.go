package paths

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/punch"
	"github.com/fogmesh/fogmesh/internal/testenv"
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

// TestPunchRefusalsInMetrics: probes the punching socket refuses (here a
// malformed one and one of no introduction) are counted in the agent's
// metrics by reason, not only in the Puncher.
func TestPunchRefusalsInMetrics(t *testing.T) {
	l := newLab(t)
	set := metrics.NewSet()
	a := l.node("site-a", "a", func(c *Config) { c.UDPAddr = "127.0.0.1:0"; c.Metrics = set })
	waitRelay(t, true, a)
	cands := a.m.Status().Candidates
	if len(cands) == 0 {
		t.Fatal("no punching candidates")
	}
	to, err := net.ResolveUDPAddr("udp", cands[0])
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, to)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	malformed := append([]byte("\x00FMP"), make([]byte, 100)...)
	k, err := punch.NewKey("00112233445566778899aabbccddeeff", "spiffe://x/a", "spiffe://x/b")
	if err != nil {
		t.Fatal(err)
	}
	stranger := k.Append(nil, punch.KindRequest, 1, 1)
	waitFor(t, "the refusals counted in the metrics", func() bool {
		c.Write(malformed) // UDP may drop: sent again until counted
		c.Write(stranger)
		return gaugeValue(set, `fogmesh_punch_refused_total{reason="malformed"}`) >= 1 &&
			gaugeValue(set, `fogmesh_punch_refused_total{reason="unknown_session"}`) >= 1
	})
	if v := gaugeValue(set, `fogmesh_punch_refused_total{reason="bad_mac"}`); v != 0 {
		t.Errorf("bad_mac %v, want 0", v)
	}
	// The bounds on probing (internal/punch budget.go) are exported too.
	var sb strings.Builder
	set.WritePrometheus(&sb)
	for _, r := range []string{"candidate_scope", "probe_budget"} {
		if !strings.Contains(sb.String(), `fogmesh_punch_refused_total{reason="`+r+`"} 0`) {
			t.Errorf("no fogmesh_punch_refused_total{reason=%q}", r)
		}
	}
	if !strings.Contains(sb.String(), "fogmesh_punch_nonces_evicted_total 0") {
		t.Error("no fogmesh_punch_nonces_evicted_total (the nonce store's evictions, internal/punch nonces.go)")
	}
}

// TestIntroductionFromUnknownNodeDropped: an introduction from a node the
// registry does not list (a node of the CA the control plane never
// registered, or one a relay made up) is dropped and counted: this node
// sends no probe to the candidates it carries, and no path appears.
func TestIntroductionFromUnknownNodeDropped(t *testing.T) {
	l := newLab(t)
	set := metrics.NewSet()
	b := l.node("site-b", "b", func(c *Config) {
		c.UDPAddr = "127.0.0.1:0"
		c.Metrics = set
		c.Known = func(name string, _ spiffeid.ID) bool { return name != "z" }
	})
	z := l.node("site-z", "z", func(c *Config) { c.UDPAddr = "127.0.0.1:0"; c.RetryAfter = time.Hour })
	waitRelay(t, true, b, z)
	pb := b.peer()
	pb.Addr = closedAddr(t)
	s := openEcho(t, z.m, pb) // relayed; z then asks the relay to introduce it to b
	defer s.Close()
	waitFor(t, "the introduction dropped and counted", func() bool {
		return gaugeValue(set, "fogmesh_path_introductions_dropped_total") >= 1
	})
	waitFor(t, "z's punch to fail", func() bool { on, at := punchStateOf(z.m, "b"); return !on && !at.IsZero() })
	if st := b.m.punchStats(); st.Sent != 0 || st.Answered != 0 {
		t.Errorf("b probed or answered an unknown node: %+v", st)
	}
	if p, ok := pathTo(b.m, "z"); ok {
		t.Errorf("b has a path to the unknown node: %+v", p)
	}
}

// TestPathKeepAliveConfigurable: Config.KeepAlive (the agent's
// pathKeepAlive) is how often a punched path probes its peer to hold the
// NAT mappings: at 100 ms the peer's answers keep coming with no stream on
// the path. (The default, punch.DefaultKeepAlive, is 20 s: below the
// common 30 s UDP mapping timeout.)
func TestPathKeepAliveConfigurable(t *testing.T) {
	if punch.DefaultKeepAlive >= 30*time.Second {
		t.Fatalf("default keepalive %v, not below 30 s", punch.DefaultKeepAlive)
	}
	l := newLab(t)
	fast := func(c *Config) { c.UDPAddr = "127.0.0.1:0"; c.KeepAlive = 100 * time.Millisecond }
	a := l.node("site-a", "a", fast)
	b := l.node("site-b", "b", fast)
	waitRelay(t, true, a, b)
	pb := b.peer()
	pb.Addr = closedAddr(t)
	openEcho(t, a.m, pb).Close()
	var pa *punch.Path
	waitFor(t, "a punched path to b", func() bool {
		a.m.mu.Lock()
		defer a.m.mu.Unlock()
		if st := a.m.peers["b"]; st != nil {
			pa = st.punched
		}
		return pa != nil
	})
	first := pa.LastSeen()
	// Well within the 20 s default: a path holding on the default would
	// fail here.
	testenv.WaitFor(t, 5*time.Second, "a keepalive answered after the punch", func() bool {
		return pa.LastSeen().After(first.Add(150 * time.Millisecond))
	})
}
