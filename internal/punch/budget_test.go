package punch

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/relay"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// countingSocket is a loopback UDP socket that never answers and counts
// the datagrams it gets.
type countingSocket struct {
	*net.UDPConn
	n    atomic.Int64
	done chan struct{}
}

func silentCounter(t *testing.T) *countingSocket {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &countingSocket{UDPConn: c, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 2048)
		for {
			if _, _, err := c.ReadFromUDP(buf); err != nil {
				return
			}
			s.n.Add(1)
		}
	}()
	t.Cleanup(func() { c.Close(); <-s.done })
	return s
}

// settled waits until s got nothing for a while (the datagrams in flight
// on loopback have arrived) and returns its count.
func (s *countingSocket) settled() int64 {
	last := s.n.Load()
	for range 100 {
		time.Sleep(20 * time.Millisecond)
		n := s.n.Load()
		if n == last {
			return n
		}
		last = n
	}
	return last
}

// TestPunchGivesUpSilentCandidates: a candidate that never answers gets
// at most maxUnanswered probes, with backoff, however long the punch
// lasts (it got one every Interval, 60 in the default 1.5 s, before), and
// sixteen of them no more than that each.
func TestPunchGivesUpSilentCandidates(t *testing.T) {
	p, _ := loopPuncher(t, idB, nil) // the default Timeout and Interval
	var socks []*countingSocket
	var cands []string
	for range relay.MaxCandidates {
		s := silentCounter(t)
		socks = append(socks, s)
		cands = append(cands, s.LocalAddr().String())
	}
	start := time.Now()
	_, err := p.Punch(context.Background(), relay.Introduced{Nonce: testNonce, Peer: idA, Candidates: cands})
	if !errors.Is(err, ErrNoPath) {
		t.Fatalf("err = %v, want ErrNoPath", err)
	}
	if el := time.Since(start); el < DefaultTimeout {
		t.Fatalf("gave up after %s, before the timeout %s", el, DefaultTimeout)
	}
	var total int64
	for i, s := range socks {
		n := s.settled()
		if n == 0 || n > maxUnanswered {
			t.Errorf("candidate %d got %d probes, want 1..%d", i, n, maxUnanswered)
		}
		total += n
	}
	if st := p.Stats(); int64(st.Sent) != total {
		t.Errorf("Stats.Sent %d, the candidates got %d", st.Sent, total)
	}
}

// TestPunchIntroductionBudget: a peer that sends genuine requests (so its
// address is probed every round) but never answers ours gets no more than
// maxProbesPerPunch probes from one introduction; the rest are counted as
// over budget.
func TestPunchIntroductionBudget(t *testing.T) {
	p, tr := loopPuncher(t, idA, func(c *Config) { c.Timeout = 20 * time.Second; c.Interval = time.Millisecond })
	peer := silentCounter(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := p.Punch(ctx, relay.Introduced{Nonce: testNonce, Peer: idB, Candidates: []string{peer.LocalAddr().String()}})
		done <- err
	}()
	waitStats(t, p, "the first probe", func(s Stats) bool { return s.Sent > 0 })
	key := testKey(t, testNonce)
	if _, err := peer.WriteToUDP(key.Append(nil, KindRequest, 1, 1), tr.Conn.LocalAddr().(*net.UDPAddr)); err != nil {
		t.Fatal(err)
	}
	waitStats(t, p, "the budget spent", func(s Stats) bool { return s.OverBudget > 0 })
	// The peer got its answer and the probes: it may answer none.
	if n := peer.settled(); n > maxProbesPerPunch+1 {
		t.Fatalf("the peer got %d datagrams from one introduction, want at most %d probes and an answer", n, maxProbesPerPunch)
	}
	if s := p.Stats(); s.Sent != maxProbesPerPunch || s.Answered != 1 {
		t.Fatalf("sent %d probes (want %d), answered %d", s.Sent, maxProbesPerPunch, s.Answered)
	}
	cancel()
	if err := <-done; !errors.Is(err, ErrNoPath) {
		t.Fatalf("err = %v, want ErrNoPath", err)
	}
}

// TestPunchRefusesLoopbackFromWildcardSocket: a socket bound to all
// addresses does not probe a candidate on the loopback (a registered node
// pointing the introduced one at its own host's services): counted,
// logged, and nothing is sent there.
func TestPunchRefusesLoopbackFromWildcardSocket(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := transport.NewQUICTransport(pc)
	logs := &recordLog{}
	p, err := New(Config{Transport: tr, Self: idB, Timeout: 300 * time.Millisecond, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); tr.Close(); pc.Close() })
	target := silentCounter(t)
	_, err = p.Punch(context.Background(), relay.Introduced{Nonce: testNonce, Peer: idA,
		Candidates: []string{target.LocalAddr().String(), "[::1]:9", "0.0.0.0:9", "224.0.0.1:9"}})
	if !errors.Is(err, ErrNoPath) {
		t.Fatalf("err = %v, want ErrNoPath", err)
	}
	if n := target.settled(); n != 0 {
		t.Fatalf("the loopback candidate got %d probes", n)
	}
	if s := p.Stats(); s.CandidateRefused != 4 || s.Sent != 0 {
		t.Fatalf("refused %d candidates (want 4), sent %d", s.CandidateRefused, s.Sent)
	}
	if got := logs.matching("reason=candidate_scope"); len(got) != 1 {
		t.Fatalf("log lines about the refused candidates: %q, want one", got)
	}
}

// TestRefuseCandidate: which addresses a socket probes, by the address it
// is bound to. Private ones stay allowed (a peer on the same LAN).
func TestRefuseCandidate(t *testing.T) {
	any4, lo, ll, lan := netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("127.0.0.1"),
		netip.MustParseAddr("169.254.3.4"), netip.MustParseAddr("192.168.1.10")
	for _, c := range []struct {
		cand  string
		bound netip.Addr
		want  string
	}{
		{"192.168.1.11", any4, ""},
		{"10.0.0.1", lan, ""},
		{"198.51.100.7", any4, ""},
		{"127.0.0.1", any4, "loopback"},
		{"127.9.9.9", lan, "loopback"},
		{"::1", any4, "loopback"},
		{"127.0.0.2", lo, ""},
		{"169.254.1.1", any4, "link_local"},
		{"fe80::1", lan, "link_local"},
		{"169.254.1.1", ll, ""},
		{"0.0.0.0", any4, "unspecified"},
		{"::", lo, "unspecified"},
		{"224.0.0.1", lo, "multicast"},
		{"ff02::1", any4, "multicast"},
		{"255.255.255.255", lan, "multicast"},
	} {
		if got := refuseCandidate(netip.MustParseAddr(c.cand), c.bound); got != c.want {
			t.Errorf("refuseCandidate(%s, bound %s) = %q, want %q", c.cand, c.bound, got, c.want)
		}
	}
}

// TestProbeSchedule: an unanswered candidate gets probeBurst probes at
// the interval, then ever longer pauses, and maxUnanswered in all; one
// heard from is probed every round.
func TestProbeSchedule(t *testing.T) {
	iv := 10 * time.Millisecond
	now := time.Unix(1000, 0)
	c := &candidate{}
	var gaps []time.Duration
	last := now
	for step := 0; step < 100000 && c.unanswered < maxUnanswered; step++ {
		if c.due(now) {
			if c.unanswered > 0 {
				gaps = append(gaps, now.Sub(last))
			}
			last = now
			c.probed(now, iv)
		}
		now = now.Add(time.Millisecond)
	}
	want := []time.Duration{10, 10, 10, 20, 40, 80, 160}
	if len(gaps) != len(want) {
		t.Fatalf("gaps %v, want %v ms", gaps, want)
	}
	for i := range want {
		if gaps[i] != want[i]*time.Millisecond {
			t.Fatalf("gaps %v, want %v ms", gaps, want)
		}
	}
	if c.due(now.Add(time.Hour)) {
		t.Fatal("a candidate given up is due again")
	}
	c.heard = true
	if !c.due(now) {
		t.Fatal("a candidate heard from is not due")
	}

	var b rateBudget
	for i := range 5 {
		if !b.take(now, 5) {
			t.Fatalf("probe %d of 5 refused", i)
		}
	}
	if b.take(now.Add(999*time.Millisecond), 5) {
		t.Fatal("a sixth probe in the same second")
	}
	if !b.take(now.Add(time.Second), 5) {
		t.Fatal("the next second's budget is spent")
	}
}
