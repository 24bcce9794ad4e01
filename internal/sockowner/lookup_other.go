//go:build !linux

package sockowner

import "net/netip"

// Lookup returns ErrUnsupported: only Linux tells who owns a TCP socket
// without privileged tracing.
func Lookup(client, server netip.AddrPort) (Owner, error) {
	return Owner{}, ErrUnsupported
}

// Find returns ErrUnsupported.
func Find(client, server netip.AddrPort) (Owner, error) { return Owner{}, ErrUnsupported }

// Holders returns ErrUnsupported.
func Holders(inode uint32) ([]Process, error) { return nil, ErrUnsupported }
