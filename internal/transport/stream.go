package transport

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/hashicorp/yamux"
)

// Receive windows of yamux mesh streams: how many bytes a peer may send on
// one stream ahead of what the local reader has taken. yamux buffers up to
// that much per stream in memory whenever the reader (the relay to a
// workload) is slower than the link, so the window is the agent's memory
// bound per busy stream as well as its throughput bound per stream
// (window/RTT). QUIC streams keep maxStreamWindow: quic-go grows their
// window from 512 KiB only as far as the measured RTT needs.
const (
	// DefaultStreamWindow: 1 MiB keeps a bulk stream through two agents
	// at 27 MB peak RSS (88 MB with 16 MiB) at 0.77-0.98x its loopback
	// speed, and carries 400 Mbit/s at 20 ms RTT (BENCHMARKS.md, "Issue
	// 14: memory").
	DefaultStreamWindow = 1 << 20
	// MinStreamWindow is yamux's initial (and smallest) stream window.
	MinStreamWindow = 256 << 10
	// MaxStreamWindow is the largest window accepted: a long fat link
	// (e.g. 1 Gbit/s at 100 ms) may want it, at up to this much memory
	// per busy stream.
	MaxStreamWindow = 16 << 20

	// maxStreamWindow is the QUIC per-stream receive window cap.
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

// checkStreamWindow returns the stream window w stands for: the default for
// 0, an error outside [MinStreamWindow, MaxStreamWindow].
func checkStreamWindow(w int) (int, error) {
	switch {
	case w == 0:
		return DefaultStreamWindow, nil
	case w < MinStreamWindow || w > MaxStreamWindow:
		return 0, fmt.Errorf("stream window %d bytes: want %d (256 KiB) to %d (16 MiB)", w, MinStreamWindow, MaxStreamWindow)
	}
	return w, nil
}

// yamuxConfig is the session configuration of both ends of the mesh port,
// with a receive window of window bytes per stream (checkStreamWindow).
func yamuxConfig(window int) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.MaxStreamWindowSize = uint32(window)
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
	cause  *atomic.Pointer[error]   // why the session was cut (peerauth.go), or nil
	refuse *refusals                // its session's drains, on the server side (drainRefused); nil on the client side
	client *Client                  // that opened it, for Retired; nil on the server side
	reg    weak.Pointer[streamConn] // its key in openStreams
}

// Retired reports whether the client retired the stream's session
// (Client.Retire: a better path to the peer is in use). The stream still
// works; a pool should not reuse it for another request, so that the
// retired session drains and its path is left.
func (c *streamConn) Retired() bool {
	return c.client != nil && c.client.isRetired(c.Stream.Session())
}

// pastDeadline is any time in the past; it fails blocked reads at once.
var pastDeadline = time.Unix(1, 0)

func newStreamConn(s *yamux.Stream) *streamConn {
	c := &streamConn{Stream: s}
	c.reg = weak.Make(c)
	openStreams.Lock()
	openStreams.m[c.reg] = struct{}{}
	openStreams.Unlock()
	return c
}

// openStreams are the process's open yamux streams, for ShrinkIdleStreams.
// Weak pointers: a stream its owner dropped without Close is no leak here.
var openStreams = struct {
	sync.Mutex
	m map[weak.Pointer[streamConn]]struct{}
}{m: make(map[weak.Pointer[streamConn]]struct{})}

// ShrinkIdleStreams drops the receive buffer of every open mesh stream
// over TCP that has no unread bytes. yamux grows a stream's buffer to
// hold what arrives ahead of the reader (up to twice the stream window
// after a bulk burst) and keeps it for the stream's life, so an open but
// idle stream after a download holds megabytes; the next frame allocates
// a buffer of its own size again. For idle moments (memtrim's Release):
// on a busy stream it costs a reallocation per frame.
func ShrinkIdleStreams() {
	openStreams.Lock()
	live := make([]*streamConn, 0, len(openStreams.m))
	for w := range openStreams.m {
		if c := w.Value(); c != nil {
			live = append(live, c)
		} else {
			delete(openStreams.m, w)
		}
	}
	openStreams.Unlock()
	for _, c := range live {
		c.Stream.Shrink()
	}
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
		if cause := causeOf(c.cause); cause != nil {
			err = fmt.Errorf("mesh session cut: %w: %w", cause, io.ErrUnexpectedEOF)
		} else {
			err = fmt.Errorf("mesh session closed: %w", io.ErrUnexpectedEOF)
		}
	}
	return n, err
}

// Write writes to the stream. It returns net.ErrClosed after Close.
func (c *streamConn) Write(p []byte) (int, error) {
	n, err := c.Stream.Write(p)
	if err != nil && (c.closed.Load() || errors.Is(err, yamux.ErrStreamClosed)) {
		err = fmt.Errorf("%w: %w", net.ErrClosed, err)
	}
	if err != nil && !c.closed.Load() {
		if cause := causeOf(c.cause); cause != nil {
			err = fmt.Errorf("mesh session cut: %w: %w", cause, err)
		}
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
	openStreams.Lock()
	delete(openStreams.m, c.reg)
	openStreams.Unlock()
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

// Copies into and out of a stream (the relays reach them through io.Copy)
// start with a copyBufSmall buffer, io.Copy's size, and move to a pooled
// copyBufLarge one while reads fill the buffer. A bulk flow then crosses
// the mesh in frames of up to copyBufLarge, so yamux's costs per frame (a
// hand-off to its send goroutine and back, socket writes, waking the
// peer's reader, a socket write on the far side) are paid up to eight
// times less often; an idle or interactive stream holds only the small
// buffer, as before.
const (
	copyBufSmall = 32 << 10
	copyBufLarge = 256 << 10
)

var largeCopyBufs = sync.Pool{New: func() any {
	b := make([]byte, copyBufLarge)
	return &b
}}

// ReadFrom copies r into the stream until r ends; io.Copy(stream, r) and
// (*net.TCPConn).WriteTo(stream) call it.
func (c *streamConn) ReadFrom(r io.Reader) (int64, error) {
	return adaptiveCopy(c, r.Read)
}

// WriteTo copies the stream into w until the peer half-closes it;
// io.Copy(w, stream) calls it.
func (c *streamConn) WriteTo(w io.Writer) (int64, error) {
	return adaptiveCopy(w, c.Read)
}

// adaptiveCopy is io.Copy(dst, reader) with the buffer that grows for bulk
// flows (see copyBufLarge): a read that fills the small buffer moves the
// copy to a large one, a read that would have fit the small one moves it
// back and returns the large one to the pool.
func adaptiveCopy(dst io.Writer, read func([]byte) (int, error)) (written int64, err error) {
	small := make([]byte, copyBufSmall)
	buf := small
	var large *[]byte
	defer func() {
		if large != nil {
			largeCopyBufs.Put(large)
		}
	}()
	for {
		n, rerr := read(buf)
		if n > 0 {
			m, werr := dst.Write(buf[:n])
			if m < 0 || m > n {
				m, werr = 0, errors.New("invalid write result")
			}
			written += int64(m)
			if werr != nil {
				return written, werr
			}
			if m != n {
				return written, io.ErrShortWrite
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return written, nil
			}
			return written, rerr
		}
		switch {
		case large == nil && n == len(buf):
			large = largeCopyBufs.Get().(*[]byte)
			buf = *large
		case large != nil && n < copyBufSmall:
			largeCopyBufs.Put(large)
			large, buf = nil, small
		}
	}
}
