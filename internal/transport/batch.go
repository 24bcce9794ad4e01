package transport

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"net"
	"sync"
)

// Over the mTLS mesh port every Write on the tls.Conn becomes at least one
// TLS record, and crypto/tls writes each record to the socket on its own: a
// yamux data frame (a 12-byte header write, then the body, 32 KiB from a
// relay's io.Copy) costs three write syscalls, one of them for a 34-byte
// record. recordBatcher sits under the tls.Conn and tlsFrameConn over it: the
// records of a data frame's header and body are gathered and written to the
// socket in one Write.

// recordBatcher is the net.Conn under a mesh tls.Conn. While holding, the
// records crypto/tls writes are appended to a buffer that flush writes in
// one call; otherwise they go straight to the socket. Reads go through a
// readBufSize buffer: crypto/tls reads a record at a time (16 KiB at most),
// so a bulk stream would otherwise cost a read syscall per record.
type recordBatcher struct {
	net.Conn
	rd      *bufio.Reader
	mu      sync.Mutex
	holding bool
	buf     []byte
}

func newRecordBatcher(c net.Conn) *recordBatcher {
	return &recordBatcher{Conn: c, rd: bufio.NewReaderSize(c, readBufSize)}
}

// Read reads through the buffer. Only the tls.Conn reads, one Read at a
// time.
func (b *recordBatcher) Read(p []byte) (int, error) {
	return b.rd.Read(p)
}

// batchSize: once this much is gathered it is written at once, also in the
// middle of a frame, so a large body (up to copyBufLarge from a relay)
// leaves in writes of about this size and the buffer stays under batchSize
// plus one record. readBufSize is the read buffer: several records per
// read syscall.
const (
	batchSize   = 128 << 10
	readBufSize = 64 << 10
)

func (b *recordBatcher) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.holding {
		return b.Conn.Write(p)
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) >= batchSize {
		_, err := b.Conn.Write(b.buf)
		b.buf = b.buf[:0]
		if err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (b *recordBatcher) hold() {
	b.mu.Lock()
	b.holding = true
	b.mu.Unlock()
}

// flush writes what was gathered and stops holding. A write error is
// returned here, to the yamux write that ends the batch.
func (b *recordBatcher) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.holding = false
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

// tlsFrameConn is the conn a yamux session runs on over TLS. yamux writes
// each frame from its one send goroutine as a header Write, then, for a data
// frame with a body, a body Write. A data header with a body is held (its
// record buffered) until the body's Write, whose records join it; every
// other Write is flushed before it returns. Only yamux's send goroutine
// writes, so bodyNext needs no lock.
type tlsFrameConn struct {
	*tls.Conn
	batch    *recordBatcher
	bodyNext bool      // the last Write was a held data header: this one is its body
	guard    pingGuard // the pings the peer is owed (pingguard.go)
}

// Read reads the session's bytes, and fails once the peer asked for too
// many pings unanswered (pingGuard).
func (c *tlsFrameConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if gerr := c.guard.read(p[:n]); gerr != nil {
		return 0, gerr
	}
	return n, err
}

// yamux frame header: version, type, flags (2), stream ID (4), length (4).
const (
	yamuxHeaderLen = 12
	yamuxTypeData  = 0
)

func (c *tlsFrameConn) Write(p []byte) (int, error) {
	if !c.bodyNext {
		c.guard.wroteHeader(p)
	}
	header := !c.bodyNext && isDataHeader(p)
	c.bodyNext = false
	c.batch.hold()
	n, err := c.Conn.Write(p)
	if err == nil && header {
		c.bodyNext = true
		return n, nil // the body follows
	}
	if ferr := c.batch.flush(); err == nil && ferr != nil {
		return 0, ferr
	}
	return n, err
}

// plainFrameConn is the conn a yamux session runs on without TLS (insecure
// mode). yamux writes a data frame as a 12-byte header Write and a body
// Write: two syscalls, and with TCP_NODELAY two segments, the first of 12
// bytes. The header of a data frame with a body is held and leaves with its
// body in one writev (net.Buffers); every other Write goes out at once. The
// bytes and their order on the wire are unchanged. Only yamux's send
// goroutine writes, so the held header needs no lock.
type plainFrameConn struct {
	net.Conn
	hdr  [yamuxHeaderLen]byte
	held bool // hdr holds a data header: the next Write is its body
	// first is the session's first byte, read by the server to tell a
	// direct stream from a session; replay says it is still to be read.
	first  byte
	replay bool
	guard  pingGuard // the pings the peer is owed (pingguard.go)
}

// Read reads the session's bytes, and fails once the peer asked for too
// many pings unanswered (pingGuard).
func (c *plainFrameConn) Read(p []byte) (int, error) {
	var n int
	var err error
	if c.replay && len(p) > 0 {
		c.replay = false
		p[0] = c.first
		n = 1
	} else {
		n, err = c.Conn.Read(p)
	}
	if gerr := c.guard.read(p[:n]); gerr != nil {
		return 0, gerr
	}
	return n, err
}

func (c *plainFrameConn) Write(p []byte) (int, error) {
	if c.held {
		c.held = false
		bufs := net.Buffers{c.hdr[:], p}
		var n int64
		var err error
		if bw, ok := c.Conn.(BuffersWriter); ok {
			n, err = bw.WriteBuffers(bufs)
		} else {
			n, err = bufs.WriteTo(c.Conn)
		}
		return int(max(n-yamuxHeaderLen, 0)), err
	}
	c.guard.wroteHeader(p)
	if isDataHeader(p) {
		copy(c.hdr[:], p)
		c.held = true
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// BuffersWriter is implemented by a Network's conns that wrap a socket (to
// count its bytes, say) and can still hand several buffers to one writev
// (net.Buffers.WriteTo on the socket); net.Buffers.WriteTo on the wrapper
// would write them one by one.
type BuffersWriter interface {
	WriteBuffers(net.Buffers) (int64, error)
}

// isDataHeader reports whether p is a yamux data frame header announcing a
// body.
func isDataHeader(p []byte) bool {
	return len(p) == yamuxHeaderLen && p[1] == yamuxTypeData && binary.BigEndian.Uint32(p[8:]) > 0
}
