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

// TestRelayHandshakeNegativeUnbounded: negative handshake bounds are none
// (as BytesPerSecond's), 0 the defaults: with MaxHandshakesPerSource
// negative, more silent connections from one source than its default bound
// all wait for their handshake; with MaxHandshakes negative alone the
// per-source default still holds.
func TestRelayHandshakeNegativeUnbounded(t *testing.T) {
	for _, tc := range []struct {
		max, per, wantMax, wantPer int
	}{
		{0, 0, DefaultMaxHandshakes, DefaultMaxHandshakesPerSource},
		{-1, 0, -1, DefaultMaxHandshakesPerSource},
		{0, -1, DefaultMaxHandshakes, -1},
		{-1, -1, -1, -1},
		{8, 0, 8, 8},
	} {
		c := Config{Source: source(t, newCA(t), "relay", "r1"), MaxHandshakes: tc.max, MaxHandshakesPerSource: tc.per}
		if err := c.validate(); err != nil {
			t.Fatalf("MaxHandshakes %d, per source %d: %v", tc.max, tc.per, err)
		}
		if (c.MaxHandshakes < 0) != (tc.wantMax < 0) || (tc.wantMax >= 0 && c.MaxHandshakes != tc.wantMax) ||
			(c.MaxHandshakesPerSource < 0) != (tc.wantPer < 0) || (tc.wantPer >= 0 && c.MaxHandshakesPerSource != tc.wantPer) {
			t.Errorf("MaxHandshakes %d, per source %d: validated to %d, %d, want %d, %d (negative: none)",
				tc.max, tc.per, c.MaxHandshakes, c.MaxHandshakesPerSource, tc.wantMax, tc.wantPer)
		}
	}

	f := newFixture(t, func(c *Config) { c.MaxHandshakesPerSource = -1 })
	n := DefaultMaxHandshakesPerSource + 4
	silent := testenv.DialSilent(t, n, "127.63.4.2", f.addr)
	waitFor(t, "every silent connection in its handshake", func() bool {
		return f.metric("fogmesh_relay_handshakes_in_progress") == float64(n)
	})
	if silent.ClosedByPeer() != 0 || f.metric(refused(ReasonSourceBusy)) != 0 || f.metric(refused(ReasonBusy)) != 0 {
		t.Fatalf("with no per-source bound: %d closed, %v source_busy, %v busy", silent.ClosedByPeer(),
			f.metric(refused(ReasonSourceBusy)), f.metric(refused(ReasonBusy)))
	}
}
