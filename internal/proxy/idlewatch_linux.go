package proxy

import (
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// tcpIdle is how long c has neither received nor sent data, from the
// kernel's TCP_INFO (millisecond resolution).
func tcpIdle(c *net.TCPConn) (time.Duration, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("tcp idle time: %w", err)
	}
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return 0, fmt.Errorf("tcp idle time: %w", err)
	}
	if serr != nil {
		return 0, fmt.Errorf("tcp idle time: TCP_INFO: %w", serr)
	}
	ms := min(info.Last_data_recv, info.Last_data_sent)
	return time.Duration(ms) * time.Millisecond, nil
}
