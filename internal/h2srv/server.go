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
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const (
	// DefaultMaxStreams is the concurrent streams a client may open, as
	// net/http's HTTP/2 server.
	DefaultMaxStreams = 250
	// DefaultMaxHeaderList is the largest header list accepted (its
	// SETTINGS_MAX_HEADER_LIST_SIZE), as net/http's server by default:
	// http.DefaultMaxHeaderBytes and 32 bytes per field's overhead.
	DefaultMaxHeaderList = http.DefaultMaxHeaderBytes + 32<<10
	streamWindow         = 1 << 20 // a stream's receive window, as net/http's server
	connWindow           = 1 << 20 // the connection's
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
		sc.closeConn(errClosed)
	}
	s.mu.Unlock()
}

func (s *Server) logf(msg string, args ...any) {
	if s.ErrorLog != nil {
		s.ErrorLog(msg, args...)
	}
}

// conn is one client connection. The read loop (serve) owns fr's reads;
// writes go through writeFrames.
type conn struct {
	s      *Server
	nc     net.Conn
	opts   ConnOptions
	remote string
	br     *bufio.Reader
	fr     *http2.Framer
	canon  map[string]string // header name -> canonical, read loop only

	wmu     sync.Mutex   // guards bw, fr's writes, henc, hbuf, werr
	waiting atomic.Int32 // writers waiting for wmu: the last one flushes
	bw      *bufio.Writer
	henc    *hpack.Encoder
	hbuf    bytes.Buffer
	werr    error
	dirty   bool // bw holds frames not yet flushed
	// flushTimer flushes writeControl's frames if no response does first.
	flushTimer *time.Timer
	flushArmed bool

	mu          sync.Mutex // guards the following and streams' flow state
	streams     map[uint32]*stream
	maxID       uint32 // highest client stream id seen
	goingAway   bool   // GOAWAY sent: no new streams
	lastID      uint32 // the GOAWAY's last stream id
	closed      bool
	closeErr    error
	sendWin     int64  // connection send window
	peerWin     int32  // the client's initial stream window
	peerFrame   uint32 // the client's max frame size
	connCredit  int    // consumed bytes not yet returned to the client
	recvWin     int64  // what the client may still send on the connection
	handlers    int    // handlers running
	unackedSets int    // SETTINGS sent, not acknowledged
	idle        *time.Timer
	done        chan struct{} // closed when the read loop ends
}

func newConn(s *Server, c net.Conn, o ConnOptions) *conn {
	sc := &conn{s: s, nc: c, opts: o, remote: c.RemoteAddr().String(), canon: map[string]string{},
		streams: map[uint32]*stream{}, sendWin: initialWindow, peerWin: initialWindow, peerFrame: 16384,
		recvWin: connWindow, done: make(chan struct{})}
	if o.Context == nil {
		sc.opts.Context = context.Background()
	}
	sc.br = bufio.NewReaderSize(c, 16<<10)
	sc.bw = bufio.NewWriterSize(c, 16<<10)
	sc.fr = http2.NewFramer(sc.bw, sc.br)
	sc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	sc.fr.MaxHeaderListSize = DefaultMaxHeaderList
	sc.fr.SetReuseFrames()
	sc.fr.SetMaxReadFrameSize(16384) // SETTINGS_MAX_FRAME_SIZE left at its initial value
	sc.henc = hpack.NewEncoder(&sc.hbuf)
	return sc
}

func (sc *conn) maxStreams() uint32 {
	if sc.s.MaxStreams > 0 {
		return sc.s.MaxStreams
	}
	return DefaultMaxStreams
}

// writeFrames runs fn with the write lock held; the last writer in line
// flushes, so frames of streams answered together share a system call.
func (sc *conn) writeFrames(fn func() error) error {
	sc.waiting.Add(1)
	sc.wmu.Lock()
	sc.waiting.Add(-1)
	defer sc.wmu.Unlock()
	if sc.werr != nil {
		return sc.werr
	}
	if err := fn(); err != nil {
		sc.werr = err
		return err
	}
	sc.dirty = true
	if sc.waiting.Load() == 0 {
		if err := sc.bw.Flush(); err != nil {
			sc.werr = err
			return err
		}
		sc.dirty = false
	}
	return nil
}

// writeControl writes frames of the read loop's (PING and SETTINGS
// acknowledgements) without a flush of their own: the next response's
// flush takes them along, or flushDelay's timer does. grpc-go pings after
// every response it reads (its BDP estimate); an acknowledgement flushed
// alone cost a system call per call.
func (sc *conn) writeControl(fn func() error) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if sc.werr != nil {
		return sc.werr
	}
	if err := fn(); err != nil {
		sc.werr = err
		return err
	}
	sc.dirty = true
	if !sc.flushArmed {
		sc.flushArmed = true
		if sc.flushTimer == nil {
			sc.flushTimer = time.AfterFunc(flushDelay, sc.flushPending)
		} else {
			sc.flushTimer.Reset(flushDelay)
		}
	}
	return nil
}

// flushDelay bounds how long writeControl's frames wait for a response's
// flush.
const flushDelay = time.Millisecond

func (sc *conn) flushPending() {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	sc.flushArmed = false
	if sc.dirty && sc.werr == nil {
		if err := sc.bw.Flush(); err != nil {
			sc.werr = err
		}
		sc.dirty = false
	}
}

// writeHeaderBlock encodes fields (under wmu) and writes HEADERS and
// CONTINUATION frames.
func (sc *conn) writeHeaderBlock(id uint32, endStream bool, encode func(enc *hpack.Encoder)) error {
	sc.hbuf.Reset()
	encode(sc.henc)
	block := sc.hbuf.Bytes()
	max := int(sc.frameSize())
	first := true
	for first || len(block) > 0 {
		frag := block
		if len(frag) > max {
			frag = frag[:max]
		}
		block = block[len(frag):]
		var err error
		if first {
			err = sc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag,
				EndStream: endStream, EndHeaders: len(block) == 0})
			first = false
		} else {
			err = sc.fr.WriteContinuation(id, len(block) == 0, frag)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (sc *conn) frameSize() uint32 {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.peerFrame
}

// closeConn closes the connection once; streams see err.
func (sc *conn) closeConn(err error) {
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		return
	}
	sc.closed, sc.closeErr = true, err
	for _, st := range sc.streams {
		st.abortLocked(err)
	}
	if sc.idle != nil {
		sc.idle.Stop()
	}
	sc.mu.Unlock()
	sc.nc.Close() // first: a writer blocked in a write holds wmu
	sc.wmu.Lock()
	if sc.flushTimer != nil {
		sc.flushTimer.Stop()
	}
	sc.wmu.Unlock()
}

// goAway sends GOAWAY: no stream above the last one seen will be served.
// With ErrCodeNo the open streams finish (graceful drain); the connection
// closes when the last one does. Any other code closes it now.
func (sc *conn) goAway(code http2.ErrCode, debug []byte) {
	sc.mu.Lock()
	if sc.goingAway && code == http2.ErrCodeNo || sc.closed {
		sc.mu.Unlock()
		return
	}
	sc.goingAway = true
	sc.lastID = sc.maxID
	last, open := sc.lastID, len(sc.streams)
	sc.mu.Unlock()
	sc.writeFrames(func() error { return sc.fr.WriteGoAway(last, code, debug) })
	if code != http2.ErrCodeNo {
		sc.closeConn(http2.ConnectionError(code))
		return
	}
	if open == 0 {
		sc.closeAfterGoAway()
	}
}

// closeAfterGoAway ends a drained connection: its write side first, so
// the client reads the GOAWAY before it sees the close.
func (sc *conn) closeAfterGoAway() {
	if cw, ok := sc.nc.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		// The read loop ends at the client's close; bound the wait.
		time.AfterFunc(time.Second, func() { sc.closeConn(errClosed) })
		return
	}
	sc.closeConn(errClosed)
}

// canonical is the canonical form of a header name (lower case on the
// wire), cached per connection.
func (sc *conn) canonical(name string) string {
	if c, ok := sc.canon[name]; ok {
		return c
	}
	c := textproto.CanonicalMIMEHeaderKey(name)
	if len(sc.canon) < 64 {
		sc.canon[name] = c
	}
	return c
}

// serve is the read loop.
func (sc *conn) serve(prefaceRead bool) {
	defer close(sc.done)
	defer sc.closeConn(errClosed)
	sc.nc.SetReadDeadline(time.Now().Add(prefaceTimeout))
	if !prefaceRead {
		buf := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(sc.br, buf); err != nil || string(buf) != http2.ClientPreface {
			return
		}
	}
	sc.unackedSets = 1
	if err := sc.writeFrames(func() error {
		if err := sc.fr.WriteSettings(
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: sc.maxStreams()},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: DefaultMaxHeaderList},
		); err != nil {
			return err
		}
		return sc.fr.WriteWindowUpdate(0, connWindow-initialWindow)
	}); err != nil {
		return
	}
	// RFC 9113 §3.4: the client's preface ends with a SETTINGS frame.
	f, err := sc.fr.ReadFrame()
	if err != nil {
		if errors.Is(err, http2.ErrFrameTooLarge) {
			err = http2.ConnectionError(http2.ErrCodeFrameSize)
		}
		sc.fail(err)
		return
	}
	if s, ok := f.(*http2.SettingsFrame); !ok || s.IsAck() {
		sc.goAway(http2.ErrCodeProtocol, []byte("expected SETTINGS"))
		return
	}
	if err := sc.processFrame(f); err != nil {
		sc.fail(err)
		return
	}
	sc.nc.SetReadDeadline(time.Time{})
	sc.armIdle()
	for {
		f, err := sc.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				sc.resetStream(se.StreamID, se.Code)
				continue
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				err = http2.ConnectionError(http2.ErrCodeFrameSize)
			}
			sc.fail(err)
			return
		}
		if err := sc.processFrame(f); err != nil {
			sc.fail(err)
			return
		}
	}
}

// fail ends the connection after a read error: a protocol error gets a
// GOAWAY with its code, an I/O error just the close.
func (sc *conn) fail(err error) {
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		sc.s.logf("h2srv: connection error", "remote", sc.remote, "err", err)
		sc.goAway(http2.ErrCode(ce), nil)
	}
	sc.closeConn(err)
}

// armIdle starts the idle timer (no open stream).
func (sc *conn) armIdle() {
	d := sc.opts.IdleTimeout
	if d <= 0 {
		return
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if len(sc.streams) > 0 || sc.closed {
		return
	}
	if sc.idle == nil {
		sc.idle = time.AfterFunc(d, func() {
			sc.mu.Lock()
			busy := len(sc.streams) > 0
			sc.mu.Unlock()
			if !busy {
				sc.goAway(http2.ErrCodeNo, []byte("idle"))
			}
		})
		return
	}
	sc.idle.Reset(d)
}

func (sc *conn) processFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return sc.processHeaders(f)
	case *http2.DataFrame:
		return sc.processData(f)
	case *http2.SettingsFrame:
		return sc.processSettings(f)
	case *http2.WindowUpdateFrame:
		return sc.processWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return sc.processReset(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		if f.StreamID != 0 {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		data := f.Data
		return sc.writeControl(func() error { return sc.fr.WritePing(true, data) })
	case *http2.GoAwayFrame:
		// The client leaves: finish what is open, take nothing new.
		if f.ErrCode != http2.ErrCodeNo {
			return fmt.Errorf("h2srv: client GOAWAY %v", f.ErrCode)
		}
		go sc.goAway(http2.ErrCodeNo, nil)
		return nil
	case *http2.PriorityFrame:
		if f.StreamID == f.StreamDep {
			sc.resetStream(f.StreamID, http2.ErrCodeProtocol)
		}
		return nil
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // clients do not push
	case *http2.ContinuationFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // Framer merges expected ones
	default:
		return nil // unknown frame types are ignored (RFC 9113 §4.1)
	}
}

func (sc *conn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		sc.mu.Lock()
		if sc.unackedSets == 0 {
			sc.mu.Unlock()
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		sc.unackedSets--
		sc.mu.Unlock()
		return nil
	}
	if f.NumSettings() > 100 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		sc.mu.Lock()
		defer sc.mu.Unlock()
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - int64(sc.peerWin)
			sc.peerWin = int32(s.Val)
			for _, st := range sc.streams {
				st.sendWin += delta
				if st.sendWin > 1<<31-1 {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
				st.wake()
			}
		case http2.SettingMaxFrameSize:
			sc.peerFrame = s.Val
		}
		return nil
	}); err != nil {
		return err
	}
	return sc.writeControl(func() error { return sc.fr.WriteSettingsAck() })
}

func (sc *conn) processWindowUpdate(f *http2.WindowUpdateFrame) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if f.StreamID == 0 {
		sc.sendWin += int64(f.Increment)
		if sc.sendWin > 1<<31-1 {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		for _, st := range sc.streams {
			if st.waitingWin {
				st.wake()
			}
		}
		return nil
	}
	if f.StreamID > sc.maxID {
		return http2.ConnectionError(http2.ErrCodeProtocol) // an idle stream
	}
	st := sc.streams[f.StreamID]
	if st == nil {
		return nil // closed: updates may still arrive
	}
	st.sendWin += int64(f.Increment)
	if st.sendWin > 1<<31-1 {
		go sc.resetStream(f.StreamID, http2.ErrCodeFlowControl)
		return nil
	}
	st.wake()
	return nil
}

func (sc *conn) processReset(f *http2.RSTStreamFrame) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if f.StreamID > sc.maxID {
		return http2.ConnectionError(http2.ErrCodeProtocol) // an idle stream
	}
	if st := sc.streams[f.StreamID]; st != nil {
		st.abortLocked(http2.StreamError{StreamID: f.StreamID, Code: f.ErrCode})
		sc.removeLocked(st)
	}
	return nil
}

// resetStream sends RST_STREAM and forgets the stream.
func (sc *conn) resetStream(id uint32, code http2.ErrCode) {
	sc.mu.Lock()
	if st := sc.streams[id]; st != nil {
		st.abortLocked(http2.StreamError{StreamID: id, Code: code})
		sc.removeLocked(st)
	}
	sc.mu.Unlock()
	sc.writeFrames(func() error { return sc.fr.WriteRSTStream(id, code) })
}

// removeLocked forgets a stream: its unread body's connection credit is
// returned, and a connection going away or idle is looked after.
func (sc *conn) removeLocked(st *stream) {
	if sc.streams[st.id] != st {
		return
	}
	delete(sc.streams, st.id)
	st.removed = true
	if n := st.body.discard(); n > 0 {
		sc.creditLocked(n)
	}
	if len(sc.streams) == 0 {
		if sc.goingAway {
			go sc.closeAfterGoAway()
		} else if sc.opts.IdleTimeout > 0 && !sc.closed {
			if sc.idle == nil {
				go sc.armIdle()
			} else {
				sc.idle.Reset(sc.opts.IdleTimeout)
			}
		}
	}
}

// creditLocked returns n consumed bytes of connection window, in steps.
func (sc *conn) creditLocked(n int) {
	sc.connCredit += n
	if sc.connCredit < connWindow/4 {
		return
	}
	c := sc.connCredit
	sc.connCredit = 0
	sc.recvWin += int64(c)
	go sc.writeFrames(func() error { return sc.fr.WriteWindowUpdate(0, uint32(c)) })
}

func (sc *conn) processHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 != 1 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	sc.mu.Lock()
	if st := sc.streams[id]; st != nil {
		err := st.trailersLocked(f, sc.canonical)
		sc.mu.Unlock()
		return err
	}
	if id <= sc.maxID {
		sc.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	sc.maxID = id
	if sc.goingAway {
		sc.mu.Unlock()
		return nil // above the GOAWAY's last stream: ignored
	}
	if uint32(len(sc.streams)) >= sc.maxStreams() {
		code := http2.ErrCodeProtocol
		if sc.unackedSets > 0 {
			code = http2.ErrCodeRefusedStream
		}
		sc.mu.Unlock()
		sc.resetStream(id, code)
		return nil
	}
	if sc.handlers >= 4*int(sc.maxStreams()) {
		// Handlers of reset streams still running: a client resetting
		// streams as fast as it opens them (CVE-2023-44487).
		sc.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	if f.HasPriority() && f.Priority.StreamDep == id {
		sc.mu.Unlock()
		sc.resetStream(id, http2.ErrCodeProtocol)
		return nil
	}
	sc.mu.Unlock()
	req, cont, err := newRequest(f, sc.canonical)
	var bad *errBadRequest
	if err != nil && !errors.As(err, &bad) {
		sc.s.logf("h2srv: refused request", "remote", sc.remote, "err", err)
		sc.resetStream(id, http2.ErrCodeProtocol)
		return nil
	}
	st := newStream(sc, id, req, !f.StreamEnded(), cont)
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		st.cancel()
		return nil
	}
	sc.streams[id] = st
	sc.handlers++
	if sc.idle != nil {
		sc.idle.Stop()
	}
	sc.mu.Unlock()
	h := sc.s.Handler
	if bad != nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, bad.msg, bad.code) })
	}
	sc.s.dispatch(streamTask{st, h})
	return nil
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

func (sc *conn) processData(f *http2.DataFrame) error {
	id, n := f.StreamID, int(f.Length)
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if int64(n) > sc.recvWin {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	sc.recvWin -= int64(n)
	st := sc.streams[id]
	if st == nil || st.recvDone {
		sc.creditLocked(n) // the connection's window is the client's to use again
		if id > sc.maxID {
			return http2.ConnectionError(http2.ErrCodeProtocol) // an idle stream
		}
		go sc.resetStream(id, http2.ErrCodeStreamClosed)
		return nil
	}
	if int64(n) > st.recvWin {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	st.recvWin -= int64(n)
	data := f.Data()
	if pad := n - len(data); pad > 0 {
		sc.creditLocked(pad) // padding is flow-controlled but never read
		st.recvWin += int64(pad)
	}
	st.got += int64(len(data))
	if st.declLen >= 0 && st.got > st.declLen {
		go sc.resetStream(id, http2.ErrCodeProtocol) // more than its Content-Length
		return nil
	}
	if len(data) > 0 {
		if st.bodyClosed {
			sc.creditLocked(len(data))
		} else {
			st.body.write(data)
		}
	}
	if f.StreamEnded() {
		if st.declLen >= 0 && st.got != st.declLen {
			go sc.resetStream(id, http2.ErrCodeProtocol)
			return nil
		}
		st.endBodyLocked(io.EOF)
	}
	st.wake()
	return nil
}
