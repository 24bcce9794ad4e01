// Package netseam is the seam between fogmesh's links (the mesh port between
// agents, the sync stream from an agent to its control plane) and the
// network they run on. Production code takes a Network and uses OS, the
// operating system's sockets; tests pass an in-memory network
// (netseam/memnet) so agents and control planes can talk without a port
// where a real socket adds nothing.
//
// The package imports no fogmesh package, so any part may depend on it.
package netseam

import (
	"context"
	"net"
)

// Network opens stream connections. Both methods take the network and
// address forms of the net package ("tcp", "host:port", port 0 for any
// free port) and must be safe for concurrent use.
//
// Dial returns an error that wraps syscall.ECONNREFUSED when nothing
// listens at addr, as the kernel does, and honours ctx's deadline and
// cancellation. Listen returns a listener whose Close unblocks Accept with
// an error wrapping net.ErrClosed, and whose Addr().String() is the bound
// "host:port" (the chosen port when addr's was 0).
type Network interface {
	Dial(ctx context.Context, network, addr string) (net.Conn, error)
	Listen(ctx context.Context, network, addr string) (net.Listener, error)
}

// OS is the operating system's network: Dial is Dialer.DialContext and
// Listen is ListenConfig.Listen, with whatever socket options they carry.
// The zero value is net.Dialer{} and net.ListenConfig{} (TCP keep-alive
// every 15 s), what fogmesh used before the seam.
type OS struct {
	Dialer       net.Dialer
	ListenConfig net.ListenConfig
}

var _ Network = OS{}

// Dial connects to addr with o.Dialer.
func (o OS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return o.Dialer.DialContext(ctx, network, addr)
}

// Listen binds addr with o.ListenConfig.
func (o OS) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	return o.ListenConfig.Listen(ctx, network, addr)
}

// Or returns n, or OS{} when n is nil: the default of a config field.
func Or(n Network) Network {
	if n == nil {
		return OS{}
	}
	return n
}
