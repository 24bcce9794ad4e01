package h2up

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// The request body's side of a stream.

// recoverBody, deferred first by writeBody (a goroutine of the pool's),
// recovers a panic in the request body's Read (a bug of the caller's):
// the stream is reset, the request fails with ErrBodyPanicked and the
// panic goes to Config.OnPanic; the connection serves on.
func (s *stream) recoverBody() {
	if p := recover(); p != nil {
		s.reset(http2.ErrCodeCancel, fmt.Errorf("%w: %v", ErrBodyPanicked, p), true)
		s.c.p.panicked(p)
	}
}

// writeBody sends the request body within the send windows, then its end
// (trailers, or an empty DATA with END_STREAM). A body read error resets
// the stream and is the request's error. headers: the timer that flushes
// the HEADERS if the body has nothing yet (nil: flushed already); pre: a
// read sendReady made (its buffer is the one used here).
func (s *stream) writeBody(hasTrailer bool, headers *time.Timer, pre *pending) {
	defer s.recoverBody()
	c := s.c
	body := s.req.Body
	var bp *[]byte
	if pre != nil {
		bp = pre.bp
	} else {
		bp = bufPool.Get().(*[]byte)
	}
	defer bufPool.Put(bp)
	buf := *bp
	if headers != nil {
		defer headers.Stop()
	}
	for {
		var chunk []byte
		var rerr error
		if pre != nil {
			chunk, rerr = pre.data, pre.err
			pre = nil
		} else {
			var n int
			n, rerr = body.Read(buf)
			chunk = buf[:n]
		}
		if headers != nil {
			headers.Stop() // this write flushes them
		}
		n := len(chunk)
		// The body's last bytes came with its end and no trailers
		// follow: the last DATA frame carries END_STREAM (one frame and
		// one write fewer per gRPC call).
		endWithData := rerr == io.EOF && !hasTrailer
		for sent := 0; sent < n; {
			k, ok := s.awaitSend(n - sent)
			if !ok {
				return // reset, or the response ended first (abortSend)
			}
			part := chunk[sent : sent+k]
			last := endWithData && sent+k == n
			if last && !s.markSentEnd(k) {
				return
			}
			if err := c.write(func() error { return c.fr.WriteData(s.id, last, part) }); err != nil {
				return
			}
			sent += k
			if last {
				s.afterEnd()
				return
			}
		}
		if rerr == nil {
			continue
		}
		if rerr != io.EOF {
			s.reset(http2.ErrCodeCancel, fmt.Errorf("h2up: reading the request body: %w", rerr), true)
			return
		}
		if !s.markSentEnd(0) {
			return
		}
		var trailer http.Header
		if hasTrailer {
			for k, vv := range s.req.Trailer {
				if len(vv) > 0 {
					if trailer == nil {
						trailer = http.Header{}
					}
					trailer[k] = vv
				}
			}
		}
		c.write(func() error {
			if trailer == nil {
				return c.fr.WriteData(s.id, true, nil)
			}
			c.mu.Lock()
			maxFrame := c.maxFrame
			c.mu.Unlock()
			c.hbuf.Reset()
			for k, vv := range trailer {
				lk := lowerHeader(k)
				for _, v := range vv {
					c.henc.WriteField(headerField(lk, v))
				}
			}
			return c.writeHeaderBlock(s.id, true, maxFrame)
		})
		s.afterEnd()
		return
	}
}

// pending is the read of a request body sendReady made: the bytes the
// windows did not take and the read's error, for writeBody.
type pending struct {
	bp   *[]byte // from bufPool: data is in it
	data []byte
	err  error
	done bool // all of the body and its end were sent
}

// readReady reports whether a Read of r returns without waiting (h2srv's
// request body and the agent's wrappers of it say so).
func readReady(r io.Reader) bool {
	rr, ok := r.(interface{ ReadReady() bool })
	return ok && rr.ReadReady()
}

// sendReady reads the body once (readReady said it does not wait) and
// writes what the send windows take of it at once, with END_STREAM if
// that was all of it. Under wmu, right after the request's HEADERS: the
// read must not block on anything else either, or every stream of the
// connection would wait (h2srv's body returns window credit to its
// client with a write only after 256 KiB were read, never on a first
// read of at most 16 KiB; it is not ready while 100 Continue is owed).
func (s *stream) sendReady(p *pending, hasTrailer bool) error {
	c := s.c
	p.bp = bufPool.Get().(*[]byte)
	n, rerr := s.req.Body.Read(*p.bp)
	p.data, p.err = (*p.bp)[:n], rerr
	c.mu.Lock()
	k := int64(0)
	if !s.sentEnd && !s.recvEnd && !c.closed {
		k = max(0, min(int64(n), s.sendWin, c.sendWin, int64(c.maxFrame)))
		s.sendWin -= k
		c.sendWin -= k
		if rerr == io.EOF && !hasTrailer && int(k) == n {
			s.sentEnd, p.done = true, true
		}
	}
	c.mu.Unlock()
	if k == 0 && !p.done {
		return nil
	}
	p.data = p.data[k:]
	return c.fr.WriteData(s.id, p.done, (*p.bp)[:k])
}

// headerFlushDelay bounds how long a request's HEADERS wait for its
// first DATA frame.
const headerFlushDelay = time.Millisecond

var bufPool = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

// awaitSend waits for send window and returns how much of n may go in one
// DATA frame; false if the stream no longer sends.
func (s *stream) awaitSend(n int) (int, bool) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if s.sentEnd || c.closed {
			return 0, false
		}
		if s.recvEnd {
			// The response ended before the request body did: the server
			// wants no more of it. RST_STREAM(CANCEL), as net/http does.
			s.sentEnd = true
			go s.abortSend()
			return 0, false
		}
		if s.sendWin > 0 && c.sendWin > 0 {
			k := min(int64(n), s.sendWin, c.sendWin, int64(c.maxFrame))
			s.sendWin -= k
			c.sendWin -= k
			return int(k), true
		}
		c.cond.Wait()
	}
}

func (s *stream) abortSend() {
	s.c.write(func() error { return s.c.fr.WriteRSTStream(s.id, http2.ErrCodeCancel) })
	s.afterEnd()
}

// markSentEnd records the END_STREAM about to be sent; false if the stream
// no longer sends: then the connection window taken for the frame
// (reserved, from awaitSend) goes back, as the frame is not written.
func (s *stream) markSentEnd(reserved int) bool {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.sentEnd || c.closed {
		if reserved > 0 && !c.closed {
			c.sendWin += int64(reserved)
			c.cond.Broadcast()
		}
		return false
	}
	s.sentEnd = true
	return true
}
