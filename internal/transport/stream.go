package transport

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

const (
	// maxStreamWindow is the per-stream receive window. yamux's 256 KiB
	// default caps one stream at window/RTT; 16 MiB lets a single stream fill
	// a fast link.
	maxStreamWindow = 16 << 20
	// keepAliveInterval and connWriteTimeout bound how long a dead peer
	// goes unnoticed: a ping every 5s that must be answered within 10s.
	keepAliveInterval = 5 * time.Second
	connWriteTimeout  = 10 * time.Second
	// streamCloseTimeout is how long a stream may stay half-closed by us
	// before yamux resets it. It also bounds how long a peer that never
	// closes its side keeps a stream alive after we closed ours. yamux has no
	// explicit reset in v0.1.2, so this is the only way a stream we close is
	// ever reset.
	streamCloseTimeout = time.Minute
)

// yamuxConfig is the session configuration of both ends of the mesh port.
func yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.MaxStreamWindowSize = maxStreamWindow
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = keepAliveInterval
	cfg.ConnectionWriteTimeout = connWriteTimeout
	cfg.StreamCloseTimeout = streamCloseTimeout
	cfg.LogOutput = io.Discard
	return cfg
}

// streamConn adapts a yamux stream to the half-close contract proxy.Relay
// and callers expect: yamux's Close only sends FIN and leaves Read blocked,
// so here CloseWrite sends the FIN and Close also unblocks and ends reads.
type streamConn struct {
	*yamux.Stream
	closed atomic.Bool
}

// pastDeadline is any time in the past; it fails blocked reads at once.
var pastDeadline = time.Unix(1, 0)

func newStreamConn(s *yamux.Stream) *streamConn {
	return &streamConn{Stream: s}
}

// Read reads from the stream. It returns net.ErrClosed after Close, and
// io.ErrUnexpectedEOF when the session died under the stream (yamux
// reports that as a plain EOF, which would look like a clean end).
func (c *streamConn) Read(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	n, err := c.Stream.Read(p)
	switch {
	case err == nil:
	case c.closed.Load():
		err = net.ErrClosed
	case err == io.EOF && c.Stream.Session().IsClosed():
		err = fmt.Errorf("mesh session closed: %w", io.ErrUnexpectedEOF)
	}
	return n, err
}

// Write writes to the stream. It returns net.ErrClosed after Close.
func (c *streamConn) Write(p []byte) (int, error) {
	n, err := c.Stream.Write(p)
	if err != nil && (c.closed.Load() || errors.Is(err, yamux.ErrStreamClosed)) {
		err = fmt.Errorf("%w: %w", net.ErrClosed, err)
	}
	return n, err
}

// CloseWrite half-closes the stream: the peer reads EOF, we can still read.
func (c *streamConn) CloseWrite() error {
	return c.Stream.Close()
}

// Close closes both directions. A Read blocked in another goroutine returns.
func (c *streamConn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	err := c.Stream.Close()
	c.Stream.SetReadDeadline(pastDeadline)
	return err
}

// SetReadDeadline sets the read deadline unless the conn is closed (that
// would re-block a Read that Close just ended).
func (c *streamConn) SetReadDeadline(t time.Time) error {
	if c.closed.Load() {
		return net.ErrClosed
	}
	return c.Stream.SetReadDeadline(t)
}

// SetDeadline sets both deadlines; see SetReadDeadline.
func (c *streamConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.Stream.SetWriteDeadline(t)
}
