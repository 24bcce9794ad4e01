// Package h2srv is a lean HTTP/2 server (prior knowledge, as h2c or after
// ALPN h2) on golang.org/x/net/http2's Framer and HPACK, for the agent's
// inbound side of h2c and gRPC. net/http's HTTP/2 server moves every frame
// through its serve goroutine and write scheduler (channel hand-offs each
// way); here the read loop hands frames straight to streams and each
// handler writes its own frames under the connection's write lock, the last
// writer in line flushing. Requests go to an http.Handler with the
// validation of x/net's server (request.go).
package h2srv

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

const (
	// DefaultMaxStreams is the concurrent streams a client may open, as
	// net/http's HTTP/2 server.
	DefaultMaxStreams = 250
	// DefaultMaxHeaderList is the largest header list accepted (its
	// SETTINGS_MAX_HEADER_LIST_SIZE), as net/http's server by default:
	// http.DefaultMaxHeaderBytes and 32 bytes per field's overhead.
	DefaultMaxHeaderList = http.DefaultMaxHeaderBytes + 32<<10
	connWindow           = 1 << 20 // the connection's receive window; a stream's starts at 64 KiB and grows while its handler keeps up (package flowwin)
	maxLent              = 4 << 20 // connection credit lent ahead of handlers per connection (heldLocked)
	initialWindow        = 65535
	prefaceTimeout       = 10 * time.Second
)

var errClosed = errors.New("h2srv: connection closed")

// Server serves HTTP/2 connections. Its zero value is not usable: set
// Handler.
type Server struct {
	Handler    http.Handler
	MaxStreams uint32 // concurrent streams per connection; 0: DefaultMaxStreams
	// ErrorLog, if set, gets connection errors (debug level).
	ErrorLog func(msg string, args ...any)
	// OnPanic gets a panic recovered on a connection's read loop (a bug,
	// in code reached from the client's frames): the connection is
	// closed, its streams fail, and the process serves on. Called while
	// the panic is recovered: runtime/debug.Stack has its stack. nil:
	// logged by log/slog's default logger, at error level. (A handler's
	// panic is the handler's: its stream is reset, ErrorLog told.)
	OnPanic func(v any)
	// InlineAll runs every stream's handler on its connection's read loop
	// when the read loop would wait (inlineall.go): for handlers that
	// return at once (Detach).
	InlineAll bool

	// work hands a stream to an idle handler goroutine (workers): a
	// goroutine per stream paid for its creation and, deeper in the proxy,
	// for growing its stack on every request.
	work     chan streamTask
	workOnce sync.Once

	mu       sync.Mutex
	conns    map[*conn]struct{}
	shutdown bool
	idle     chan struct{} // signalled when a connection ends, for Shutdown
}

// ConnOptions are one connection's.
type ConnOptions struct {
	// Context is the requests' base context (values: the port it came to,
	// the client's identity); its end closes the connection.
	Context context.Context
	// IdleTimeout closes a connection with no open stream for that long
	// (GOAWAY, then close); 0: never.
	IdleTimeout time.Duration
	// Preface: the client's preface was read already (and checked).
	Preface bool
}

// ServeConn serves c until it closes; it owns c.
func (s *Server) ServeConn(c net.Conn, o ConnOptions) {
	ctx := o.Context
	if ctx == nil {
		ctx = context.Background()
	}
	sc := newConn(s, c, o)
	if !s.track(sc, true) {
		c.Close()
		return
	}
	defer s.track(sc, false)
	stop := context.AfterFunc(ctx, func() { sc.closeConn(errClosed) })
	defer stop()
	sc.serve(o.Preface)
}

func (s *Server) track(sc *conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.shutdown {
			return false
		}
		if s.conns == nil {
			s.conns = map[*conn]struct{}{}
		}
		s.conns[sc] = struct{}{}
		return true
	}
	delete(s.conns, sc)
	if s.idle != nil {
		select {
		case s.idle <- struct{}{}:
		default:
		}
	}
	return true
}

// Shutdown sends every connection a GOAWAY (graceful: open streams
// finish, no new ones), refuses new connections and waits until all have
// ended or ctx does; then it closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	s.idle = make(chan struct{}, 1)
	for sc := range s.conns {
		go sc.goAway(http2.ErrCodeNo, nil)
	}
	s.mu.Unlock()
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-s.idle:
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		}
	}
}

// Close closes every connection at once.
func (s *Server) Close() {
	s.mu.Lock()
	s.shutdown = true
	for sc := range s.conns {
		if !sc.broken.Load() { // a broken one's close is on its way, and may wait for its lock (loopPanicked)
			sc.closeConn(errClosed)
		}
	}
	s.mu.Unlock()
}

// recoverWorker, deferred first by a worker, recovers a panic of a
// stream's run outside its handler (whose own panics run recovers): in
// the stream's end, its response's last write or its reset (a bug, or a
// connection whose Write panics). Unrecovered it would end the process;
// the stream's connection is ended as after a panic of its read loop
// (loopPanicked), and the worker with it. t is the worker's task (nil
// stream: none ran).
func recoverWorker(t *streamTask) {
	if p := recover(); p != nil && t.st != nil {
		t.st.sc.loopPanicked(p)
	} else if p != nil {
		panic(p) // not a stream's: no connection to end, nothing to report to
	}
}

// panicked hands v, a panic recovered on a read loop, to OnPanic.
func (s *Server) panicked(v any) {
	if s.OnPanic != nil {
		s.OnPanic(v)
		return
	}
	slog.Error("h2srv: panic in a connection's read loop", "panic", v, "stack", string(debug.Stack()))
}

func (s *Server) logf(msg string, args ...any) {
	if s.ErrorLog != nil {
		s.ErrorLog(msg, args...)
	}
}

type streamTask struct {
	st *stream
	h  http.Handler
}

// workerIdle is how long a handler goroutine waits for another stream.
const workerIdle = 10 * time.Second

// dispatch runs t on an idle worker, or on a new one.
func (s *Server) dispatch(t streamTask) {
	s.workOnce.Do(func() { s.work = make(chan streamTask) })
	work := s.work
	select {
	case work <- t:
	default:
		go s.worker(work, t)
	}
}

func (s *Server) worker(work chan streamTask, t streamTask) {
	defer recoverWorker(&t)
	timer := time.NewTimer(workerIdle)
	defer timer.Stop()
	for {
		t.st.run(t.h)
		t = streamTask{}
		timer.Reset(workerIdle)
		select {
		case t = <-work:
		case <-timer.C:
			return
		}
	}
}
