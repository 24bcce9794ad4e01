package transport

import (
	"context"
	"net"
	"testing"
)

// TestDirectStreamWatchesPeer: a direct stream's socket ends when its peer
// is gone for deadPeerTimeout (TCP_USER_TIMEOUT, keepalive), as a session
// would notice: without it, bytes to a dead peer retry for minutes.
func TestDirectStreamWatchesPeer(t *testing.T) {
	ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"ep": serveWorkload(t, "127.0.0.1:0", echo)}, nil)
	c, _, _ := newDirectClient(t)
	conn, err := c.Dial(context.Background(), ts.addr, header("ep"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if d, ok := userTimeout(conn.(interface{ TCP() *net.TCPConn }).TCP()); !ok || d != deadPeerTimeout {
		t.Errorf("direct stream's TCP_USER_TIMEOUT %v (%v), want %v", d, ok, deadPeerTimeout)
	}
}
