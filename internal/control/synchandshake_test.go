package control

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// syncHandshakes reads fogmesh_tls_handshakes_in_progress{port="sync"}
// (-1 when absent).
func syncHandshakes(s *Server) int {
	var b bytes.Buffer
	s.cfg.Metrics.WritePrometheus(&b)
	const name = `fogmesh_tls_handshakes_in_progress{port="sync"} `
	for line := range strings.Lines(b.String()) {
		if v, ok := strings.CutPrefix(line, name); ok {
			var n int
			fmt.Sscan(v, &n)
			return n
		}
	}
	return -1
}

// TestSyncHandshakeSourceBound: connections from one source that send
// nothing hold at most the per-source bound of the sync port's handshake
// slots; the extra ones are closed at once and counted as source_busy, an
// agent from another address is still welcomed, and the slots come back
// when the silent connections close.
func TestSyncHandshakeSourceBound(t *testing.T) {
	s := startSecure(t)
	per := DefaultSyncMaxHandshakesPerSource
	silent := testenv.DialSilent(t, per+4, "127.63.3.1", s.SyncAddr())
	testenv.WaitFor(t, 5*time.Second, "4 connections over the source's bound closed", func() bool {
		return silent.ClosedByPeer() == 4 && s.TLSFailures(identity.ReasonSourceBusy) == 4
	})
	if m, err := syncDial(t, s, signNode(t, s.CA(), "s1", "good", 0), "s1", "good"); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("an agent during the flood: %v %+v", err, m)
	}
	testenv.WaitFor(t, 5*time.Second, "the agent's slot freed", func() bool { return syncHandshakes(s) == per })
	if silent.ClosedByPeer() != 4 {
		t.Fatalf("%d silent connections closed, want still 4", silent.ClosedByPeer())
	}

	silent.Close()
	testenv.WaitFor(t, 5*time.Second, "the silent connections' slots freed", func() bool { return syncHandshakes(s) == 0 })
	again := testenv.DialSilent(t, per, "127.63.3.1", s.SyncAddr())
	testenv.WaitFor(t, 5*time.Second, "the source's slots taken again", func() bool { return syncHandshakes(s) == per })
	if again.ClosedByPeer() != 0 || s.TLSFailures(identity.ReasonSourceBusy) != 4 {
		t.Fatalf("after the slots came back: %d closed, %d refused", again.ClosedByPeer(), s.TLSFailures(identity.ReasonSourceBusy))
	}
}

// TestSyncHandshakeConfig: 0 is the default bound, a negative one none
// (as AuditArchivesPerNode's), kept negative for the gate.
func TestSyncHandshakeConfig(t *testing.T) {
	c := Config{StateDir: t.TempDir()}
	if err := c.validate(); err != nil || c.SyncMaxHandshakes != DefaultSyncMaxHandshakes ||
		c.SyncMaxHandshakesPerSource != DefaultSyncMaxHandshakesPerSource {
		t.Fatalf("defaults: %v %d %d", err, c.SyncMaxHandshakes, c.SyncMaxHandshakesPerSource)
	}
	c = Config{StateDir: t.TempDir(), SyncMaxHandshakes: -1, SyncMaxHandshakesPerSource: -1}
	if err := c.validate(); err != nil || c.SyncMaxHandshakes >= 0 || c.SyncMaxHandshakesPerSource >= 0 {
		t.Fatalf("negative bounds: %v %d %d, want accepted as none", err, c.SyncMaxHandshakes, c.SyncMaxHandshakesPerSource)
	}
}

// TestSyncHandshakeNegativeUnbounded: with SyncMaxHandshakesPerSource
// negative, more silent connections from one source than the default
// per-source bound all wait for their handshake, none closed.
func TestSyncHandshakeNegativeUnbounded(t *testing.T) {
	s := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, SyncMaxHandshakesPerSource: -1})
	n := DefaultSyncMaxHandshakesPerSource + 4
	silent := testenv.DialSilent(t, n, "127.63.3.2", s.SyncAddr())
	testenv.WaitFor(t, 10*time.Second, "every silent connection in its handshake", func() bool { return syncHandshakes(s) == n })
	if silent.ClosedByPeer() != 0 || s.TLSFailures(identity.ReasonSourceBusy) != 0 || s.TLSFailures(identity.ReasonBusy) != 0 {
		t.Fatalf("with no per-source bound: %d closed, %d source_busy, %d busy", silent.ClosedByPeer(),
			s.TLSFailures(identity.ReasonSourceBusy), s.TLSFailures(identity.ReasonBusy))
	}
}

// TestSyncJoinHoldsItsSlot: a join connection (its node has no certificate)
// keeps its handshake slot until its join is served, so connections that
// finish the handshake and then send nothing cannot pile up past the bound:
// with two such joins open from one source, a third connection from it is
// refused as source_busy.
func TestSyncJoinHoldsItsSlot(t *testing.T) {
	s := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, SyncMaxHandshakesPerSource: 2})
	const src = "127.63.4.1"
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	for range 2 {
		jc, err := tls.DialWithDialer(d, "tcp", s.SyncAddr(), &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
			NextProtos: []string{identity.ALPNJoin}})
		if err != nil {
			t.Fatal(err)
		}
		defer jc.Close()
	}
	third := testenv.DialSilent(t, 1, src, s.SyncAddr())
	testenv.WaitFor(t, 5*time.Second, "a third connection from the source refused", func() bool {
		return third.ClosedByPeer() == 1 && s.TLSFailures(identity.ReasonSourceBusy) == 1
	})
}

// TestSyncHandshakeEvictsBusiest: with the sync port's gate full of two
// sources' silent connections, a connection from a third address takes
// the place of the oldest one of one of them (closed, counted as evicted)
// instead of being refused as busy.
func TestSyncHandshakeEvictsBusiest(t *testing.T) {
	s := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, SyncMaxHandshakes: 4, SyncMaxHandshakesPerSource: 2})
	a := testenv.DialSilent(t, 2, "127.68.4.1", s.SyncAddr())
	b := testenv.DialSilent(t, 2, "127.68.4.2", s.SyncAddr())
	testenv.WaitFor(t, 5*time.Second, "the gate full", func() bool { return syncHandshakes(s) == 4 })
	late := testenv.DialSilent(t, 1, "127.68.4.3", s.SyncAddr())
	testenv.WaitFor(t, 5*time.Second, "one silent connection evicted", func() bool {
		return a.ClosedByPeer()+b.ClosedByPeer() == 1 && s.TLSFailures(identity.ReasonEvicted) == 1
	})
	if !a.IsClosed(0) && !b.IsClosed(0) {
		t.Fatal("the evicted connection is not its source's oldest")
	}
	if late.ClosedByPeer() != 0 || s.TLSFailures(identity.ReasonBusy) != 0 || syncHandshakes(s) != 4 {
		t.Fatalf("the newcomer: closed %d, %d busy, %d in progress; want 0, 0, 4",
			late.ClosedByPeer(), s.TLSFailures(identity.ReasonBusy), syncHandshakes(s))
	}
}
