package transport

// The mesh port over QUIC: the second carrier of mesh streams beside
// yamux over TLS. Each mesh stream is one bidirectional QUIC stream that
// starts with the same header and status (header.go); QUIC's TLS 1.3
// handshake uses the same node certificates, trust bundles, deny list and
// node-ID checks as the TLS path. It runs on a UDP socket the caller owns
// (through a quic.Transport), so the same socket can serve STUN and hole
// punching, which a TCP mesh port cannot do behind NAT.

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// ALPNMeshQUIC names the mesh stream protocol carried directly on QUIC
// streams (no yamux), so a socket shared with other QUIC protocols (a
// relay) tells them apart.
const ALPNMeshQUIC = "fogmesh-mesh-quic/1"

const (
	// DefaultQUICKeepAlive is how often an idle QUIC connection sends a
	// packet: below the 30 s after which common NATs forget a UDP mapping.
	DefaultQUICKeepAlive = 15 * time.Second
	// DefaultQUICIdleTimeout is how long a connection may receive nothing
	// before it is closed (a dead or unreachable peer).
	DefaultQUICIdleTimeout = 30 * time.Second
	// defaultQUICMaxStreams is how many streams one peer may have open at
	// once (quic-go's default of 100 is too few for a busy peer).
	defaultQUICMaxStreams = 1024
	// quicMaxConnWindow bounds the bytes buffered for one connection,
	// whatever its number of streams.
	quicMaxConnWindow = 64 << 20
)

// QUICTimers are the liveness settings of QUIC connections, shared by the
// server and client configurations.
type QUICTimers struct {
	// KeepAlive is how often an idle connection sends a keepalive packet,
	// holding NAT mappings open. Default DefaultQUICKeepAlive; it must be
	// below IdleTimeout (quic-go sends at most every IdleTimeout/2).
	KeepAlive time.Duration
	// IdleTimeout closes a connection that received nothing for this long.
	// Default DefaultQUICIdleTimeout.
	IdleTimeout time.Duration
}

func (t *QUICTimers) validate() error {
	if t.KeepAlive < 0 || t.IdleTimeout < 0 {
		return errors.New("negative QUIC keepalive or idle timeout")
	}
	if t.KeepAlive == 0 {
		t.KeepAlive = DefaultQUICKeepAlive
	}
	if t.IdleTimeout == 0 {
		t.IdleTimeout = max(DefaultQUICIdleTimeout, 2*t.KeepAlive)
	}
	if t.KeepAlive >= t.IdleTimeout {
		return fmt.Errorf("QUIC keepalive %s is not below the idle timeout %s", t.KeepAlive, t.IdleTimeout)
	}
	return nil
}

// quicConfig is the connection configuration of both ends.
func quicConfig(t QUICTimers, handshake time.Duration) *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:       handshake,
		MaxIdleTimeout:             t.IdleTimeout,
		KeepAlivePeriod:            t.KeepAlive,
		MaxStreamReceiveWindow:     maxStreamWindow,
		MaxConnectionReceiveWindow: quicMaxConnWindow,
		MaxIncomingStreams:         defaultQUICMaxStreams,
		MaxIncomingUniStreams:      -1, // the mesh uses bidirectional streams only
	}
}

// quicClientConfig is quicConfig for the connections a client dials: the
// peer opens no streams on them (its own streams go over the connection
// it dials itself), so none are allowed, and a peer cannot park data in
// streams nothing here would ever read.
func quicClientConfig(t QUICTimers, handshake time.Duration) *quic.Config {
	c := quicConfig(t, handshake)
	c.MaxIncomingStreams = -1
	return c
}

// NewQUICTransport returns the QUIC endpoint of a UDP socket, to pass to a
// QUICServer and a QUICClient both (one per socket: it is the socket's
// only reader). Closing it ends its connections but leaves pc open: the
// caller owns pc and closes it after the transport. A pc with a faster
// form for QUIC (QUICPacketConn: a relay's UDP channel, whose view gets
// quic-go's GSO and batched reads) is used in that form.
func NewQUICTransport(pc net.PacketConn) *quic.Transport {
	if q, ok := pc.(interface{ QUICPacketConn() net.PacketConn }); ok {
		pc = q.QUICPacketConn()
	}
	return &quic.Transport{Conn: pc}
}

// quicTLS clones cfg for the mesh over QUIC: ALPNMeshQUIC only, and every
// certificate the verifier refuses counted as a mesh TLS failure, since
// quic-go does not hand failed handshakes back to the server.
func quicTLS(cfg *tls.Config, m *meshMetrics) (*tls.Config, error) {
	if cfg == nil {
		return nil, errors.New("no TLS config (QUIC has no plaintext mode)")
	}
	c := cfg.Clone()
	c.NextProtos = []string{ALPNMeshQUIC}
	if c.MinVersion < tls.VersionTLS13 {
		c.MinVersion = tls.VersionTLS13
	}
	if verify := c.VerifyPeerCertificate; verify != nil {
		c.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
			err := verify(raw, chains)
			if err != nil {
				m.tlsFailure(identity.HandshakeReason(err))
			}
			return err
		}
	}
	return c, nil
}

// Application error codes of the mesh over QUIC.
const (
	quicCodeClosed     quic.ApplicationErrorCode = 0 // normal close of a connection
	quicCodeNotNode    quic.ApplicationErrorCode = 1 // the peer is not a node identity
	quicCodeWrongPeer  quic.ApplicationErrorCode = 2 // the peer is not the node expected at that address
	quicCodeDropped    quic.ApplicationErrorCode = 3 // dropped: revoked, or declared dead by gossip
	quicCodeTooMany    quic.ApplicationErrorCode = 4 // the peer has maxSessionsPerPeer open here
	quicStreamCanceled quic.StreamErrorCode      = 0 // a stream closed before the peer finished sending
)

// quicStreamConn adapts a QUIC stream to the same contract as streamConn:
// CloseWrite sends FIN (the peer reads EOF, we can still read), Close ends
// both directions and unblocks a pending Read, and a stream whose
// connection died reads io.ErrUnexpectedEOF rather than a clean EOF.
type quicStreamConn struct {
	*quic.Stream
	conn   *quic.Conn
	closed atomic.Bool
}

func newQUICStreamConn(st *quic.Stream, conn *quic.Conn) *quicStreamConn {
	return &quicStreamConn{Stream: st, conn: conn}
}

// LocalAddr is the local address of the stream's connection.
func (c *quicStreamConn) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// RemoteAddr is the peer agent's address.
func (c *quicStreamConn) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// Read reads from the stream. It returns net.ErrClosed after Close.
func (c *quicStreamConn) Read(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := c.Stream.Read(p)
	if err != nil && err != io.EOF {
		err = c.mapErr(err)
	}
	return n, err
}

// Write writes to the stream. It returns net.ErrClosed after Close.
func (c *quicStreamConn) Write(p []byte) (int, error) {
	n, err := c.Stream.Write(p)
	if err != nil {
		err = c.mapErr(err)
	}
	return n, err
}

// mapErr makes a stream error look like a net.Conn's: net.ErrClosed after
// Close, deadlines as they are, and the end of the whole connection (closed
// by the peer, idle timeout, reset) as io.ErrUnexpectedEOF, never EOF.
func (c *quicStreamConn) mapErr(err error) error {
	var ne net.Error
	var se *quic.StreamError
	switch {
	case c.closed.Load():
		return fmt.Errorf("%w: %w", net.ErrClosed, err)
	case errors.As(err, &ne) && ne.Timeout() && !isQUICConnErr(err):
		return err // a deadline, as for any net.Conn
	case errors.As(err, &se):
		return err // this stream alone was reset
	}
	return fmt.Errorf("mesh connection closed: %w: %w", io.ErrUnexpectedEOF, err)
}

// isQUICConnErr reports whether err ended the whole QUIC connection.
func isQUICConnErr(err error) bool {
	var idle *quic.IdleTimeoutError
	var hs *quic.HandshakeTimeoutError
	return errors.As(err, &idle) || errors.As(err, &hs)
}

// CloseWrite half-closes the stream: the peer reads EOF, we can still read.
func (c *quicStreamConn) CloseWrite() error {
	return c.Stream.Close()
}

// Close closes both directions: FIN after the data already written, and
// STOP_SENDING for the peer's. A Read blocked in another goroutine returns.
func (c *quicStreamConn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	err := c.Stream.Close()
	c.Stream.CancelRead(quicStreamCanceled)
	return err
}

// SetReadDeadline sets the read deadline unless the conn is closed.
func (c *quicStreamConn) SetReadDeadline(t time.Time) error {
	if c.closed.Load() {
		return net.ErrClosed
	}
	return c.Stream.SetReadDeadline(t)
}

// SetDeadline sets both deadlines; see SetReadDeadline.
func (c *quicStreamConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Stream.SetWriteDeadline(t)
}
