package agent

import (
	"errors"
	"io"
	"sync"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// The request body of a proxied request, as lbTransport.roundTrip hands it
// to its attempts: kept for a retry (replayBody), or shielded from the
// transport's Close (noCloseBody).

// noCloseBody ignores Close; see roundTrip.
type noCloseBody struct{ io.Reader }

func (noCloseBody) Close() error { return nil }

// ReadReady reports whether a Read returns without waiting (h2up).
func (b noCloseBody) ReadReady() bool { return httpproxy.ReadReady(b.Reader) }

// errBodyGone: an attempt read a request body that a later attempt took
// over, or that no longer fits the retry buffer.
var errBodyGone = errors.New("request body taken over by a retry")

// replayBody keeps the first limit bytes of a request body as attempts
// read it, so a retry can send the body again from its start. Each
// attempt reads through its own reader (attempt); a new attempt ends the
// previous one's reads. Once more than limit bytes were read the body
// is no longer replayable: the current attempt reads on, no retry
// follows.
type replayBody struct {
	src   io.Reader
	limit int

	mu       sync.Mutex // guards the following
	cond     sync.Cond  // signalled when a read of src ends
	buf      []byte     // src's bytes so far (nil once over); small at first
	consumed int        // bytes read from src
	over     bool       // more than limit read: buf dropped
	eof      bool
	err      error // src's read error
	gen      int   // the current attempt
	reading  bool  // a read of src is in progress
	// want is the body's declared length (its Content-Length; 0: not
	// known), at most limit: buf's first growth past small goes to it at
	// once, one allocation of the body's size where append's doublings
	// allocated about twice it in several (a 64 KiB upload: 128 KiB;
	// BenchmarkL7Upload). A client that declares more than it sends
	// holds what one that sent it would: at most limit, once past small.
	want int
	// cur is the current attempt's reader; pooled: buf is replayBufs'.
	cur    *replayReader
	pooled bool

	// Kept in the body's own allocation: the first attempt's reader (most
	// requests make one) and the first bytes (a unary gRPC call's message).
	first replayReader
	small [64]byte
}

func newReplayBody(src io.Reader, limit int) *replayBody {
	rb := &replayBody{src: src, limit: limit}
	rb.cond.L = &rb.mu
	rb.buf = rb.small[:0]
	return rb
}

// attempt returns the body for the next attempt, from its start.
func (rb *replayBody) attempt() io.ReadCloser {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	rb.gen++
	rb.cond.Broadcast()
	if rb.gen == 1 {
		rb.first = replayReader{rb: rb, gen: 1}
		rb.cur = &rb.first
	} else {
		rb.cur = &replayReader{rb: rb, gen: rb.gen}
	}
	return rb.cur
}

// replayBufs and replayBufsSmall recycle the buffers of bodies whose
// declared length is over replayPoolMin: replayBufSize bytes each
// (*[replayBufSize]byte), or replaySmallSize for bodies up to that: a
// 64 KiB upload allocated its length per request (issue 14).
var replayBufs, replayBufsSmall sync.Pool

const (
	replayBufSize   = retryBodyLimit
	replaySmallSize = 16 << 10
	replayPoolMin   = 2 << 10
)

// wantBuf is buf's first growth past small: room for want bytes.
func (rb *replayBody) wantBuf() []byte {
	switch {
	case rb.want <= replayPoolMin || rb.want > replayBufSize:
		return make([]byte, 0, rb.want)
	case rb.want <= replaySmallSize:
		rb.pooled = true
		if v, ok := replayBufsSmall.Get().(*[replaySmallSize]byte); ok {
			return v[:0]
		}
		return new([replaySmallSize]byte)[:0]
	}
	rb.pooled = true
	if v, ok := replayBufs.Get().(*[replayBufSize]byte); ok {
		return v[:0]
	}
	return new([replayBufSize]byte)[:0]
}

// release gives a pooled buf back once no attempt can read from it any
// more: the body was read to its end, no read of it runs, and the current
// attempt has read all of it (its next Read returns io.EOF with or
// without buf; earlier attempts' fail with errBodyGone). The attempt
// loop's end calls it (attempts.ended): no attempt follows. A body still
// read then (its rest sent full duplex) keeps its buffer for the GC.
func (rb *replayBody) release() {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	if !rb.pooled || !rb.eof || rb.reading || rb.cur == nil || rb.cur.pos != rb.consumed {
		return
	}
	switch buf := rb.buf; cap(buf) {
	case replayBufSize:
		replayBufs.Put((*[replayBufSize]byte)(buf[:replayBufSize]))
	case replaySmallSize:
		replayBufsSmall.Put((*[replaySmallSize]byte)(buf[:replaySmallSize]))
	default:
		return // grown past it (a body longer than it said): not a pool's
	}
	rb.buf, rb.pooled, rb.over = nil, false, true
}

// replayable reports whether another attempt can send the whole body.
func (rb *replayBody) replayable() bool {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return !rb.over && rb.err == nil
}

type replayReader struct {
	rb       *replayBody
	gen, pos int
}

func (r *replayReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	rb := r.rb
	rb.mu.Lock()
	defer rb.mu.Unlock()
	for {
		switch {
		case r.gen != rb.gen:
			return 0, errBodyGone
		case r.pos < len(rb.buf):
			n := copy(p, rb.buf[r.pos:])
			r.pos += n
			return n, nil
		case r.pos < rb.consumed:
			return 0, errBodyGone // past the buffer: these bytes were not kept
		case rb.eof:
			return 0, io.EOF
		case rb.err != nil:
			return 0, rb.err
		case rb.reading:
			rb.cond.Wait() // an earlier attempt's read: its bytes are kept for this one
			continue
		}
		rb.reading = true
		n, err := rb.readSrc(p)
		rb.reading = false
		rb.cond.Broadcast()
		if n > 0 {
			if !rb.over && len(rb.buf)+n <= rb.limit {
				if len(rb.buf)+n > cap(rb.buf) && rb.want >= len(rb.buf)+n {
					rb.buf = append(rb.wantBuf(), rb.buf...)
				}
				rb.buf = append(rb.buf, p[:n]...)
			} else {
				rb.over, rb.buf = true, nil
			}
			rb.consumed += n
		}
		if err == io.EOF {
			rb.eof = true
		} else if err != nil {
			rb.err = err
		}
		if r.gen != rb.gen {
			return 0, errBodyGone
		}
		r.pos += n
		// (n, io.EOF) passes as it came: h2up then sends the last bytes
		// with END_STREAM (h2srv reads a body's end with its last bytes).
		return n, err
	}
}

// readSrc reads src with rb.mu released, held again as it returns, also
// when the read panics (Read's deferred unlock then finds it held: else
// "unlock of unlocked mutex", a fatal error that no recover of the
// reader's goroutine stops, the pool's sendRest's included); such a read
// ends the body for every attempt (errBodyGone), not one left waiting for
// a read that never ends.
func (rb *replayBody) readSrc(p []byte) (n int, err error) {
	rb.mu.Unlock()
	ok := false
	defer func() {
		rb.mu.Lock()
		if !ok {
			rb.reading, rb.err = false, errBodyGone
			rb.cond.Broadcast()
		}
	}()
	n, err = rb.src.Read(p)
	ok = true
	return n, err
}

// ReadReady reports whether a Read returns without waiting (h2up): from
// the kept bytes, with an outcome known, or from src if it is ready and
// no other attempt reads it.
func (r *replayReader) ReadReady() bool {
	rb := r.rb
	rb.mu.Lock()
	if r.gen != rb.gen || r.pos < rb.consumed || rb.eof || rb.err != nil {
		rb.mu.Unlock()
		return true
	}
	reading := rb.reading
	rb.mu.Unlock()
	return !reading && httpproxy.ReadReady(rb.src)
}

// Close does nothing: the server closes the client's body.
func (r *replayReader) Close() error { return nil }
