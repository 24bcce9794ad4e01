package transport

import (
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// tcpInfo reads c's TCP_INFO; false when c is not a TCP socket.
func tcpInfo(c net.Conn) (*unix.TCPInfo, bool) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil, false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, false
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || ierr != nil {
		return nil, false
	}
	return info, true
}

// tcpRTT is the kernel's smoothed RTT of c.
func tcpRTT(c net.Conn) (time.Duration, bool) {
	info, ok := tcpInfo(c)
	if !ok || info.Rtt == 0 {
		return 0, false
	}
	return time.Duration(info.Rtt) * time.Microsecond, true
}

// tcpBytes is what c received and what the peer acknowledged of what c
// sent, by the kernel's count.
func tcpBytes(c net.Conn) (in, out uint64, ok bool) {
	info, ok := tcpInfo(c)
	if !ok {
		return 0, 0, false
	}
	return info.Bytes_received, info.Bytes_acked, true
}

// keepIdle is c's TCP_KEEPIDLE and TCP_USER_TIMEOUT (tests).
func keepIdle(c net.Conn) (idle, user time.Duration, ok bool) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0, 0, false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var i, u int
	var ierr, uerr error
	if err := rc.Control(func(fd uintptr) {
		i, ierr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		u, uerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	}); err != nil || ierr != nil || uerr != nil {
		return 0, 0, false
	}
	return time.Duration(i) * time.Second, time.Duration(u) * time.Millisecond, true
}
