package h2srv

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/flowwin"
)

// One stream: its request body (filled by the read loop, read by the
// handler), its send window, and the handler's goroutine.

// errStreamGone: the stream was reset or the connection closed.
var errStreamGone = errors.New("h2srv: stream closed")

// errTimeout is a read or write that passed its deadline; it reports
// itself as a timeout (net.Error) as net/http's do.
type timeoutError struct{}

func (timeoutError) Error() string   { return "h2srv: i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

var errTimeout error = timeoutError{}

type stream struct {
	sc     *conn
	id     uint32
	req    *http.Request
	ctx    context.Context
	cancel context.CancelFunc

	// Guarded by sc.mu.
	//
	// readCh and winCh (cap 1) wake the body's reader and the response's
	// writer: two goroutines may wait at once (a proxy reads the request
	// body on one while the handler writes), each for its own condition.
	// Each is made by its first waiter (waitCh): most streams never wait.
	readCh, winCh chan struct{}

	body       chunkBuf
	bodyErr    error          // io.EOF at END_STREAM; else why the body ends
	recvDone   bool           // END_STREAM received (or reset)
	recvWin    int64          // what the client may still send on this stream
	win        flowwin.Window // its size; its growth is given back when the body's buffer is let go
	credit     int            // consumed, not yet returned to the client
	declLen    int64          // Content-Length, -1: none
	got        int64
	sendWin    int64
	waitingWin bool
	removed    bool
	bodyClosed bool  // the handler closed the body: data is credited back, not kept
	err        error // reset or connection closed: writes fail with it
	trailer    http.Header
	gotTrailer bool

	readDeadline, writeDeadline time.Time // the handler's only
	needsContinue               bool

	// answered: the handler returned and its response's end is being
	// written; the stream needs nothing more from the read loop but, if
	// the client's window is short, WINDOW_UPDATEs (which take the read
	// loop over: inline.go, where it is not a stream beside another).
	answered atomic.Bool
	inlined  bool // its handler runs on the read loop's goroutine (runQueue)
	// headerOut: the response's header block was written (under wmu):
	// the body's first read sends no 100 Continue after it.
	headerOut bool

	reqBody requestBody // req.Body of a request with one: in the stream's allocation
	ender   Ender       // told when ctx ends (WatchEnd); under sc.mu
	vals    [4]string   // the request header's values, if they fit (newRequest)
}

// newStream sets up st (new, but for the header values newRequest may
// have kept in its vals).
func newStream(st *stream, sc *conn, id uint32, req *http.Request, bodyOpen, needsContinue bool) *stream {
	st.sc, st.id, st.req = sc, id, req
	st.recvWin, st.declLen = flowwin.Initial, -1
	st.ctx, st.cancel = context.WithCancel(sc.opts.Context)
	sc.mu.Lock()
	st.sendWin = int64(sc.peerWin)
	sc.mu.Unlock()
	req.RemoteAddr = sc.remote
	if bodyOpen {
		st.declLen = req.ContentLength
		st.reqBody.st = st
		req.Body = &st.reqBody
		st.trailer = req.Trailer
		st.needsContinue = needsContinue
	} else {
		st.recvDone, st.bodyErr = true, io.EOF
	}
	*req = *req.WithContext(st.ctx)
	return st
}

// wake signals the stream's waiters (body reader, window waiter); each
// checks its own condition again. Called with sc.mu held: a waiter makes
// its channel under it (waitCh).
func (st *stream) wake() {
	select {
	case st.readCh <- struct{}{}:
	default:
	}
	select {
	case st.winCh <- struct{}{}:
	default:
	}
}

// abortLocked fails the stream's body and writes and cancels its
// context.
func (st *stream) abortLocked(err error) {
	if st.err == nil {
		st.err = err
	}
	if !st.recvDone {
		st.recvDone = true
		st.bodyErr = err
	}
	st.cancelLocked()
	st.wake()
}

// cancelLocked cancels the stream's context and tells its Ender (under
// sc.mu).
func (st *stream) cancelLocked() {
	st.cancel()
	if e := st.ender; e != nil {
		st.ender = nil
		go e.ContextEnded() // as context.AfterFunc's: the caller holds sc.mu
	}
}

// endBodyLocked records the end of the request body.
func (st *stream) endBodyLocked(err error) {
	st.recvDone = true
	if st.bodyErr == nil {
		st.bodyErr = err
	}
}

// trailersLocked takes a second HEADERS block: the request's trailers.
func (st *stream) trailersLocked(f *http2.MetaHeadersFrame, canon func(string) string) error {
	if st.recvDone {
		// Forgotten here, so further HEADERS on it are a connection
		// error: one RST_STREAM, not one goroutine per frame.
		st.abortLocked(http2.StreamError{StreamID: st.id, Code: http2.ErrCodeStreamClosed})
		st.sc.removeLocked(st)
		go st.sc.writeFrames(func() error { return st.sc.fr.WriteRSTStream(st.id, http2.ErrCodeStreamClosed) })
		return nil
	}
	if st.gotTrailer {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	st.gotTrailer = true
	if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
		st.abortLocked(http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol})
		st.sc.removeLocked(st)
		go st.sc.writeFrames(func() error { return st.sc.fr.WriteRSTStream(st.id, http2.ErrCodeProtocol) })
		return nil
	}
	if st.trailer != nil {
		for _, hf := range f.RegularFields() {
			k := canon(hf.Name)
			if !httpguts.ValidTrailerHeader(k) {
				st.abortLocked(http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol})
				st.sc.removeLocked(st)
				go st.sc.writeFrames(func() error { return st.sc.fr.WriteRSTStream(st.id, http2.ErrCodeProtocol) })
				return nil
			}
			st.trailer[k] = append(st.trailer[k], hf.Value)
		}
	}
	if st.declLen >= 0 && st.got != st.declLen {
		st.abortLocked(http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol})
		st.sc.removeLocked(st)
		go st.sc.writeFrames(func() error { return st.sc.fr.WriteRSTStream(st.id, http2.ErrCodeProtocol) })
		return nil
	}
	st.endBodyLocked(io.EOF)
	st.wake()
	return nil
}

// run runs the handler and finishes the response (unless the handler
// detached it: Detach, async.go).
func (st *stream) run(h http.Handler) {
	sc := st.sc
	rw := getWriter(st)
	defer func() {
		e := recover()
		if e != nil && e != http.ErrAbortHandler {
			sc.s.logf("h2srv: handler panic", "remote", sc.remote, "panic", e)
		}
		if rw.detached {
			rw.async.handlerReturned(e != nil)
			return
		}
		if e == nil {
			st.answered.Store(true) // before the response's end can reach the client
			rw.finish()
		}
		st.close(rw, e != nil)
	}()
	h.ServeHTTP(rw, st.req)
}

// close ends the stream once its response has ended (or not: failed, a
// panic), resetting it if the response did not end or the client still
// sends its body, and gives rw back.
func (st *stream) close(rw *responseWriter, panicked bool) {
	sc := st.sc
	failed := !panicked && rw.err != nil // the response did not end (a write timed out, or failed)
	sc.mu.Lock()
	reset := panicked || failed || (!st.removed && !st.recvDone)
	wasRemoved := st.removed
	st.cancelLocked()
	sc.mu.Unlock()
	if reset && !wasRemoved {
		// A panic: the response is cut (RST_STREAM INTERNAL_ERROR).
		// A body the handler did not wait for: NO_ERROR asks the
		// client to stop sending it (RFC 9113 §8.1).
		code := http2.ErrCodeNo
		if panicked || failed {
			code = http2.ErrCodeInternal
		}
		sc.resetStream(st.id, code)
	}
	sc.mu.Lock()
	sc.removeLocked(st)
	sc.handlers--
	sc.mu.Unlock()
	putWriter(rw)
}

// requestBody is the handler's view of the request body.
type requestBody struct {
	st *stream
}

func (b *requestBody) Read(p []byte) (int, error) {
	st := b.st
	sc := st.sc
	sc.mu.Lock()
	closed := st.bodyClosed
	sc.mu.Unlock()
	if closed {
		return 0, errBodyClosed
	}
	if st.needsContinue {
		st.needsContinue = false
		sc.writeFrames(func() error {
			sc.mu.Lock()
			gone := st.err != nil
			sc.mu.Unlock()
			if st.headerOut || gone {
				// The final response went first (an answer before the
				// body was taken), or the stream ended: a 100 after
				// it would be a protocol error.
				return nil
			}
			return sc.writeHeaderBlock(st.id, false, func(enc hpackEncoder) { encodeField(enc, ":status", "100") })
		})
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		sc.mu.Lock()
		if st.bodyClosed { // closed by another goroutine while this Read waited
			sc.mu.Unlock()
			return 0, errBodyClosed
		}
		if st.body.len() > 0 && len(p) > 0 {
			n := st.body.read(p)
			sc.consumedLocked(n)
			if !st.recvDone && !st.removed {
				st.credit += n
				extra := st.win.Consumed(n, st.body.len() == 0, flowwin.Process)
				if int64(st.credit) >= st.win.Size()/4 || extra > 0 {
					c := int64(st.credit) + extra
					st.credit = 0
					st.recvWin += c
					id := st.id
					sc.mu.Unlock()
					sc.writeFrames(func() error { return sc.fr.WriteWindowUpdate(id, uint32(c)) })
					return n, nil
				}
			}
			// The end already came and nothing is left: say so now, so
			// that a proxy sends the last bytes with the end (h2up: one
			// DATA frame with END_STREAM).
			var err error
			if st.recvDone && st.body.len() == 0 {
				st.win.Release() // the body is done: no next Read need come
				if st.bodyErr == io.EOF {
					err = io.EOF
				}
			}
			sc.mu.Unlock()
			return n, err
		}
		if st.recvDone {
			err := st.bodyErr
			st.win.Release() // the body is done
			sc.mu.Unlock()
			if err != io.EOF {
				err = errStreamGone
			}
			return 0, err
		}
		if len(p) == 0 {
			sc.mu.Unlock()
			return 0, nil
		}
		dl := st.readDeadline
		wakeCh := waitCh(&st.readCh)
		sc.mu.Unlock()
		sc.waitingOnReader() // the body comes through the read loop
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, errTimeout
			}
			if timer == nil {
				timer = time.NewTimer(d)
			} else {
				timer.Reset(d)
			}
			select {
			case <-wakeCh:
			case <-timer.C:
			}
			continue
		}
		<-wakeCh
	}
}

// ReadReady reports whether a Read returns without waiting: bytes are
// buffered, or the body has ended (h2up then sends a unary call's body
// on the handler's goroutine, with its HEADERS).
func (b *requestBody) ReadReady() bool {
	st := b.st
	st.sc.mu.Lock()
	defer st.sc.mu.Unlock()
	if st.bodyClosed {
		return true
	}
	if st.needsContinue {
		return false // the read writes 100 Continue and waits
	}
	return st.body.len() > 0 || st.recvDone
}

// Close: the handler reads no more; the rest is discarded, and a stream
// the client still sends on is reset when the handler returns.
func (b *requestBody) Close() error {
	sc := b.st.sc
	sc.mu.Lock()
	b.st.bodyClosed = true
	if n := b.st.body.discard(); n > 0 {
		sc.consumedLocked(n)
	}
	b.st.win.Release()
	b.st.wake() // a Read waiting on another goroutine returns
	sc.mu.Unlock()
	return nil
}

var errBodyClosed = errors.New("h2srv: read on closed body")

// waitCh returns *ch, made if nil, for a waiter about to let sc.mu go
// (held): any change after that comes with a wake, which finds it.
func waitCh(ch *chan struct{}) chan struct{} {
	if *ch == nil {
		*ch = make(chan struct{}, 1)
	}
	return *ch
}

// chunkBuf is a body buffer of pooled 16 KiB chunks.
type chunkBuf struct {
	chunks []*[chunkSize]byte
	first  [1]*[chunkSize]byte // chunks' storage while it holds one (most bodies)
	r, w   int                 // read offset in chunks[0], write offset in the last chunk
	n      int
}

const chunkSize = 16 << 10

var chunkPool = sync.Pool{New: func() any { return new([chunkSize]byte) }}

func (b *chunkBuf) len() int { return b.n }

func (b *chunkBuf) write(p []byte) {
	for len(p) > 0 {
		if len(b.chunks) == 0 || b.w == chunkSize {
			if b.chunks == nil {
				b.chunks = b.first[:0]
			}
			b.chunks = append(b.chunks, chunkPool.Get().(*[chunkSize]byte))
			b.w = 0
		}
		c := copy(b.chunks[len(b.chunks)-1][b.w:], p)
		b.w += c
		b.n += c
		p = p[c:]
	}
}

func (b *chunkBuf) read(p []byte) int {
	n := 0
	for len(p) > 0 && b.n > 0 {
		end := chunkSize
		if len(b.chunks) == 1 {
			end = b.w
		}
		c := copy(p, b.chunks[0][b.r:end])
		b.r += c
		b.n -= c
		n += c
		p = p[c:]
		if b.r == end {
			chunkPool.Put(b.chunks[0])
			b.chunks[0] = nil // the pool's now
			if len(b.chunks) == 1 {
				b.chunks = b.chunks[:0]
				b.r, b.w = 0, 0
			} else {
				b.chunks = b.chunks[1:]
				b.r = 0
			}
		}
	}
	return n
}

// discard drops what is buffered and returns how much that was.
func (b *chunkBuf) discard() int {
	n := b.n
	for _, c := range b.chunks {
		chunkPool.Put(c)
	}
	clear(b.chunks)
	b.chunks, b.r, b.w, b.n = nil, 0, 0, 0
	return n
}
