package relay

import (
	"testing"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestRelayHandshakeSourceLimit: one source that opens more silent
// connections than MaxHandshakesPerSource gets the extra ones closed at
// once as source_busy, while a node from another address still connects;
// the slots come back when the silent connections close.
func TestRelayHandshakeSourceLimit(t *testing.T) {
	f := newFixture(t, nil)
	per := DefaultMaxHandshakesPerSource
	silent := testenv.DialSilent(t, per+4, "127.63.4.1", f.addr)
	waitFor(t, "4 connections over the source's bound closed", func() bool {
		return silent.ClosedByPeer() == 4 && f.metric(refused(ReasonSourceBusy)) == 4
	})
	c, err := f.dial(source(t, f.ca, "site-a", "x"))
	if err != nil {
		t.Fatalf("a node during the flood: %v", err)
	}
	c.Close()
	waitFor(t, "the node's slot freed", func() bool { return f.metric("fogmesh_relay_handshakes_in_progress") == float64(per) })
	silent.Close()
	waitFor(t, "the silent connections' slots freed", func() bool { return f.metric("fogmesh_relay_handshakes_in_progress") == 0 })
	if got := f.metric(refused(ReasonBusy)); got != 0 {
		t.Errorf("busy counted %v", got)
	}
}
