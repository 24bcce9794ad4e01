package transport

import (
	"context"
	"net"
	"testing"
)

// TestDirectStreamWatchesPeer: a direct stream's socket probes its peer
// after keepAliveInterval of silence, as a session pings it, and has no
// TCP_USER_TIMEOUT: the kernel would apply it to zero-window probes and
// reset a stream whose reader paused that long (found in review).
func TestDirectStreamWatchesPeer(t *testing.T) {
	ts := startServer(t, listen(t, "127.0.0.1:0"), mapDialer{"ep": serveWorkload(t, "127.0.0.1:0", echo)}, nil)
	c, _, _ := newDirectClient(t)
	conn, err := c.Dial(context.Background(), ts.addr, header("ep"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if idle, user, ok := keepIdle(conn.(interface{ TCP() *net.TCPConn }).TCP()); !ok || idle != keepAliveInterval || user != 0 {
		t.Errorf("direct stream's keepalive idle %v, user timeout %v (%v); want %v and none", idle, user, ok, keepAliveInterval)
	}
}
