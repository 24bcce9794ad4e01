package h2up

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/flowwin"
)

// One stream: the request's HEADERS (on the caller's goroutine), its body
// (a goroutine of its own, within the send windows), and the response
// (headers, body buffer, trailers) filled by the read loop.

type stream struct {
	c   *conn
	id  uint32
	req *http.Request

	// Under c.mu.
	sendWin int64
	recvWin int64          // what the server may still send
	win     flowwin.Window // its size; its growth is given back when the buffer is let go (giveBackWindow)
	credit  int            // consumed bytes not yet returned to the stream's window
	sentEnd bool           // END_STREAM or RST_STREAM sent
	recvEnd bool           // END_STREAM or RST_STREAM received (or sent)
	gone    bool           // left c.streams
	watched bool           // see stop

	respReady chan struct{} // closed once resp or respErr is set (nil: done gets them)
	done      Completion    // the response's completion (Pool.Start; nil: RoundTrip waits)
	resp      *http.Response
	respErr   error
	gotHeader bool  // read loop only
	later     bool  // done is owed the response (read loop only, async.go)
	infoBytes int64 // the 1xx header blocks' size so far (read loop only)

	mu       sync.Mutex // guards the following
	cond     sync.Cond
	buf      bytes.Buffer
	respDone bool // respReady closed
	eof      bool
	held     bool // data pushed with its wake-up deferred (conn.wakeLater): not read yet
	closed   bool // body closed by the caller
	err      error
	trailer  http.Header
	n        int64 // body bytes received

	// Under c.mu: the request context's cancellation resets the stream
	// (watch, watched) once something could wait for it; stop (or ew's
	// StopWatch) ends that.
	stop func() bool
	ew   EndWatcher // the context's own watch, in stop's place

	// In the stream's allocation (512 bytes at most: a larger one takes
	// the allocator's slower path): the ready request body's read
	// (sendReady), the response's body, the first bytes of its buffer (a
	// unary gRPC call's message) and the values of small header and
	// trailer blocks (header).
	pre                 pending
	respBody            body
	small               [64]byte
	headVals, trailVals [2]string
}

// roundTrip sends req on c (a slot reserved) and waits for its response.
func (c *conn) roundTrip(req *http.Request) (*http.Response, error) {
	s, err := c.open(req, nil, false)
	if err != nil {
		return nil, err
	}
	return c.wait(s)
}

// wait waits for s's response (or its request's end).
func (c *conn) wait(s *stream) (*http.Response, error) {
	ctx := s.req.Context()
	select {
	case <-s.respReady:
	case <-ctx.Done():
		s.resetAsync(http2.ErrCodeCancel, ctx.Err(), true, true)
		<-s.respReady // closed by reset, or by the response that came first
	}
	if s.respErr != nil {
		return nil, s.respErr
	}
	return s.resp, nil
}

// open sends req on a new stream of c (a slot reserved) and returns the
// stream, its response to come; done (nil: none) is the stream's
// completion (Pool.Start).
func (c *conn) open(req *http.Request, done Completion, later bool) (*stream, error) {
	hasBody := req.Body != nil && req.Body != http.NoBody
	hasTrailer := len(req.Trailer) > 0 && hasBody
	s := &stream{c: c, req: req, recvWin: flowwin.Initial, done: done}
	if done == nil { // wait's: a completion waits on nothing (an allocation less per request)
		s.respReady = make(chan struct{})
	}
	s.cond.L = &s.mu
	s.buf = *bytes.NewBuffer(s.small[:0])
	ctx := req.Context()
	ran := false
	// A request with a body: its HEADERS wait in the buffer for the first
	// DATA frame, one write for both, unless the body has nothing to read
	// for headerFlushDelay (a stream whose client waits for the server's
	// first message): then they go alone. A body with bytes to read at
	// once (a unary gRPC call: its message came with its end) is read
	// here, and what the windows take of it goes with the HEADERS; only
	// what is left goes to writeBody's goroutine (sendReady).
	ready := hasBody && readReady(req.Body)
	var pre *pending // only for a ready body: it outlives the call (writeBody), as the stream does
	if ready {
		pre = &s.pre
	}
	// refused: the stream was not opened (its caller gave up, or the
	// connection went away since the slot was reserved). Not a write's
	// error: returned by fn, it would close the connection and fail the
	// streams open on it.
	var refused error
	// A panic in the write (a bug: sendReady reads the body, whose
	// wrappers are the caller's) must not leave the stream open for good
	// (its slot, its entry, a stream the endpoint waits on): it is reset
	// as the panic goes on to the caller (the write lock is free by then).
	// headed: the HEADERS block went out whole (a panic before that
	// closes the connection: abandon).
	written, headed := false, false
	defer func() {
		if !written {
			s.abandon(ran, headed, pre)
		}
	}()
	err := c.writeFlushCtx(ctx, func() error {
		ran = true
		c.mu.Lock()
		c.reserved--
		if s.gone || ctx.Err() != nil { // cancelled already
			c.mu.Unlock()
			refused = ctx.Err()
			if refused == nil {
				refused = context.Canceled
			}
			return nil
		}
		if c.closed || c.goaway {
			c.mu.Unlock()
			refused = errConnGone
			return nil
		}
		s.id = c.nextID
		c.nextID += 2
		c.opened++
		s.sendWin = int64(c.peerWin)
		s.sentEnd = !hasBody
		c.streams[s.id] = s
		maxFrame := c.maxFrame
		c.mu.Unlock()
		c.hbuf.Reset()
		encodeHeaders(c, req, hasBody, hasTrailer)
		if err := c.writeHeaderBlock(s.id, !hasBody, maxFrame); err != nil {
			return err
		}
		headed = true
		if ready {
			if err := s.sendReady(pre, hasTrailer); err != nil {
				return err
			}
		}
		if later && c.owed {
			c.passOwed()
		}
		return nil
	}, (!hasBody || ready) && !later)
	written = true
	if refused != nil { // whatever the flush of others' frames did
		c.streamDone()
		return nil, refused
	}
	if err != nil {
		if !ran {
			c.unreserve()
			if err == errWaitDone {
				return nil, ctx.Err()
			}
			return nil, errConnGone
		}
		owner := s.done == nil || s.disown(err)
		s.reset(http2.ErrCodeCancel, err, false)
		c.streamDone()
		if !owner {
			// The stream failed first (its connection closed as the
			// write failed): its completion has the error, not the
			// caller.
			return s, nil
		}
		return nil, err
	}
	switch {
	case ready && pre.done:
		bufPool.Put(pre.bp)
		s.afterEnd()
	case ready:
		s.watch() // a body still being sent: a cancellation stops it
		go s.writeBody(hasTrailer, nil, pre)
	case hasBody:
		s.watch()
		go s.writeBody(hasTrailer, time.AfterFunc(headerFlushDelay, c.flush), nil)
	}
	return s, nil
}

// disown takes the response's place (respDone) for open's caller, to
// whom open's failure goes (an error returned, or a panic): the stream's
// completion (Pool.Start) is not called for it; it was, on a goroutine of
// its own (fail), and the caller went on with the error as well (the
// agent's attempt loop twice). false: the response, or the stream's
// failure, came first, and the completion has it.
func (s *stream) disown(err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.respDone {
		return false
	}
	s.respDone, s.respErr = true, err
	close(s.respReady)
	return true
}

// errAbandoned: the request's write panicked (roundTrip).
var errAbandoned = errors.New("h2up: the request's write panicked")

// abandon undoes what roundTrip's write did before it panicked: the
// stream is reset if it was opened, else its slot given back; the ready
// body's buffer goes back to its pool. A panic after the stream got its
// id but before its HEADERS block went out whole (headed) closes the
// connection instead: the block was encoded in part (the HPACK encoder's
// table is no longer the endpoint's decoder's) or written in part (the
// endpoint would read what follows as the rest of a frame), and the
// endpoint never saw the stream open (an RST_STREAM for it is a protocol
// error). The connection's other streams fail with it; the next request
// dials a fresh one.
func (s *stream) abandon(ran, headed bool, pre *pending) {
	c := s.c
	if s.done != nil {
		s.disown(errAbandoned) // the panic goes on to the caller
	}
	switch {
	case s.id != 0 && !headed:
		c.close(errAbandoned)
	case s.id != 0:
		s.reset(http2.ErrCodeCancel, errAbandoned, true)
	case ran:
		c.streamDone()
	default:
		c.unreserve()
	}
	if pre != nil && pre.bp != nil {
		bufPool.Put(pre.bp)
		pre.bp = nil
	}
}

// afterEnd drops the stream from the connection once both sides ended.
func (s *stream) afterEnd() {
	c := s.c
	c.mu.Lock()
	done := s.sentEnd && s.recvEnd && !s.gone
	if done {
		s.gone = true
		delete(c.streams, s.id)
	}
	stop, ew := s.stop, s.ew
	c.mu.Unlock()
	if done {
		if stop != nil {
			stop()
		}
		if ew != nil {
			ew.StopWatch(s)
		}
		c.streamDone()
	}
}

// watch makes a cancellation of the request's context reset the stream
// from now on. Not at once: context.AfterFunc cost a few allocations and
// about 4 % of the process's CPU per h2c request in BenchmarkL7H2, and
// most streams never wait after their response headers (the body and its
// end came with them). roundTrip waits for the response on the context
// too; the body's reads and the request body's writer call watch before
// they wait.
func (s *stream) watch() {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.watched || s.gone {
		return
	}
	s.watched = true
	ctx := s.req.Context()
	if ew, ok := ctx.(EndWatcher); ok && ew.WatchEnd(s) {
		s.ew = ew
		return
	}
	s.stop = context.AfterFunc(ctx, s.ContextEnded)
}

// ContextEnded resets the stream: its request's context ended (watch).
func (s *stream) ContextEnded() { s.reset(http2.ErrCodeCancel, s.req.Context().Err(), true) }

// Ender is told that its request's context ended (EndWatcher).
type Ender interface{ ContextEnded() }

// EndWatcher is a request context that tells a stream of its end itself,
// without context.AfterFunc's allocations (four per request, and the
// context's Done channel): the agent's, for a request of its HTTP/2
// server (h2srv.StreamRef.WatchEnd). WatchEnd has e.ContextEnded called
// once, on a goroutine of its own, when the context ends, as
// context.AfterFunc would; false, nothing done: it cannot, and the stream
// watches the context with context.AfterFunc. StopWatch undoes WatchEnd,
// unless e was told already (or is being told). WatchEnd is called under
// the connection's lock: it must not call into this package.
type EndWatcher interface {
	WatchEnd(e Ender) bool
	StopWatch(e Ender)
}

// reset ends the stream with err: the response (if not in yet) or the
// body's reads fail with it. send: an RST_STREAM with code goes to the
// server (the read loop passes false for the server's own).
func (s *stream) reset(code http2.ErrCode, err error, send bool) {
	s.resetAsync(code, err, send, false)
}

// resetAsync is reset; async: the RST_STREAM is written by a goroutine of
// its own (the caller must not wait behind a stalled write).
func (s *stream) resetAsync(code http2.ErrCode, err error, send, async bool) {
	c := s.c
	c.mu.Lock()
	if s.gone {
		c.mu.Unlock()
		s.fail(err)
		return
	}
	s.gone = true
	id := s.id // 0: cancelled before it was opened
	wasOpen := !s.sentEnd || !s.recvEnd
	s.sentEnd, s.recvEnd = true, true
	if id != 0 {
		delete(c.streams, id)
	}
	c.cond.Broadcast()
	stop, ew := s.stop, s.ew
	c.mu.Unlock()
	if send && wasOpen && id != 0 {
		if async {
			go c.write(func() error { return c.fr.WriteRSTStream(id, code) })
		} else {
			c.write(func() error { return c.fr.WriteRSTStream(id, code) })
		}
	}
	s.fail(err)
	if stop != nil {
		stop()
	}
	if ew != nil {
		ew.StopWatch(s)
	}
	if id != 0 {
		c.streamDone()
	}
}

// fail makes the response or the body's reads fail with err and returns
// unread bytes to the connection; a body that had ended stays readable (a
// server may reset a stream with NO_ERROR after a complete response, to
// stop the request body, RFC 9113 §8.1).
func (s *stream) fail(err error) {
	s.mu.Lock()
	left := 0
	if !s.eof && s.err == nil {
		s.err = err
		left = s.buf.Len()
		s.buf.Reset()
		s.giveBackWindow()
	}
	s.cond.Broadcast()
	owned := !s.respDone
	if owned {
		s.respDone, s.respErr = true, err
		if s.respReady != nil {
			close(s.respReady)
		}
	}
	s.mu.Unlock()
	s.c.credit(nil, left, false)
	if owned && s.done != nil {
		go s.done.Complete(nil, err, nil) // fail's callers may hold up the read loop, or be it
	}
}

// onHeaders takes the response headers, or the trailers. Read loop.
func (s *stream) onHeaders(f *http2.MetaHeadersFrame) {
	c := s.c
	if s.gotHeader {
		if !f.StreamEnded() {
			s.resetAsync(http2.ErrCodeProtocol, &StreamError{ID: s.id, Code: http2.ErrCodeProtocol, Why: ": trailers without END_STREAM"}, true, true)
			return
		}
		spare := s.trailVals[:]
		if s.trailer != nil {
			spare = nil // a second block (after END_STREAM): the first's values may be read
		}
		tr := c.header(f.RegularFields(), spare)
		c.mu.Lock()
		s.recvEnd = true
		c.mu.Unlock()
		s.mu.Lock()
		s.trailer = tr
		s.mu.Unlock()
		s.end(nil)
		return
	}
	code, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || code < 100 || code > 999 {
		s.resetAsync(http2.ErrCodeProtocol, &StreamError{ID: s.id, Code: http2.ErrCodeProtocol, Why: ": bad :status"}, true, true)
		return
	}
	if code < 200 {
		if f.StreamEnded() || code == 101 {
			s.resetAsync(http2.ErrCodeProtocol, &StreamError{ID: s.id, Code: http2.ErrCodeProtocol, Why: ": bad informational response"}, true, true)
		}
		// 100 Continue and friends: the final response follows. Their
		// blocks add up to at most the header list limit, as x/net's
		// transport counts them (totalHeaderSize): a server sending 1xx
		// for ever would keep the request waiting for ever.
		for _, hf := range f.Fields {
			s.infoBytes += int64(hf.Size())
		}
		if s.infoBytes > maxHeaderList {
			s.resetAsync(http2.ErrCodeProtocol, &StreamError{ID: s.id, Code: http2.ErrCodeProtocol, Why: ": informational responses past the header list limit"}, true, true)
		}
		return
	}
	h := c.header(f.RegularFields(), s.headVals[:])
	resp := &http.Response{Status: statusText(code), StatusCode: code, Proto: "HTTP/2.0", ProtoMajor: 2,
		Header: h, Request: s.req, ContentLength: -1}
	if cl := h["Content-Length"]; len(cl) == 1 {
		if n, err := strconv.ParseInt(cl[0], 10, 64); err == nil && n >= 0 {
			resp.ContentLength = n
		}
	}
	for _, v := range h["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			if k = textproto.CanonicalMIMEHeaderKey(textproto.TrimString(k)); k != "" {
				if resp.Trailer == nil {
					resp.Trailer = http.Header{}
				}
				resp.Trailer[k] = nil
			}
		}
	}
	s.gotHeader = true
	ended := f.StreamEnded()
	if ended {
		if resp.ContentLength == -1 && s.req.Method != http.MethodHead {
			resp.ContentLength = 0
		}
		resp.Body = http.NoBody
	} else {
		s.respBody.s = s
		resp.Body = &s.respBody
	}
	c.mu.Lock()
	s.resp = resp
	if ended {
		s.recvEnd = true
	}
	c.mu.Unlock()
	s.mu.Lock()
	owned := !s.respDone // else reset meanwhile
	if owned {
		s.respDone = true
		if s.respReady != nil {
			close(s.respReady)
		}
	}
	s.mu.Unlock()
	if owned && s.done != nil {
		c.completeLater(s)
	}
	if ended {
		s.end(nil)
	}
}

// header is the fields as a header map. A key's first value is a slice
// of one array (capacity 1: an append copies): one allocation for the
// values instead of one per key, none when they fit in spare (the
// stream's). Read loop.
func (c *conn) header(fields []hpack.HeaderField, spare []string) http.Header {
	h := make(http.Header, len(fields))
	var vals []string
	if len(fields) <= len(spare) {
		vals = spare[:len(fields)]
	} else {
		vals = make([]string, len(fields))
	}
	for i, hf := range fields {
		k := c.canonical(hf.Name)
		if vv, ok := h[k]; ok {
			h[k] = append(vv, hf.Value)
			continue
		}
		vals[i] = hf.Value
		h[k] = vals[i : i+1 : i+1]
	}
	return h
}

// giveBackWindow returns the stream's window growth to its budget, once
// its buffer is let go: the body read to its end or its error, closed, or
// failed (the bytes a grown window let in are held until then, also after
// the stream has left c.streams). No growth follows: the stream has
// ended, or is gone, or its connection closed (credit).
func (s *stream) giveBackWindow() { s.win.Release() }

// push appends received body bytes; false if the body was closed. wake:
// the reader is woken now (else by the read loop's wakeStreams).
func (s *stream) push(p []byte, wake bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.err != nil {
		return false
	}
	s.buf.Write(p)
	s.n += int64(len(p))
	s.held = !wake
	if wake {
		s.cond.Broadcast()
	}
	return true
}

// checkLength reports whether the body matched a declared content-length.
func (s *stream) checkLength() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	cl := s.resp.ContentLength
	return cl < 0 || s.n == cl || s.req.Method == http.MethodHead
}

// end marks the response complete (recvEnd already set).
func (s *stream) end(error) {
	s.mu.Lock()
	if s.err == nil {
		s.eof = true
	}
	s.held = false
	s.cond.Broadcast()
	s.mu.Unlock()
	s.afterEnd()
	if s.later {
		s.complete(&s.c.rl) // the whole response is in: its completion runs here
	}
}

// body is a response body, read from the stream's buffer.
type body struct{ s *stream }

func (b *body) Read(p []byte) (int, error) {
	s := b.s
	s.mu.Lock()
	watched := false
	for (s.buf.Len() == 0 || s.held) && !s.eof && s.err == nil && !s.closed {
		if !watched { // about to wait: a cancellation must end it
			s.mu.Unlock()
			s.watch()
			watched = true
			s.mu.Lock()
			continue
		}
		s.cond.Wait()
	}
	if s.closed {
		s.mu.Unlock()
		return 0, errors.New("h2up: read on closed body")
	}
	if s.buf.Len() > 0 {
		n, _ := s.buf.Read(p)
		drained := s.buf.Len() == 0
		s.mu.Unlock()
		s.c.credit(s, n, drained)
		return n, nil
	}
	s.giveBackWindow()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return 0, err
	}
	if s.trailer != nil {
		// As net/http's copyTrailers: merged into the map the Trailer
		// header declared, declared keys not sent stay (nil), before EOF.
		if s.resp.Trailer == nil {
			s.resp.Trailer = s.trailer
		} else {
			for k, vv := range s.trailer {
				s.resp.Trailer[k] = vv
			}
		}
	}
	s.mu.Unlock()
	return 0, io.EOF
}

// UpstreamEnded reports whether the response has ended (END_STREAM read):
// what is left of the body is buffered, and reads return it, then EOF,
// without waiting. The agent's HTTP/2 server skips a flush then, so the
// last DATA frame and the trailers leave in one write. A body closed after
// its end still reports it: ReverseProxy closes the body before the flush
// it makes for a response with trailers (gRPC's), which cost every unary
// call a write of its own for the trailers.
func (b *body) UpstreamEnded() bool {
	s := b.s
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eof
}

// BufferedUpstream is how many body bytes are buffered unread.
func (b *body) BufferedUpstream() int {
	s := b.s
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Len()
}

// Close ends the stream: if the response has not ended, RST_STREAM(CANCEL).
func (b *body) Close() error {
	s := b.s
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	done := s.eof || s.err != nil
	left := s.buf.Len()
	s.buf.Reset()
	s.cond.Broadcast()
	s.mu.Unlock()
	s.c.credit(nil, left, false)
	if !done {
		s.reset(http2.ErrCodeCancel, errors.New("h2up: response body closed"), true)
	}
	s.giveBackWindow() // after reset: no growth follows
	return nil
}
