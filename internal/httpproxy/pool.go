package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	defaultMaxIdle     = 64                   // idle connections per pool, as MaxIdleConnsPerHost
	checkIdleAfter     = time.Second          // a pooled connection idle this long is checked before use
	checkIdleAfterBody = 5 * time.Millisecond // the same for requests that cannot be sent twice
)

// Pool is a pool of persistent HTTP/1.1 connections to one upstream
// (whatever PoolConfig.Dial reaches). RoundTrip runs on the caller's
// goroutine: it writes the request and reads the response header itself,
// and the connection goes back to the pool when the body has been read to
// its end. Unlike http.Transport it sends the request as it is given (no
// header added but Host and the body's framing), drops 1xx responses and
// refuses a 101: upgrades are the caller's to handle elsewhere.
type Pool struct {
	cfg PoolConfig

	mu     sync.Mutex  // guards the following
	idle   []*poolConn // LIFO: the most recently used last
	all    map[*poolConn]struct{}
	closed bool
	reaper *time.Timer // closes idle connections after idleTimeout (reapIdle)
	armed  bool        // reaper is scheduled

	testHookStall    func() // if set, called after each onStall
	testHookWritten  func() // if set, called once each request is written (or its body goes on beside: exchange)
	testHookRestSent func() // if set, called by sendRest once the body's rest went out whole
}

// PoolConfig is what a pool needs from its owner: how to reach the
// upstream and how long to keep connections. Zero fields take the
// defaults written beside them; a limit added later belongs here too.
type PoolConfig struct {
	// Dial opens a new connection to the endpoint (required).
	Dial func(ctx context.Context) (net.Conn, error)
	// DialError wraps the error of a failed Dial, or of a pool closed
	// while it dialed: nothing of the request was sent, which the caller
	// may want to tell apart. nil: returned as is.
	DialError func(error) error
	// IdleTimeout closes a connection idle this long (default 90 s, as
	// http.Transport's IdleConnTimeout).
	IdleTimeout time.Duration
	// MaxIdle is how many idle connections the pool keeps (default 64, as
	// MaxIdleConnsPerHost).
	MaxIdle int
	// MaxUses closes a connection after this many requests (0: no limit;
	// Envoy's max_requests_per_connection).
	MaxUses int
	// MaxResponseHeadBytes bounds what one request's response heads may
	// read, 1xx ones included, those read while a stalled request body
	// waits too (default 10 MiB, as http.Transport's
	// MaxResponseHeaderBytes, which counts them the same way): past it the
	// request fails and the connection closes.
	MaxResponseHeadBytes int64
	// OnPanic gets a panic recovered on the goroutine that sends the rest
	// of a request body beside its answer (a body's Read: sendRest) after
	// the answer's head was returned: the answer's read fails and the pool
	// serves on. nil: dropped. (Before the head, RoundTrip panics with it,
	// as when the body is read on the caller's goroutine.)
	OnPanic func(v any)
}

// defaultMaxResponseHead is http.Transport's default MaxResponseHeaderBytes.
const defaultMaxResponseHead = 10 << 20

// NewPool returns an empty pool; connections are dialed on demand.
func NewPool(cfg PoolConfig) *Pool {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 90 * time.Second
	}
	if cfg.MaxIdle <= 0 {
		cfg.MaxIdle = defaultMaxIdle
	}
	if cfg.DialError == nil {
		cfg.DialError = func(err error) error { return err }
	}
	if cfg.MaxResponseHeadBytes <= 0 {
		cfg.MaxResponseHeadBytes = defaultMaxResponseHead
	}
	return &Pool{cfg: cfg, all: map[*poolConn]struct{}{}}
}

// poolConn is one upstream connection.
type poolConn struct {
	p      *Pool
	c      net.Conn
	br     *bufio.Reader // reads through head
	head   headLimit
	bw     *bufio.Writer
	idleAt time.Time
	usedAt time.Time // when get took it from the idle list (zero: new)
	// doneAt is when the last response's head was read (RoundTripAt),
	// kept for put if its body was in the buffer by then (read to its
	// end at once: put's own reading would be a few microseconds later);
	// zero: put reads the clock.
	doneAt time.Time
	reused bool
	uses   int // requests sent on it
	// peekNext: the last response had no body by rule (HEAD, 204, 304)
	// although the endpoint may have sent one; the connection is checked
	// for stray bytes before it is used again.
	peekNext bool
	// poison unblocks the connection's reads and writes for good (a
	// cancelled request); made once, not a closure per request. poisoned:
	// it was called (a deadline set later sets it again: sendHeld).
	poison   func()
	poisoned atomic.Bool
	// body is the last lean response's body (leanResponse), reused: a
	// respBody stops reading it once done, before the connection is reused.
	body lengthBody
	// writing is the context of the request being written (onStall).
	writing context.Context
	// rc and peekFn are alive's (nil: no file descriptor); peeked its
	// result.
	rc     syscall.RawConn
	peekFn func(uintptr) bool
	peeked bool
	// lean is the last lean response (newLeanResponse) until roundTrip
	// takes its body (bodyFor).
	lean *leanResp
	// long is an interim head longer than br that a stalled write began
	// to read (skipInterim); nil: none.
	long []byte
	// bad is why an interim head a stalled write read was refused
	// (skipInterim): the exchange fails with it.
	bad error
	// duplex is the rest of the last request's body, sent beside its
	// answer (goDuplex; nil: none, or sent whole); inDuplex: it may be
	// sending (onStall leaves the connection's reader alone).
	duplex   *duplexWrite
	inDuplex atomic.Bool
	// roomf and room are SendRoom's (poolroom.go).
	roomf func(uintptr)
	room  int
	wire  *upWire // holds a bodyless request for its response's read if fuse (new, or idle < fuseIdleMax); nil: no descriptor
	fuse  bool
}

var _ http.RoundTripper = (*Pool)(nil)

// Close closes the idle connections (and with busy, those in use: a
// request waiting on one fails); the pool keeps no connection from then
// on, and a request that needs a new one fails with ErrPoolClosed.
func (p *Pool) Close(busy bool) {
	p.mu.Lock()
	p.closed = true
	if p.reaper != nil {
		p.reaper.Stop()
	}
	var cs []*poolConn
	if busy {
		for pc := range p.all {
			cs = append(cs, pc)
		}
	} else {
		cs = p.idle
	}
	p.idle = nil
	p.mu.Unlock()
	for _, pc := range cs {
		pc.c.Close()
	}
}

// ShrinkIdle closes the idle connections but the keep most recently used
// and returns how many it closed; connections in use are left alone. An
// idle owner (the agent's memory trim) calls it: a pool sized by a burst of
// concurrent requests holds a connection, its buffers and, on a mesh
// stream, the far agent's relay for each until IdleTimeout.
func (p *Pool) ShrinkIdle(keep int) int {
	keep = max(keep, 0)
	p.mu.Lock()
	n := max(len(p.idle)-keep, 0)
	old := make([]*poolConn, n)
	copy(old, p.idle[:n])
	p.idle = append(p.idle[:0], p.idle[n:]...)
	clear(p.idle[len(p.idle):cap(p.idle)])
	p.mu.Unlock()
	for _, pc := range old {
		pc.close()
	}
	return n
}

// get returns an idle connection, checked first if it has been idle longer
// than checkAfter, or a new one. Known gap: bytes an endpoint sends unasked
// on a connection idle for less than that (a duplicate response, a body
// past its length, in a later segment) are read as the next request's
// answer. Checking every reuse (one MSG_PEEK) closes it, but cost 9 % of
// the HTTP/1.1 rate and 7 µs of CPU per request in bench.sh (session 19,
// BENCHMARKS.md), so it was reverted.
//
// now is the caller's reading of the monotonic clock (MonoTime) taken
// just before (zero: get reads it). A connection put back after it (by
// another goroutine) has a negative idle time: it counts as just used,
// which it was.
func (p *Pool) get(ctx context.Context, fresh bool, checkAfter time.Duration, now time.Time) (*poolConn, error) {
	if !fresh {
		p.mu.Lock()
		for len(p.idle) > 0 {
			pc := p.idle[len(p.idle)-1]
			p.idle = p.idle[:len(p.idle)-1]
			p.mu.Unlock()
			// MonoTime reads the monotonic clock only (idleAt has it):
			// one vDSO call, not time.Now's two.
			if now.IsZero() {
				now = MonoTime()
			}
			if idle := now.Sub(pc.idleAt); idle < p.cfg.IdleTimeout && !pc.retired() && ((idle < checkAfter && !pc.peekNext) || pc.alive()) {
				pc.reused, pc.peekNext, pc.fuse, pc.usedAt = true, false, idle < fuseIdleMax, now
				return pc, nil
			}
			pc.close()
			p.mu.Lock()
		}
		p.mu.Unlock()
	}
	c, err := p.cfg.Dial(ctx)
	if err != nil {
		return nil, p.cfg.DialError(err)
	}
	var rw io.ReadWriter = c
	raw := NewRawIO(c) // no system call state per read and write
	pc := &poolConn{p: p, c: c, fuse: true}
	pc.poison = func() { pc.poisoned.Store(true); c.SetDeadline(aLongTimeAgo) }
	if raw != nil {
		raw.OnStall, raw.StallAfter = pc.onStall, earlyResponseWait
		pc.rc, pc.peekFn, pc.wire = raw.rc, pc.peek, &upWire{raw: raw, clear: func() { pc.setReadDeadline(time.Time{}) }}
		rw = pc.wire
	}
	pc.bw = bufio.NewWriterSize(rw, BufSize)
	pc.head = headLimit{r: rw, left: noHeadLimit}
	pc.br = bufio.NewReaderSize(&pc.head, BufSize)
	p.mu.Lock()
	closed := p.closed
	if !closed {
		p.all[pc] = struct{}{}
	}
	p.mu.Unlock()
	if closed {
		c.Close()
		return nil, p.cfg.DialError(ErrPoolClosed)
	}
	return pc, nil
}

func (p *Pool) put(pc *poolConn) {
	if pc.idleAt = pc.doneAt; pc.idleAt.IsZero() {
		pc.idleAt = MonoTime() // read with the monotonic clock only (get, reapIdle)
	}
	pc.doneAt = time.Time{}
	p.mu.Lock()
	if p.closed || len(p.idle) >= p.cfg.MaxIdle || pc.retired() {
		p.mu.Unlock()
		pc.close()
		return
	}
	p.idle = append(p.idle, pc)
	if !p.armed {
		p.armed = true
		if p.reaper == nil {
			p.reaper = time.AfterFunc(p.cfg.IdleTimeout, p.reapIdle)
		} else {
			p.reaper.Reset(p.cfg.IdleTimeout)
		}
	}
	p.mu.Unlock()
}

// reapIdle closes the connections idle for idleTimeout or longer, as
// http.Transport's IdleConnTimeout does: the LIFO order reuses the newest,
// so under steady load the oldest would otherwise stay open for good. It
// runs again when the oldest one left is due.
func (p *Pool) reapIdle() {
	now := time.Now()
	p.mu.Lock()
	n := 0
	for n < len(p.idle) && now.Sub(p.idle[n].idleAt) >= p.cfg.IdleTimeout {
		n++
	}
	old := make([]*poolConn, n)
	copy(old, p.idle[:n])
	p.idle = append(p.idle[:0], p.idle[n:]...)
	p.armed = len(p.idle) > 0 && !p.closed
	if p.armed {
		p.reaper.Reset(p.cfg.IdleTimeout - now.Sub(p.idle[0].idleAt))
	}
	p.mu.Unlock()
	for _, pc := range old {
		pc.close()
	}
}

func (pc *poolConn) close() {
	pc.c.Close()
	p := pc.p
	p.mu.Lock()
	delete(p.all, pc)
	p.mu.Unlock()
}

// ErrPoolClosed: the pool was closed (Close) before a new connection
// could join it; returned through PoolConfig.DialError.
var ErrPoolClosed = errors.New("upstream pool closed")

// errStale: a reused connection failed before any byte of a response; the
// endpoint had closed it while idle.
var errStale = errors.New("reused connection closed by the endpoint")

var aLongTimeAgo = time.Unix(1, 0)

func (pc *poolConn) roundTrip(req *http.Request) (*http.Response, time.Time, error) {
	ctx := req.Context()
	var stop func() bool
	var mark *streamCancelMark // hook the body only, if it streams (WithStreamCancel)
	if ctx.Done() != nil {
		if ctx.Err() != nil {
			return nil, time.Time{}, context.Cause(ctx)
		}
		// A cancelled request (its timeout, a dead upstream) ends the attempt: the deadline
		// unblocks the read or write, and the connection is not reused.
		if mark = cancelsOnlyStreams(ctx); mark == nil {
			stop = context.AfterFunc(ctx, pc.poison)
		} else if !mark.await(pc) { // CancelHeadWait ends the exchange
			return nil, time.Time{}, context.Cause(ctx)
		}
	}
	resp, err := pc.exchange(req)
	if d := pc.duplex; d != nil && d.endHead() {
		resp, err = nil, ErrBodyPanicked // raised again once the connection is closed (RoundTripAt)
	}
	if mark != nil && !mark.await(nil) && err == nil {
		err = context.Cause(ctx) // the client went away as the head came: pc may be poisoned (RoundTrip closes it)
	}
	if err != nil {
		if mark != nil && ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		if stop != nil {
			stop()
			if ctx.Err() != nil {
				err = context.Cause(ctx)
			}
		}
		return nil, time.Time{}, err
	}
	at := MonoTime() // the head is in: the exchange's end (RoundTripAt)
	b := pc.bodyFor(resp)
	b.pc, b.body, b.stop, b.close, b.duplex = pc, resp.Body, stop, resp.Close, pc.duplex
	if resp.Body == http.NoBody {
		// A response without a body by rule may still have been sent
		// one: check before reuse (over a connection that cannot be
		// peeked, do not reuse).
		if req.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified {
			pc.peekNext = true
			if _, ok := pc.c.(syscall.Conn); !ok {
				b.close = true
			}
		}
		pc.doneAt = at
		b.finish(true)
		return resp, at, nil
	}
	if resp.ContentLength >= 0 && int64(pc.br.Buffered()) >= resp.ContentLength {
		// All of the body is in: read to its end next (the response is
		// written on), the connection goes back as of now. (A client
		// slow to take it makes that reading early: the connection counts
		// as idle for longer than it was, which only makes the pool more
		// careful with it.)
		pc.doneAt = at
	}
	if mark != nil && (resp.ContentLength < 0 || int64(pc.br.Buffered()) < resp.ContentLength) {
		b.stop = context.AfterFunc(ctx, pc.poison) // reads of the body may block: a client gone mid-stream ends them
	}
	resp.Body = b
	return resp, at, nil
}

// exchange writes req and reads the response header.
func (pc *poolConn) exchange(req *http.Request) (*http.Response, error) {
	pc.lean = nil
	pc.writing = req.Context()
	// The heads of the response read at most MaxResponseHeadBytes (and
	// what the buffer held already), the 1xx ones a stalled write reads
	// (onStall) included, as net/http's Transport counts them; the body
	// after them is not bounded.
	pc.head.left = pc.p.cfg.MaxResponseHeadBytes
	defer func() { pc.head.left = noHeadLimit }()
	err := pc.writeRequest(req)
	var rerr error // the failure of the read a held request was written in
	if err == nil {
		err, rerr = pc.sendHeld()
	}
	pc.writing = nil
	if h := pc.p.testHookWritten; h != nil {
		h()
	}
	if err != nil {
		if bad := pc.bad; bad != nil {
			// A refused 1xx head: the exchange's failure, not the
			// endpoint's answer to read after it (net/http's Transport).
			pc.bad = nil
			return nil, bad
		}
		var cbe *ClientBodyError
		if !errors.As(err, &cbe) {
			// The endpoint may have answered before it stopped reading
			// the body (413, 401), and closed or held the connection
			// (onStall): its answer wins, as with net/http's Transport.
			// The connection is not reused.
			resp, rerr := pc.earlyResponse(req)
			if rerr != nil {
				pc.bad = nil
				return nil, rerr
			}
			if resp != nil {
				return resp, nil
			}
			if errors.Is(err, errAnsweredEarly) {
				// Bytes that are no answer, or the end: the endpoint's
				// failure (failover, outlier detection), as the broken
				// write it spared would have been.
				err = fmt.Errorf("%w: %w", err, io.ErrUnexpectedEOF)
			}
		}
		if pc.reused && !errors.As(err, &cbe) {
			return nil, fmt.Errorf("%w: %w", errStale, err)
		}
		return nil, err
	}
	if pc.long != nil { // the write ended inside a long interim head
		if err := pc.finishInterim(); err != nil {
			return nil, err
		}
	}
	if rerr == nil {
		_, rerr = pc.br.Peek(1)
	}
	if rerr != nil {
		if pc.duplex != nil {
			if err := pc.duplexErr(nil); err != nil {
				return nil, err // the body's read failed (sendRest poisoned the connection)
			}
		}
		if pc.reused {
			return nil, fmt.Errorf("%w: %w", errStale, rerr)
		}
		return nil, rerr
	}
	for {
		resp := pc.leanResponse(req)
		if resp == nil {
			var err error
			if resp, err = http.ReadResponse(pc.br, req); err != nil {
				return nil, pc.duplexErr(err)
			}
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			return nil, errors.New("endpoint switched protocols without an upgrade request")
		case resp.StatusCode >= 100 && resp.StatusCode < 200:
			continue // informational (103 Early Hints): dropped
		}
		return resp, nil
	}
}
