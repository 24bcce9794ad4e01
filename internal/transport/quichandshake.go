package transport

import (
	"context"
	"errors"
	"net"
	"sync"

	"github.com/quic-go/quic-go"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// Bounding the QUIC mesh server's handshakes in progress. quic-go runs
// them itself: for every Initial packet of a new connection it creates a
// connection and its goroutines, and hands the connection to Accept only
// once the handshake is done. Two hooks of its Transport, read when the
// server listens, come before that:
//
//   - ConnContext, called for each new connection, takes a slot of an
//     identity.HandshakeGate for the packet's source address (refused:
//     quic-go answers CONNECTION_REFUSED, statelessly, and creates
//     nothing). The slot is freed when Serve accepts the connection (its
//     handshake is done) or when its context ends: the handshake failed or
//     timed out (HandshakeIdleTimeout, the server's HeaderTimeout), or the
//     connection was closed. A QUIC slot is never evicted by a fairer
//     newcomer (as the TCP ports' are: identity.HandshakeGate), see enter.
//   - VerifySourceAddress makes a source prove its address with a Retry
//     round trip (RFC 9000 §8.1.2; stateless) once the handshakes in
//     progress reach half of either bound (rounded down). The address on
//     an Initial may be spoofed, so an unvalidated source holds at most
//     half the slots,
//     of its address and in all: a flood of spoofed Initials cannot fill
//     a real peer's share, which answers the Retry and takes the rest.

// errHandshakeRefused rejects a connection over a gate bound.
var errHandshakeRefused = errors.New("transport: too many QUIC handshakes in progress")

type slotKey struct{}

// quicGate is a QUICServer's handshake gate and its hooks.
type quicGate struct {
	gate *identity.HandshakeGate
	m    *meshMetrics
	s    *Server // for its logger
}

// hook sets tr's hooks, for the listener made next on tr; tr must have
// none of its own.
func (g *quicGate) hook(tr *quic.Transport) error {
	if tr.ConnContext != nil || tr.VerifySourceAddress != nil {
		return errors.New("the Transport's ConnContext or VerifySourceAddress is set (the QUIC server sets both)")
	}
	tr.ConnContext = g.enter
	tr.VerifySourceAddress = g.needsRetry
	return nil
}

// unhook clears tr's hooks once its listener is closed (quic-go read them
// when it was made), so a new server may listen on tr.
func unhook(tr *quic.Transport) {
	tr.ConnContext = nil
	tr.VerifySourceAddress = nil
}

// needsRetry reports whether an Initial from an unvalidated addr must be
// answered by a Retry: half of either bound, rounded down, is in use (a
// negative bound is none). Rounded down, so that unvalidated Initials
// hold at most half of an odd bound too: a bound of 1 asks a Retry of the
// first one, which would otherwise take the only slot.
func (g *quicGate) needsRetry(addr net.Addr) bool {
	max, per := g.gate.Limits()
	total, src := g.gate.Load(addr)
	if (max >= 0 && total*2 >= max-max%2) || (per >= 0 && src*2 >= per-per%2) {
		g.m.retries.Inc()
		return true
	}
	return false
}

// enter takes a slot for a new connection, freed by release(ctx) at
// Accept or when ctx ends.
func (g *quicGate) enter(ctx context.Context, info *quic.ClientInfo) (context.Context, error) {
	// A nil cancel: the gate never evicts a QUIC handshake. quic-go
	// (v0.65) gives no handle on a connection before Accept, and ending
	// the context returned here does not close it: its run loop does not
	// watch that context, and crypto/tls (QUIC mode) reads it only when
	// more handshake data arrives, which a silent peer never sends; the
	// connection would live on to its HandshakeIdleTimeout while its slot
	// counted as free. The Retry below bounds unvalidated sources instead.
	slot, reason := g.gate.Enter(info.RemoteAddr, nil)
	if slot == nil {
		g.m.tlsFailure(reason)
		g.s.log.Debug("mesh: QUIC connection refused before its handshake", "peer", info.RemoteAddr.String(),
			"reason", reason, "validated", info.AddrVerified)
		return nil, errHandshakeRefused
	}
	g.m.handshakes.Inc()
	free := sync.OnceFunc(func() { slot.Release(); g.m.handshakes.Dec() }) // never evicted: held
	ctx = context.WithValue(ctx, slotKey{}, free)
	context.AfterFunc(ctx, free)
	return ctx, nil
}

// releaseSlot frees the handshake slot of an accepted connection.
func releaseSlot(conn *quic.Conn) {
	if free, ok := conn.Context().Value(slotKey{}).(func()); ok {
		free()
	}
}
