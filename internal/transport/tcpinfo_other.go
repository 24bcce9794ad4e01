//go:build !linux

package transport

import (
	"net"
	"time"
)

func tcpRTT(net.Conn) (time.Duration, bool) { return 0, false }

func tcpBytes(net.Conn) (in, out uint64, ok bool) { return 0, 0, false }
