package h2srv

// The read loop's bytes: read inside one RawConn.Read for the
// connection's life, each read a bare read(2) (issue 14). A read that
// finds the socket empty still comes before every wait: serveRaw says
// why.

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/rawsys"
)

// maxReadFrame is the largest frame the Framer reads (our
// SETTINGS_MAX_FRAME_SIZE, left at its initial value).
const maxReadFrame = 16384

// inbufSize holds a frame of maxReadFrame and its header with room to
// spare, so that a read takes more than one frame.
const inbufSize = 32 << 10

// errIncomplete: the Framer asked inbuf for bytes that were not read yet
// while the read loop reads inside RawConn.Read (complete said it would
// not); the connection ends rather than wait in the wrong place.
var errIncomplete = errors.New("h2srv: frame read past the bytes received")

// inbuf holds the bytes read from the connection that the Framer has not
// taken yet; the Framer reads from it.
type inbuf struct {
	nc   net.Conn
	buf  []byte
	r, w int  // buf[r:w] is unread
	raw  bool // inside RawConn.Read: no read of nc (it would wait for the read lock held)
}

// Read gives the bytes held; with none, outside raw, one read of nc fills
// buf first (as a bufio.Reader: the Framer reads a frame header at a
// time).
func (b *inbuf) Read(p []byte) (int, error) {
	if b.r == b.w {
		if b.raw {
			return 0, errIncomplete
		}
		b.r, b.w = 0, 0
		n, err := b.nc.Read(b.buf)
		if n == 0 {
			return 0, err
		}
		b.w = n
	}
	n := copy(p, b.buf[b.r:b.w])
	b.r += n
	return n, nil
}

// complete: buf[r:w] begins with what one meta.ReadFrame takes without
// reading further: a frame; a frame longer than maxReadFrame up to its
// header (the Framer fails it there); a HEADERS frame without END_HEADERS
// with the CONTINUATION frames up to the one with END_HEADERS, or up to
// and including the first frame that is not one (the Framer fails the
// block once it has read that frame).
func (b *inbuf) complete() bool {
	p := b.buf[b.r:b.w]
	inBlock := false
	for {
		if len(p) < 9 {
			return false
		}
		n := int(p[0])<<16 | int(p[1])<<8 | int(p[2])
		typ, flags := http2.FrameType(p[3]), http2.Flags(p[4])
		if n > maxReadFrame {
			return true
		}
		if len(p) < 9+n {
			return false
		}
		switch {
		case inBlock && typ != http2.FrameContinuation,
			typ != http2.FrameHeaders && typ != http2.FrameContinuation,
			flags.Has(http2.FlagHeadersEndHeaders),
			!inBlock && typ == http2.FrameContinuation:
			return true
		}
		inBlock = true
		p = p[9+n:]
	}
}

// room makes space at buf's end for a read: the unread bytes move to the
// front once less than half of buf is left after them. False: buf is
// full of one incomplete unit (a header block of many CONTINUATION
// frames).
func (b *inbuf) room() bool {
	if b.r == b.w {
		b.r, b.w = 0, 0
	}
	if b.r > 0 && len(b.buf)-b.w < len(b.buf)/2 {
		b.w = copy(b.buf, b.buf[b.r:b.w])
		b.r = 0
	}
	return b.w < len(b.buf)
}

// rawConn is the connection's syscall.RawConn, or nil if it has no
// descriptor of its own (TLS, a mesh stream, a pipe).
func (sc *conn) rawConn() syscall.RawConn {
	c, ok := sc.nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// How loop ended.
const (
	loopEnded     = iota // the connection (failed if it must be)
	loopHandedOff        // a handler ran on this goroutine, and another one reads now
	loopHandBack         // readFor's: serve's goroutine reads again
)

// loop reads and processes frames; inline: it may run a handler on this
// goroutine (serve's; inline.go).
func (sc *conn) loop(rc syscall.RawConn, inline bool) int {
	for {
		if rc != nil {
			sc.inlineOn = inline
			fallback, err, t, back := sc.serveRaw(rc)
			if q := sc.rawQueue; len(q) > 0 {
				sc.rawQueue = nil
				if !sc.runQueue(rc, q) {
					return loopHandedOff
				}
				if sc.queue == nil {
					sc.queue = q[:0] // its storage again (this goroutine's read loop still)
				}
				continue
			}
			if t.st != nil {
				if !sc.runInline(rc, t) {
					return loopHandedOff
				}
				continue
			}
			if back {
				return loopHandBack
			}
			if !fallback {
				if err != nil {
					sc.fail(err)
				}
				return loopEnded
			}
		}
		// No descriptor, or a unit larger than the buffer: by blocking
		// reads.
		f, err := sc.meta.ReadFrame()
		if err := sc.handleFrame(f, err); err != nil {
			sc.fail(err)
			return loopEnded
		}
	}
}

// serveRaw reads and processes frames inside one rc.Read until the
// connection ends (err: why, nil for an orderly end) or a unit does not
// fit in the buffer (fallback: the caller reads it with blocking reads,
// then calls again).
//
// Why no wake-up is lost. RawRead (internal/poll) clears the descriptor's
// read-ready flag once (prepareRead), then calls the callback, and each
// time it returns false parks in waitRead until the poller marks the
// descriptor ready; a mark made while nobody waits stays set (runtime
// netpollblock consumes it without parking). The poller registers sockets
// edge-triggered. So the callback reads until a read finds the socket
// empty (EAGAIN) before it returns false: whatever arrives after that
// read brings an edge that sets the flag. A short read is not enough: it
// says no more data had come, not that nothing else had. A FIN or an RST
// that came behind the data, merged into the edge that woke the loop
// (netpollblock cleared the flag before the read), is seen by the next
// read only; waiting without it, the loop missed a client's close for
// good (its streams' handlers blocked in body reads, the connection and
// its goroutine kept).
//
// Frames are processed inside the callback, holding the descriptor's read
// lock: nothing here may close nc, whose Close waits for that lock's
// release (processFrame's closes run on goroutines of their own; the
// caller fails the connection after rc.Read returns). A close by another
// goroutine wakes waitRead with an error. Deadlines (the preface's) end
// waitRead as they end a Read.
//
// inline (t set): the read loop was about to wait, with one new stream
// whose handler it may run itself (inline.go); the caller runs it and
// calls again. back: readFor's goroutine was about to wait and serve's
// wants the read loop back.
func (sc *conn) serveRaw(rc syscall.RawConn) (fallback bool, err error, inline streamTask, back bool) {
	in := sc.in
	in.raw = true
	r := &sc.rawOut
	*r = rawResult{}
	if sc.rawFn == nil {
		sc.rawFn = sc.rawRead // one closure per connection: serveRaw runs again after each inline handler
	}
	rerr := rc.Read(sc.rawFn)
	in.raw = false
	fallback, inline, back, ferr, queued := r.fallback, r.inline, r.back, r.err, r.queued
	*r = rawResult{}
	if inline.st == nil {
		sc.dispatchPending() // not held across blocking reads or the end
	}
	if !queued {
		sc.dispatchQueue()
	}
	if ferr != nil {
		return false, ferr, streamTask{}, false
	}
	return fallback, rerr, inline, back
}

// rawResult is what rawRead leaves for serveRaw.
type rawResult struct {
	fallback, back bool
	queued         bool // sc.queue moved to sc.ready: the read loop runs it
	err            error
	inline         streamTask
}

// rawRead is serveRaw's callback for rc.Read.
func (sc *conn) rawRead(fd uintptr) bool {
	in, r := sc.in, &sc.rawOut
	for {
		for in.r < in.w && in.complete() {
			f, err := sc.meta.ReadFrame()
			if r.err = sc.handleFrame(f, err); r.err != nil {
				return true
			}
		}
		if len(sc.queue) > 0 && in.r == in.w && sc.inlineOn {
			sc.armControl()
			sc.takeQueue()
			return true
		}
		if sc.pending.st != nil && in.r == in.w && sc.inlineOn && sc.inlineReady() {
			// Every byte read is taken: run the handler now, not after a
			// read that finds the socket empty, which the next rc.Read
			// makes anyway (inline.go).
			sc.armControl()
			r.inline, sc.pending = sc.pending, streamTask{}
			return true
		}
		if !in.room() {
			sc.armControl()
			r.fallback = true
			return true
		}
		n, errno := rawsys.Read(fd, in.buf[in.w:])
		switch errno {
		case 0:
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			sc.armControl()
			if len(sc.queue) > 0 && sc.inlineOn {
				sc.takeQueue()
				return true
			}
			if sc.pending.st != nil {
				if sc.inlineOn && sc.inlineReady() {
					r.inline, sc.pending = sc.pending, streamTask{}
					return true
				}
				sc.dispatchPending()
			}
			if !sc.inlineOn && sc.wantBack.Load() {
				r.back = true
				return true
			}
			return false
		default:
			r.err = os.NewSyscallError("read", errno)
			return true
		}
		if n == 0 {
			r.err = io.EOF
			return true
		}
		in.w += n
	}
}

// handleFrame processes what meta.ReadFrame returned: nil, or the error
// that ends the connection (the caller fails it).
func (sc *conn) handleFrame(f http2.Frame, err error) error {
	if err != nil {
		var se http2.StreamError
		if errors.As(err, &se) {
			sc.resetStream(se.StreamID, se.Code)
			return nil
		}
		if errors.Is(err, http2.ErrFrameTooLarge) {
			err = http2.ConnectionError(http2.ErrCodeFrameSize)
		}
		return err
	}
	return sc.processFrame(f)
}
