//go:build !linux

package proxy

import (
	"net"
	"time"
)

// tcpIdle: only Linux's TCP_INFO is read; elsewhere RelayIdle wraps.
func tcpIdle(*net.TCPConn) (time.Duration, error) { return 0, errNoTCPInfo }
