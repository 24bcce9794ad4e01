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

// deadPeerTimeout is how long a direct stream's socket may go without an
// answer from the peer (keepalive probes unanswered, or sent bytes not
// acknowledged) before the kernel ends it: about as long as a session
// takes to notice a dead peer (keepAliveInterval + connWriteTimeout).
const deadPeerTimeout = keepAliveInterval + connWriteTimeout

// watchPeer makes the kernel end c once its peer is gone for
// deadPeerTimeout (a yamux session pings its peer; a direct stream's
// socket has only TCP to tell): keepalive probes after keepAliveInterval
// of silence, and TCP_USER_TIMEOUT for bytes that go unacknowledged.
func watchPeer(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: keepAliveInterval, Interval: keepAliveInterval,
		Count: int(connWriteTimeout / keepAliveInterval)})
	if rc, err := tc.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(deadPeerTimeout/time.Millisecond))
		})
	}
}

// userTimeout is c's TCP_USER_TIMEOUT (tests).
func userTimeout(c net.Conn) (time.Duration, bool) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0, false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT) }); err != nil || gerr != nil {
		return 0, false
	}
	return time.Duration(v) * time.Millisecond, true
}
