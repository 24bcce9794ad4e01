// Package clientip keys per-client limits by source address: an IPv4
// address is one client, an IPv6 one counts as its /64, which one host (or
// the pods of one node) holds whole and could rotate through to escape a
// per-address limit. The admin API's refused-credential throttle, the
// DNS server's forwarding limits and the handshake gates share it.
//
// The package imports no fogmesh package, so any part may depend on it.
package clientip

import "net/netip"

// Key returns the address a's limits count against: a without its zone,
// an IPv4-mapped address as IPv4, an IPv6 address as its /64 (the first
// 64 bits, the rest zero). The zero Addr stays the zero Addr.
func Key(a netip.Addr) netip.Addr {
	a = a.Unmap().WithZone("")
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}
