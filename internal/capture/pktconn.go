package capture

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// PktConn is a UDP socket that learns, for each datagram, the local
// address it was sent to (IP_PKTINFO, IPV6_RECVPKTINFO) and replies from
// that address. A datagram redirected to a wildcard socket arrived at the
// address the redirect chose (127.0.0.1 for the node's own processes, the
// incoming interface's for pods); its reply must leave from that same
// address, or conntrack cannot map it back to the ClusterIP the client
// sent to, and the client drops it.
type PktConn struct {
	*net.UDPConn
	v6 bool
}

// ListenPkt binds a PktConn: network udp4 or udp6, address host:port.
func ListenPkt(ctx context.Context, network, address string) (*PktConn, error) {
	v6 := network == "udp6"
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if v6 {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(ctx, network, address)
	if err != nil {
		return nil, err
	}
	c := pc.(*net.UDPConn)
	c.SetReadBuffer(4 << 20) // best effort
	return &PktConn{UDPConn: c, v6: v6}, nil
}

var errNoPktInfo = errors.New("capture: datagram without its destination address")

// ReadFromTo reads a datagram: its sender, and the local address it was
// sent to.
func (c *PktConn) ReadFromTo(b []byte) (n int, from netip.AddrPort, to netip.Addr, err error) {
	var oob [128]byte
	n, oobn, _, from, err := c.ReadMsgUDPAddrPort(b, oob[:])
	if err != nil {
		return 0, from, to, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return n, from, to, fmt.Errorf("capture: control message: %w", err)
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			to = netip.AddrFrom4([4]byte(m.Data[8:12])) // struct in_pktinfo: ifindex, spec_dst, addr (the header's)
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			to = netip.AddrFrom16([16]byte(m.Data[:16]))
		}
	}
	if !to.IsValid() {
		return n, from, to, errNoPktInfo
	}
	return n, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), to.Unmap(), nil
}

// WriteToFrom sends b to to from the local address from.
func (c *PktConn) WriteToFrom(b []byte, to netip.AddrPort, from netip.Addr) (int, error) {
	var oob []byte
	if c.v6 {
		oob = unix.PktInfo6(&unix.Inet6Pktinfo{Addr: from.As16()})
	} else {
		oob = unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: from.Unmap().As4()})
	}
	n, _, err := c.WriteMsgUDPAddrPort(b, oob, to)
	return n, err
}
