package capture

import (
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

// OriginalDst returns the destination a redirected TCP connection was
// addressed to before the redirect rule rewrote it (SO_ORIGINAL_DST, from
// conntrack). c must be an IPv4 *net.TCPConn accepted by the capture
// listener.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("capture: original destination of a %T", c)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("capture: original destination: %w", err)
	}
	var sa *unix.IPv6Mreq
	var serr error
	if err := rc.Control(func(fd uintptr) {
		// SO_ORIGINAL_DST fills a struct sockaddr_in (16 bytes); the
		// 16-byte IPv6Mreq getter is the usual way to read one.
		sa, serr = unix.GetsockoptIPv6Mreq(int(fd), syscall.SOL_IP, unix.SO_ORIGINAL_DST)
	}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("capture: original destination: %w", err)
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("capture: SO_ORIGINAL_DST: %w", serr)
	}
	b := sa.Multiaddr
	return ParseSockaddrIn(b[:])
}

// ParseSockaddrIn decodes a struct sockaddr_in as SO_ORIGINAL_DST returns
// it: family (host order, AF_INET), port and address (network order).
func ParseSockaddrIn(b []byte) (netip.AddrPort, error) {
	if len(b) < 8 {
		return netip.AddrPort{}, fmt.Errorf("capture: sockaddr_in of %d bytes", len(b))
	}
	if fam := uint16(b[0]) | uint16(b[1])<<8; fam != unix.AF_INET {
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
