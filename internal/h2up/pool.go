// Package h2up is a lean HTTP/2 cleartext (prior knowledge) client for the
// agent's upstream requests: a pool of connections to one endpoint, each
// carrying many streams, as an http.RoundTripper.
//
// Why not net/http's HTTP/2 transport: it runs every request's write on a
// goroutine of its own and flushes every frame with a write of its own;
// with the agent's HTTP/2 server beside it that was most of the ~150 µs of
// CPU an h2c or gRPC request cost the agent (BENCHMARKS.md, issue 14).
// Here the caller's goroutine writes the request's HEADERS; frames of
// concurrent streams share a write (whoever writes last flushes); one
// goroutine per connection reads, and a response body is read straight
// from the stream's buffer. Flow control, trailers (both ways), RST_STREAM,
// GOAWAY (streams the server did not take fail as refused, so they may be
// retried), PING and SETTINGS are handled; server push is refused. A
// connection whose write to the endpoint makes no progress (the endpoint
// stopped reading) is closed after Config.StallTimeout (stallwatch.go).
package h2up

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"time"
)

// Config sets up a Pool.
type Config struct {
	// Dial connects to the endpoint.
	Dial func(ctx context.Context) (net.Conn, error)
	// DialError, if set, wraps a dial error (the agent marks them as
	// nothing-sent).
	DialError func(error) error
	// IdleTimeout closes a connection without streams for this long (0:
	// 90 s).
	IdleTimeout time.Duration
	// MaxStreams is the most streams one connection carries in its life
	// (0: no limit; 1: a connection per request).
	MaxStreams int
	// StallTimeout closes a connection whose write to the endpoint made
	// no progress for this long, to at most half as long again (0: 10 s):
	// an endpoint that stopped reading (stallwatch.go).
	StallTimeout time.Duration
	// OnPanic gets a panic recovered on a goroutine of the pool's own: the
	// writer of a request body, whose Read panicked (a bug of the
	// caller's: that request fails, its stream reset with CANCEL, the
	// error ErrBodyPanicked, and the pool serves on), or a connection's
	// read loop (a bug: the connection is closed, its streams fail). Called
	// while the panic is recovered: runtime/debug.Stack has its stack.
	// nil: logged by log/slog's default logger, at error level.
	OnPanic func(v any)
	// Waiting, if set, is called with the request's context right before
	// a request waits for a connection: its own dial or another
	// request's. The agent hands its HTTP/2 server's read loop on then
	// (h2srv.WillWait): the caller may run there.
	Waiting func(ctx context.Context)
}

// ErrBodyPanicked: the request body's Read panicked while the pool's
// writer sent it (Config.OnPanic).
var ErrBodyPanicked = errors.New("h2up: the request body's read panicked")

// panicked hands v, a panic recovered on one of the pool's goroutines, to
// OnPanic.
func (p *Pool) panicked(v any) {
	if p.cfg.OnPanic != nil {
		p.cfg.OnPanic(v)
		return
	}
	slog.Error("h2up: panic", "panic", v, "stack", string(debug.Stack()))
}

// ErrPoolClosed: the pool was closed before the request was sent.
var ErrPoolClosed = errors.New("h2up: pool closed")

// Pool is the connections to one endpoint.
type Pool struct {
	cfg Config

	mu      sync.Mutex // guards the following
	conns   []*conn
	dialing chan struct{} // closed when the dial in progress ends; nil if none
	closed  bool
}

// New returns an empty pool.
func New(cfg Config) *Pool {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 90 * time.Second
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = defaultStallTimeout
	}
	return &Pool{cfg: cfg}
}

// RoundTrip sends req on a pooled connection (a new one when every pooled
// one is full) and returns the response once its headers are in. A stream
// the server refused (REFUSED_STREAM, or above its GOAWAY's last stream)
// is reported as such: nothing of it was processed.
func (p *Pool) RoundTrip(req *http.Request) (*http.Response, error) {
	s, err := p.open(req, nil, false)
	if err != nil {
		return nil, err
	}
	return s.c.wait(s)
}

// open sends req on a pooled connection's new stream (done: its
// completion, Start's).
func (p *Pool) open(req *http.Request, done Completion, later bool) (*stream, error) {
	if err := checkRequest(req); err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		c, err := p.get(req.Context())
		if err != nil {
			return nil, err
		}
		s, err := c.open(req, done, later)
		if errors.Is(err, errConnGone) {
			if attempt < 3 {
				continue // the connection went away before the stream was opened
			}
			// Nothing was sent, on any of the connections: as a dial
			// that failed.
			if p.cfg.DialError != nil {
				err = p.cfg.DialError(err)
			}
		}
		return s, err
	}
}

// get returns a connection with a stream slot reserved for the caller:
// the first with a free slot, so that concurrent streams share one
// connection (their frames share writes and reads) until it is full.
// Spreading streams over more connections (the least loaded, another
// opened past 4 or 8 streams each, up to 2 or 4) was measured in session
// 30 (BENCHMARKS.md, branch h30/h2fan): no faster for gRPC, slower for
// h2c, with more system calls per request.
func (p *Pool) get(ctx context.Context) (*conn, error) {
	for {
		c, wait, done, err := p.pick()
		if c != nil || err != nil {
			return c, err
		}
		if p.cfg.Waiting != nil {
			p.cfg.Waiting(ctx)
		}
		if wait != nil {
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		c, err = p.dial(ctx, done)
		if err != nil {
			if err != ErrPoolClosed && p.cfg.DialError != nil {
				err = p.cfg.DialError(err)
			}
			return nil, err
		}
		return c, nil
	}
}

// pick reserves a stream slot on a pooled connection (c), or returns the
// dial another caller runs (wait), or makes the caller the dialer (done,
// to close once its dial ended: dial). The pool's lock is released
// however it ends: a panic in a connection's reserve (a bug) fails the
// caller's request, not every later one of the endpoint, as a lock left
// held would.
func (p *Pool) pick() (c *conn, wait <-chan struct{}, done chan struct{}, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, nil, nil, ErrPoolClosed
	}
	for _, c := range p.conns {
		if c.reserve() {
			return c, nil, nil, nil
		}
	}
	if p.dialing != nil {
		return nil, p.dialing, nil, nil
	}
	done = make(chan struct{})
	p.dialing = done
	return nil, nil, done, nil
}

// dial opens a connection for the caller that pick made the dialer and
// reserves a stream slot on it. Its end is announced (done closed, the
// pool's dialing cleared) however it ends, a panic in Dial or in the
// connection's setup included: the callers waiting for it go on. A panic
// in the setup closes the socket dialed.
func (p *Pool) dial(ctx context.Context, done chan struct{}) (*conn, error) {
	ended := false
	var open net.Conn // dialed, not yet a connection's: closed if newConn panics
	defer func() {
		if !ended {
			if open != nil {
				open.Close()
			}
			p.endDial(done)
		}
	}()
	nc, err := p.cfg.Dial(ctx)
	var c *conn
	if err == nil {
		open = nc
		c, err = newConn(p, nc)
		open = nil
	}
	ended = true
	ok, err := p.added(c, err, done)
	if err == ErrPoolClosed && c != nil {
		c.close(ErrPoolClosed)
	}
	if err != nil {
		return nil, err
	}
	if ok {
		return c, nil
	}
	// A connection just made that takes no stream (closed at once,
	// GOAWAY, or MAX_CONCURRENT_STREAMS 0 read already): as a dial that
	// failed, not another dial in a loop.
	return nil, errors.New("h2up: the endpoint's new connection takes no streams")
}

// testHookReserve, if set (tests), is called by each reserve, the
// connection's lock held.
var testHookReserve func()

// testHookYield, if set (tests), is called by a writer that let the write
// lock go to yield before its flush (writeLocked).
var testHookYield func()

// endDial ends the dial announced by done.
func (p *Pool) endDial(done chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dialing = nil
	close(done)
}

// added ends the dial (done) and adds c, dialed with err, to the pool
// with a stream slot reserved (ok); the lock is released however it ends
// (pick).
func (p *Pool) added(c *conn, err error, done chan struct{}) (ok bool, _ error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dialing = nil
	close(done)
	if err != nil {
		return false, err
	}
	if p.closed {
		return false, ErrPoolClosed
	}
	p.conns = append(p.conns, c)
	return c.reserve(), nil
}

// remove drops c from the pool: it takes no new streams.
func (p *Pool) remove(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, pc := range p.conns {
		if pc == c {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			return
		}
	}
}

// CloseIdleConnections closes the connections that carry no stream.
func (p *Pool) CloseIdleConnections() {
	p.mu.Lock()
	conns := append([]*conn(nil), p.conns...)
	p.mu.Unlock()
	for _, c := range conns {
		c.closeIfIdle()
	}
}

// Close closes the idle connections and takes no new requests; streams in
// flight finish on their connections, which then close.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, c := range conns {
		c.drain()
	}
}
