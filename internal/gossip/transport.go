package gossip

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// joinTransport is memberlist's NetTransport whose stream connections
// (Join's and the periodic push-pulls) end when the member closes:
// memberlist's Join takes no context, and waits on each address in turn,
// up to TCPTimeout (1 s) to connect and as long again for the answer, so a
// Join to silent peers held the agent's Close (which waits for it) that
// long per address.
type joinTransport struct {
	*memberlist.NetTransport
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex // guards conns
	conns map[*joinConn]struct{}
}

// newJoinTransport binds host:port (port 0: one free for both UDP and
// TCP, retried as memberlist does when it makes its own transport).
func newJoinTransport(host string, port int, logger *log.Logger) (*joinTransport, error) {
	nc := &memberlist.NetTransportConfig{BindAddrs: []string{host}, BindPort: port, Logger: logger}
	tries := 1
	if port == 0 {
		tries = 10
	}
	var nt *memberlist.NetTransport
	var err error
	for range tries {
		if nt, err = memberlist.NewNetTransport(nc); err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("transport: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &joinTransport{NetTransport: nt, ctx: ctx, cancel: cancel, conns: map[*joinConn]struct{}{}}, nil
}

// errClosed fails the dials of a closed member.
var errClosed = errors.New("gossip: member closed")

// DialAddressTimeout dials as NetTransport does, until stop.
func (t *joinTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(t.ctx, "tcp", a.Addr)
	if err != nil {
		if t.ctx.Err() != nil {
			return nil, errClosed
		}
		return nil, err
	}
	jc := &joinConn{Conn: c, t: t}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ctx.Err() != nil {
		c.Close()
		return nil, errClosed
	}
	t.conns[jc] = struct{}{}
	return jc, nil
}

// DialTimeout is DialAddressTimeout (memberlist calls that one).
func (t *joinTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// stop fails the dials in progress and to come, and closes the stream
// connections open: a Join in progress returns at once.
func (t *joinTransport) stop() {
	t.cancel()
	t.mu.Lock()
	conns := t.conns
	t.conns = map[*joinConn]struct{}{}
	t.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
}

// joinConn is a dialed stream connection, known to its transport until
// closed.
type joinConn struct {
	net.Conn
	t *joinTransport
}

func (c *joinConn) Close() error {
	c.t.mu.Lock()
	delete(c.t.conns, c)
	c.t.mu.Unlock()
	return c.Conn.Close()
}
