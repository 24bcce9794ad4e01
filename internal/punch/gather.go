package punch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/fogmesh/fogmesh/internal/relay"
)

// Candidates are the addresses a node's UDP socket may be reached at.
type Candidates struct {
	// Local are the socket's own addresses: the interface addresses when
	// it is bound to all of them.
	Local []netip.AddrPort
	// Reflexive is the socket's address as the relay saw it (the NAT's
	// mapping); invalid when the relay did not answer.
	Reflexive netip.AddrPort
}

// Strings returns the candidates as host:port, local ones first, for
// relay.Client.Introduce; the reflexive one only if it is not a local one.
func (c Candidates) Strings() []string {
	var out []string
	for _, a := range c.Local {
		out = append(out, a.String())
	}
	if c.Reflexive.IsValid() && !slices.Contains(c.Local, c.Reflexive) {
		out = append(out, c.Reflexive.String())
	}
	return out
}

// maxLocal leaves room among relay.MaxCandidates for the reflexive
// addresses the relay adds (UDP and TCP).
const maxLocal = relay.MaxCandidates - 4

// Gather finds pc's candidates and tells the relay the local ones
// (relay.Client.SetCandidates, given to the nodes introduced to this one;
// the relay adds the reflexive address it saw). Call it before a
// quic.Transport reads pc, and inside pc's network namespace (it lists the
// interfaces there). timeout bounds the wait for the relay's UDP answer
// (0: DefaultGatherTimeout); without one, the error wraps ErrUDPBlocked and
// the Candidates hold the local addresses only, still good for peers on
// the same network.
func Gather(ctx context.Context, rc *relay.Client, pc net.PacketConn, relayUDP net.Addr, timeout time.Duration) (Candidates, error) {
	if timeout <= 0 {
		timeout = DefaultGatherTimeout
	}
	var c Candidates
	local, err := localAddrs(pc)
	if err != nil {
		return c, err
	}
	c.Local = local
	if err := rc.SetCandidates(c.Strings()); err != nil {
		return c, fmt.Errorf("punch: gather: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// UDPReflexive ends its wait at rctx's deadline and leaves pc without a
	// read deadline for the transport that reads it next.
	refl, err := rc.UDPReflexive(rctx, pc, relayUDP)
	if err != nil {
		if ctx.Err() != nil {
			return c, fmt.Errorf("punch: gather: %w", ctx.Err())
		}
		return c, fmt.Errorf("%w: the relay's UDP port %s did not answer within %s (UDP blocked?): %w", ErrUDPBlocked, relayUDP, timeout, err)
	}
	c.Reflexive = refl
	return c, nil
}

// localAddrs returns pc's own addresses: its bound address, or every
// usable interface address when it is bound to all.
func localAddrs(pc net.PacketConn) ([]netip.AddrPort, error) {
	ua, ok := pc.LocalAddr().(*net.UDPAddr)
	if !ok {
		return nil, fmt.Errorf("punch: gather: %v is not a UDP socket", pc.LocalAddr())
	}
	bound := ua.AddrPort()
	port := bound.Port()
	if a := bound.Addr().Unmap(); !a.IsUnspecified() {
		return []netip.AddrPort{netip.AddrPortFrom(a, port)}, nil
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("punch: gather: interfaces: %w", err)
	}
	var out []netip.AddrPort
	for _, ia := range addrs {
		ipn, ok := ia.(*net.IPNet)
		if !ok {
			continue
		}
		a, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		if a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsUnspecified() {
			continue
		}
		if a.Is6() && bound.Addr().Is4() && !bound.Addr().Is4In6() {
			continue // a udp4 socket cannot reach IPv6 peers
		}
		if len(out) < maxLocal {
			out = append(out, netip.AddrPortFrom(a, port))
		}
	}
	if len(out) == 0 {
		return nil, errors.New("punch: gather: no usable interface address")
	}
	return out, nil
}
