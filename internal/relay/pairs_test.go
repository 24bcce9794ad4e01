package relay

import (
	"errors"
	"net"
	"strings"
	"testing"
)

// TestRelaySessionsPerPair: with the default limits, node a can open
// DefaultMaxSessionsPerPair relayed sessions to node b and no more: the
// next Dial is refused with session_limit (counted), though b has slots
// left, so node c still reaches b. Without the per-pair cap one node
// could take all of b's MaxSessionsPerNode slots and cut b off from
// every other peer through the relay. A session of a's ending frees
// a slot of the pair.
func TestRelaySessionsPerPair(t *testing.T) {
	const pairCap = DefaultMaxSessionsPerPair
	f := newFixture(t, nil)
	a := f.node("site-a", "a")
	b := f.node("site-b", "b")
	c := f.node("site-c", "c")
	var first [2]net.Conn
	for i := range pairCap {
		ac, bc := relayedPair(t, a, b)
		if i == 0 {
			first = [2]net.Conn{ac, bc}
		}
	}
	conn, err := a.c.DialPeer(ctx20(t), b.id)
	if err == nil {
		conn.Close()
		t.Fatalf("session %d from a to b opened, want refused with %s", pairCap+1, ReasonSessionLimit)
	}
	var re *Error
	if !errors.As(err, &re) || re.Reason != ReasonSessionLimit || !strings.Contains(re.Message, b.id) {
		t.Fatalf("session %d from a to b: %v, want %s naming b", pairCap+1, err, ReasonSessionLimit)
	}
	if got := f.metric(refused(ReasonSessionLimit)); got != 1 {
		t.Errorf("session_limit counted %v, want 1", got)
	}
	if got := f.metric(`fogmesh_relay_pair_session_limit_total`); got != 1 {
		t.Errorf("fogmesh_relay_pair_session_limit_total %v, want 1", got)
	}

	// c still reaches b, and b still reaches a (the cap is per direction:
	// b's own sessions to a are b's choice).
	relayedPair(t, c, b)
	relayedPair(t, b, a)

	// One of a's sessions to b ends: a may open one again.
	first[0].Close()
	first[1].Close()
	waitFor(t, "a session of the pair a → b freed", func() bool {
		f.srv.mu.Lock()
		defer f.srv.mu.Unlock()
		return f.srv.nodes[a.id].sessions == pairCap // pairCap-1 to b, 1 from b
	})
	relayedPair(t, a, b)
}
