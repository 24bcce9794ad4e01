package testenv

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/netseam"
)

// SlowNet dials TCP; once Slow is set, each connection's first write is
// held for Hold (or until the connection is closed): a slow link to a
// control plane (satellite, 2G), where a TLS handshake takes longer than
// on a LAN. It is a netseam.Network for the agent and, through Dial, the
// dialer under a relay's enroll.Dialer.
type SlowNet struct {
	netseam.OS
	Hold time.Duration
	Slow atomic.Bool
}

// Dial dials addr, holding the connection's first write when n.Slow is set.
func (n *SlowNet) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := n.OS.Dial(ctx, network, addr)
	if err != nil || !n.Slow.Load() {
		return c, err
	}
	return &heldConn{Conn: c, until: time.Now().Add(n.Hold), closed: make(chan struct{})}, nil
}

type heldConn struct {
	net.Conn
	until  time.Time
	once   sync.Once
	closed chan struct{}
}

func (c *heldConn) Write(p []byte) (int, error) {
	if d := time.Until(c.until); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	return c.Conn.Write(p)
}

func (c *heldConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}
