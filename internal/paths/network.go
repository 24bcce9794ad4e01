package paths

import (
	"context"
	"fmt"
	"net"

	"github.com/fogmesh/fogmesh/internal/transport"
)

// pathNetwork is the TCP mesh client's network: it dials a session key
// (directKey, relayKey) rather than an address, so the client's sessions
// are per peer and path, never per address.
type pathNetwork Manager

// Dial opens the carrier of a session: a TCP connection to the peer's
// advertised address, or a session relayed to the peer's identity.
func (n *pathNetwork) Dial(ctx context.Context, _, key string) (net.Conn, error) {
	m := (*Manager)(n)
	kind, name := keyPeer(key)
	m.mu.Lock()
	st := m.peers[name]
	m.mu.Unlock()
	if st == nil {
		return nil, fmt.Errorf("paths: unknown peer %q", name)
	}
	m.mu.Lock()
	addr, id := st.Addr, st.ID
	m.mu.Unlock()
	var c net.Conn
	var err error
	switch kind {
	case Direct:
		c, err = m.cfg.Network.Dial(ctx, "tcp", addr)
	case Relayed:
		if m.pool == nil {
			return nil, fmt.Errorf("paths: no relay configured")
		}
		var via string
		c, via, err = m.pool.DialPeer(ctx, id.String())
		if err == nil {
			m.mu.Lock()
			st.viaRelay = via
			m.mu.Unlock()
		}
	default:
		return nil, fmt.Errorf("paths: bad session key %q", key)
	}
	if err != nil {
		return nil, err
	}
	return &countConn{Conn: c, b: st.bytes}, nil
}

// DialDirect connects a direct stream's own connection to the peer of a
// direct key (transport.DirectDialer); a relayed key carries none. The
// connection is not wrapped, so that the agents splice it: its bytes are
// counted when it closes (directBytes).
func (n *pathNetwork) DialDirect(ctx context.Context, key string) (net.Conn, error) {
	m := (*Manager)(n)
	kind, name := keyPeer(key)
	if kind != Direct {
		return nil, transport.ErrNoDirect
	}
	m.mu.Lock()
	st := m.peers[name]
	var addr string
	if st != nil {
		addr = st.Addr
	}
	m.mu.Unlock()
	if st == nil {
		return nil, fmt.Errorf("paths: unknown peer %q", name)
	}
	return m.cfg.Network.Dial(ctx, "tcp", addr)
}

// directBytes adds a closed direct stream's bytes to its peer's count.
func (m *Manager) directBytes(key string, in, out uint64) {
	_, name := keyPeer(key)
	m.mu.Lock()
	st := m.peers[name]
	m.mu.Unlock()
	if st != nil {
		st.bytes.in.Add(in)
		st.bytes.out.Add(out)
	}
}

// Listen is not used: peers reach this agent through Manager.Listener.
func (n *pathNetwork) Listen(context.Context, string, string) (net.Listener, error) {
	return nil, fmt.Errorf("paths: listen through the agent's mesh listener")
}

// countConn counts a TCP path's bytes for Status.
type countConn struct {
	net.Conn
	b *byteCount
}

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.b.in.Add(uint64(n))
	return n, err
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.b.out.Add(uint64(n))
	return n, err
}

var _ transport.BuffersWriter = (*countConn)(nil)

// WriteBuffers writes bufs in one writev where the conn is a socket (the
// plaintext mesh sends a frame's header and body so).
func (c *countConn) WriteBuffers(bufs net.Buffers) (int64, error) {
	n, err := bufs.WriteTo(c.Conn)
	c.b.out.Add(uint64(n))
	return n, err
}
