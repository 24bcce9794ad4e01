package transport

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// startGatedServer runs a mutual-TLS mesh server whose silent connections
// outlive the test (HeaderTimeout, the handshake's timeout, is a minute).
func startGatedServer(t *testing.T, ca *identity.CA, tweak func(*ServerConfig)) *testServer {
	work := serveWorkload(t, "127.0.0.1:0", echo)
	src := testSource(testSVID(t, ca, "s", "node-b"), ca.Bundle())
	return startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"web-1": work}, func(c *ServerConfig) {
		c.TLS = src.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh)
		c.HeaderTimeout = time.Minute
		if tweak != nil {
			tweak(c)
		}
	})
}

// handshakesInProgress reads fogmesh_tls_handshakes_in_progress{port="mesh"}
// (-1 when absent).
func handshakesInProgress(ts *testServer) int {
	const name = `fogmesh_tls_handshakes_in_progress{port="mesh"} `
	for line := range strings.Lines(metricsText(ts.metrics)) {
		if v, ok := strings.CutPrefix(line, name); ok {
			var n int
			fmt.Sscan(v, &n)
			return n
		}
	}
	return -1
}

// TestMeshHandshakeSourceBound: one source opening more connections than
// the per-source bound, sending nothing, gets the extra ones closed at once
// (counted as source_busy) while the rest wait for their handshake; an
// agent from another address still authenticates and streams, and does not
// hold a slot; once the silent connections close their slots come back.
func TestMeshHandshakeSourceBound(t *testing.T) {
	ca := testCA(t, "", nil)
	ts := startGatedServer(t, ca, nil)
	per := identity.DefaultMaxHandshakesPerSource
	refused := func() uint64 { return TLSFailures(ts.metrics, "in", identity.ReasonSourceBusy) }

	silent := testenv.DialSilent(t, per+8, "127.63.1.1", ts.addr)
	eventually(t, "8 connections over the source's bound closed", func() bool {
		return silent.ClosedByPeer() == 8 && refused() == 8
	})
	for i := range per { // in order: the first ones took the slots
		if silent.IsClosed(i) {
			t.Fatalf("connection %d, under the bound, was closed", i)
		}
	}

	c, _ := tlsClient(t, testSource(testSVID(t, ca, "s", "node-a"), ca.Bundle()), "node-a")
	dialRoundTrip(t, c, ts.addr, "web-1", "authenticated past the flood")
	if n := handshakesInProgress(ts); n != per {
		t.Fatalf("%d handshakes in progress with an authenticated session, want %d", n, per)
	}
	if silent.ClosedByPeer() != 8 {
		t.Fatalf("%d silent connections closed, want still 8", silent.ClosedByPeer())
	}

	silent.Close()
	eventually(t, "the silent connections' slots freed", func() bool { return handshakesInProgress(ts) == 0 })
	again := testenv.DialSilent(t, per, "127.63.1.1", ts.addr)
	eventually(t, "the source's slots taken again", func() bool { return handshakesInProgress(ts) == per })
	if again.ClosedByPeer() != 0 || refused() != 8 {
		t.Fatalf("after the slots came back: %d closed, %d refused", again.ClosedByPeer(), refused())
	}
	dialRoundTrip(t, c, ts.addr, "web-1", "still served")
}

// TestMeshHandshakeListenerBound: past MaxHandshakes, with every source
// holding an equal share (nobody to evict fairly), every source is
// refused (busy), an agent too, until a handshake ends.
func TestMeshHandshakeListenerBound(t *testing.T) {
	ca := testCA(t, "", nil)
	ts := startGatedServer(t, ca, func(c *ServerConfig) { c.MaxHandshakes, c.MaxHandshakesPerSource = 4, 2 })
	a := testenv.DialSilent(t, 1, "127.63.2.1", ts.addr)
	for i := range 3 {
		testenv.DialSilent(t, 1, fmt.Sprintf("127.63.2.%d", i+2), ts.addr)
	}
	eventually(t, "4 handshakes in progress", func() bool { return handshakesInProgress(ts) == 4 })
	late := testenv.DialSilent(t, 1, "127.63.2.5", ts.addr)
	eventually(t, "a fifth source refused as busy", func() bool {
		return late.ClosedByPeer() == 1 && TLSFailures(ts.metrics, "in", identity.ReasonBusy) == 1
	})

	a.Close()
	eventually(t, "a slot freed", func() bool { return handshakesInProgress(ts) == 3 })
	c, _ := tlsClient(t, testSource(testSVID(t, ca, "s", "node-a"), ca.Bundle()), "node-a")
	dialRoundTrip(t, c, ts.addr, "web-1", "in a freed slot")
	if n := handshakesInProgress(ts); n != 3 {
		t.Fatalf("%d handshakes in progress, want 3 (the agent's finished)", n)
	}
	if n := TLSFailures(ts.metrics, "in", identity.ReasonEvicted); n != 0 {
		t.Fatalf("%d evicted at equal shares, want 0", n)
	}
}

// TestMeshHandshakeEvictsBusiest: two sources holding every slot with
// silent connections do not lock an agent from a third address out: the
// oldest silent connection of one of them is closed (counted as evicted)
// and the agent's handshake takes its slot.
func TestMeshHandshakeEvictsBusiest(t *testing.T) {
	ca := testCA(t, "", nil)
	ts := startGatedServer(t, ca, func(c *ServerConfig) { c.MaxHandshakes, c.MaxHandshakesPerSource = 4, 2 })
	a := testenv.DialSilent(t, 2, "127.68.3.1", ts.addr)
	b := testenv.DialSilent(t, 2, "127.68.3.2", ts.addr)
	eventually(t, "4 handshakes in progress", func() bool { return handshakesInProgress(ts) == 4 })
	c, _ := tlsClient(t, testSource(testSVID(t, ca, "s", "node-a"), ca.Bundle()), "node-a")
	dialRoundTrip(t, c, ts.addr, "web-1", "past a full gate")
	eventually(t, "one silent connection evicted", func() bool {
		return a.ClosedByPeer()+b.ClosedByPeer() == 1 && TLSFailures(ts.metrics, "in", identity.ReasonEvicted) == 1
	})
	if !a.IsClosed(0) && !b.IsClosed(0) {
		t.Fatal("the evicted connection is not its source's oldest")
	}
	if n := TLSFailures(ts.metrics, "in", identity.ReasonBusy); n != 0 {
		t.Fatalf("%d refused as busy, want 0", n)
	}
	eventually(t, "the agent's slot freed", func() bool { return handshakesInProgress(ts) == 3 })
}

// TestMeshHandshakeNegativeUnbounded: negative bounds are none, as the
// agent's other negative bounds: more silent connections from one source
// than the default total bound all wait for their handshake, none closed.
func TestMeshHandshakeNegativeUnbounded(t *testing.T) {
	ca := testCA(t, "", nil)
	ts := startGatedServer(t, ca, func(c *ServerConfig) { c.MaxHandshakes, c.MaxHandshakesPerSource = -1, -1 })
	n := identity.DefaultMaxHandshakes + 8
	silent := testenv.DialSilent(t, n, "127.63.5.1", ts.addr)
	eventually(t, "every silent connection in its handshake", func() bool { return handshakesInProgress(ts) == n })
	if silent.ClosedByPeer() != 0 || TLSFailures(ts.metrics, "in", identity.ReasonBusy) != 0 ||
		TLSFailures(ts.metrics, "in", identity.ReasonSourceBusy) != 0 {
		t.Fatalf("with no bounds: %d closed, %d busy, %d source_busy", silent.ClosedByPeer(),
			TLSFailures(ts.metrics, "in", identity.ReasonBusy), TLSFailures(ts.metrics, "in", identity.ReasonSourceBusy))
	}
}
