package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrNotRedirected is returned by OriginalDst for a connection that no
// redirect rule rewrote: its original destination is the listener itself.
var ErrNotRedirected = errors.New("capture: connection was not redirected")

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h).
const ip6tSOOriginalDst = 80

// OriginalDst returns the destination a redirected TCP connection was
// addressed to before the redirect rule rewrote it (SO_ORIGINAL_DST or
// IP6T_SO_ORIGINAL_DST, from conntrack). c must be a *net.TCPConn
// accepted by a capture listener.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("capture: original destination of a %T", c)
	}
	local, _ := netip.ParseAddrPort(tc.LocalAddr().String())
	v6 := local.Addr().Is6() && !local.Addr().Is4In6()
	rc, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("capture: original destination: %w", err)
	}
	var b []byte
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if v6 {
			// sockaddr_in6 (28 bytes) read through the 32-byte
			// IPv6MTUInfo getter, whose first field is one.
			var mi *unix.IPv6MTUInfo
			if mi, serr = unix.GetsockoptIPv6MTUInfo(int(fd), syscall.SOL_IPV6, ip6tSOOriginalDst); serr == nil {
				b = rawInet6Bytes(&mi.Addr)
			}
			return
		}
		// SO_ORIGINAL_DST fills a struct sockaddr_in (16 bytes); the
		// 16-byte IPv6Mreq getter is the usual way to read one.
		var mr *unix.IPv6Mreq
		if mr, serr = unix.GetsockoptIPv6Mreq(int(fd), syscall.SOL_IP, unix.SO_ORIGINAL_DST); serr == nil {
			b = mr.Multiaddr[:]
		}
	}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("capture: original destination: %w", err)
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("capture: SO_ORIGINAL_DST: %w", serr)
	}
	if v6 {
		return ParseSockaddrIn6(b)
	}
	return ParseSockaddrIn(b)
}

// rawInet6Bytes lays a RawSockaddrInet6 out as the kernel wrote it:
// family in host order, port and address in network order.
func rawInet6Bytes(sa *unix.RawSockaddrInet6) []byte {
	b := binary.NativeEndian.AppendUint16(nil, sa.Family)
	b = binary.NativeEndian.AppendUint16(b, sa.Port) // already network order in memory
	b = binary.NativeEndian.AppendUint32(b, sa.Flowinfo)
	return append(b, sa.Addr[:]...)
}

// ParseSockaddrIn6 decodes the start of a struct sockaddr_in6 as
// IP6T_SO_ORIGINAL_DST returns it: family (host order, AF_INET6), port,
// flow info and address (network order).
func ParseSockaddrIn6(b []byte) (netip.AddrPort, error) {
	if len(b) < 24 {
		return netip.AddrPort{}, fmt.Errorf("capture: sockaddr_in6 of %d bytes", len(b))
	}
	if fam := binary.NativeEndian.Uint16(b); fam != unix.AF_INET6 {
		return netip.AddrPort{}, fmt.Errorf("capture: sockaddr family %d, want AF_INET6", fam)
	}
	return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), binary.BigEndian.Uint16(b[2:4])), nil
}

// ParseSockaddrIn decodes a struct sockaddr_in as SO_ORIGINAL_DST returns
// it: family (host order, AF_INET), port and address (network order).
func ParseSockaddrIn(b []byte) (netip.AddrPort, error) {
	if len(b) < 8 {
		return netip.AddrPort{}, fmt.Errorf("capture: sockaddr_in of %d bytes", len(b))
	}
	if fam := binary.NativeEndian.Uint16(b); fam != unix.AF_INET {
		return netip.AddrPort{}, fmt.Errorf("capture: sockaddr family %d, want AF_INET", fam)
	}
	port := uint16(b[2])<<8 | uint16(b[3])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
}

// Redirected returns the original destination of c, or ErrNotRedirected
// when c reached the listener without a redirect (its original
// destination is the listener's own address).
func Redirected(c net.Conn) (netip.AddrPort, error) {
	orig, err := OriginalDst(c)
	if err != nil {
		return orig, err
	}
	local, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err == nil && netip.AddrPortFrom(local.Addr().Unmap(), local.Port()) == orig {
		return orig, ErrNotRedirected
	}
	return orig, nil
}
