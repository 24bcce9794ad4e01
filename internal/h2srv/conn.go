package h2srv

// One connection: its writes (any goroutine, serialised by wmu, flushed by
// the last writer in line) and its read loop.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/flowwin"
	"github.com/fogmesh/fogmesh/internal/h2meta"
)

// conn is one client connection. The read loop (serve) owns fr's reads;
// writes go through writeFrames.
type conn struct {
	s      *Server
	nc     net.Conn
	opts   ConnOptions
	remote string
	in     *inbuf // the bytes read, the Framer's source; read loop only
	fr     *http2.Framer
	meta   *h2meta.Reader    // fr's frames, header blocks decoded; read loop only
	canon  map[string]string // header name -> canonical, read loop only

	wmu sync.Mutex // guards bw, fr's writes, henc, hbuf, werr
	// broken: the read loop panicked (loopPanicked): the connection's
	// close is on its way, and neither Server.Close nor a GOAWAY
	// (Shutdown's) waits for mu, which the panic may have left held.
	broken  atomic.Bool
	waiting atomic.Int32 // writers waiting for wmu: the last one flushes
	bw      *bufio.Writer
	henc    *h2meta.Encoder
	hbuf    bytes.Buffer
	werr    error
	dirty   bool // bw holds frames not yet flushed
	// flushing: a writer yields before its flush (writeFrames); writers
	// meanwhile leave their frames to it.
	flushing bool
	yields   int // flushes that yielded first (tests)
	// flushTimer flushes writeControl's frames if no response does first.
	flushTimer *time.Timer
	flushArmed bool
	// controlPending: writeControl's frames wait for armControl (read
	// loop only).
	controlPending bool

	mu          sync.Mutex // guards the following and streams' flow state
	streams     map[uint32]*stream
	maxID       uint32 // highest client stream id seen
	goingAway   bool   // GOAWAY sent: no new streams
	lastID      uint32 // the GOAWAY's last stream id
	closed      bool
	closeErr    error
	sendWin     int64          // connection send window
	peerWin     int32          // the client's initial stream window
	peerFrame   uint32         // the client's max frame size
	connCredit  int            // consumed bytes not yet returned to the client
	held        int            // request body bytes buffered for handlers
	lent        int            // of them, credited to the client on receipt (heldLocked)
	recvWin     int64          // what the client may still send on the connection
	updates     map[uint32]int // WINDOW_UPDATE increments queued, by stream (0: the connection)
	updating    bool           // writeWindowUpdates runs
	handlers    int            // handlers running
	unackedSets int            // SETTINGS sent, not acknowledged
	idle        *time.Timer
	done        chan struct{} // closed when the read loop ends

	// A handler on the read loop's goroutine (inline.go).
	pending     streamTask             // a new stream held until the read loop would wait; read loop only
	queue       []streamTask           // new streams held so (Server.InlineAll); read loop only
	rawQueue    []streamTask           // the queue taken to run (takeQueue, loop); read loop only
	atMu        sync.Mutex             // guards atWait: a take-over's goroutine flushes it (takeOver)
	atWait      []Flusher              // flushes inline handlers left (AtWait)
	runRest     []streamTask           // the queue behind the handler running inline (runQueue): a take-over's winner dispatches it
	inlineSt    atomic.Pointer[stream] // the stream whose handler runs inline (WillWait)
	inlineOn    bool                   // the read loop may run a handler (serve's goroutine); read loop only
	inlineSkip  int                    // lone streams still to go to workers after a take-over; serve's goroutine
	inline      atomic.Int32           // inlineNone, inlineRun, inlineTaken
	wantBack    atomic.Bool            // serve's goroutine waits to read again (handBack)
	handBack    chan struct{}          // the read loop back to serve's goroutine
	inlineTimer *time.Timer            // takes the read loop over from a handler running long; serve's goroutine
	takeRC      syscall.RawConn
	rc          syscall.RawConn // the connection's descriptor (nil: none), for unsent
	outqFn      func(fd uintptr)
	outq        int                   // SIOCOUTQ's figure (mayWrite); under wmu
	sndbuf      int                   // SO_SNDBUF, read once (mayWrite; -1: unknown); under wmu
	wrote       countingWriter        // bw's writer: bytes written since mayWrite last asked the socket
	rawFn       func(fd uintptr) bool // rawRead; the read loop's
	rawOut      rawResult             // rawRead's; the read loop's
}

func newConn(s *Server, c net.Conn, o ConnOptions) *conn {
	sc := &conn{s: s, nc: c, opts: o, remote: c.RemoteAddr().String(), canon: map[string]string{},
		streams: map[uint32]*stream{}, sendWin: initialWindow, peerWin: initialWindow, peerFrame: 16384,
		recvWin: connWindow, done: make(chan struct{}), handBack: make(chan struct{}, 1)}
	if o.Context == nil {
		sc.opts.Context = context.Background()
	}
	sc.in = &inbuf{nc: c, buf: make([]byte, inbufSize)}
	sc.wrote.w = c
	sc.bw = bufio.NewWriterSize(&sc.wrote, 16<<10)
	sc.fr = http2.NewFramer(sc.bw, sc.in)
	sc.meta = h2meta.New(sc.fr, DefaultMaxHeaderList) // header blocks decoded as ReadMetaHeaders would
	sc.fr.SetReuseFrames()
	sc.fr.SetMaxReadFrameSize(maxReadFrame)
	sc.henc = h2meta.NewEncoder(&sc.hbuf)
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
	if sc.waiting.Load() > 0 || sc.flushing {
		return nil // the writer in line, or the one yielding, flushes
	}
	// Yield once before the flush: the handlers the read loop has just
	// woken (h2load's ten streams, read in one read) run first and add
	// their frames to this write instead of a write each. With nothing
	// else to run Gosched returns at once. Not when at most one stream
	// is open (a gRPC client's one call in flight): no other handler
	// would add frames, and the response would wait behind the other
	// connections' goroutines.
	if sc.openStreams() > 1 {
		sc.yields++
		sc.flushing = true
		sc.wmu.Unlock()
		runtime.Gosched()
		sc.wmu.Lock()
		sc.flushing = false
		if sc.werr != nil {
			return sc.werr
		}
	}
	if sc.dirty && sc.waiting.Load() == 0 {
		if err := sc.bw.Flush(); err != nil {
			sc.werr = err
			return err
		}
		sc.flushed()
	}
	return nil
}

// flushed records a flush of bw (under wmu): writeControl's frames went
// with it, so its timer is stopped. A gRPC client pings after every
// response; the timer fired (a goroutine each time) after the next
// response had taken the acknowledgement along.
func (sc *conn) flushed() {
	sc.dirty = false
	if sc.flushArmed {
		sc.flushArmed = false
		sc.flushTimer.Stop()
	}
}

// writeControl writes frames of the read loop's (PING and SETTINGS
// acknowledgements) without a flush of their own: the next response's
// flush takes them along, or a timer does, after flushDelay, or
// openFlushDelay while a stream is open (its response will). grpc-go pings
// after every response it reads (its BDP estimate); an acknowledgement
// flushed alone cost a system call per call. Inside serveRaw the timer is
// armed when the read loop is about to wait (armControl): by then the
// frames read with the PING have opened their streams (grpc-go's next call
// follows its PING).
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
	if sc.in.raw {
		sc.controlPending = true
		return nil
	}
	sc.armFlushLocked()
	return nil
}

// armControl arms the timer for writeControl's frames still unflushed;
// the read loop's, before it waits.
func (sc *conn) armControl() {
	if !sc.controlPending {
		return
	}
	sc.controlPending = false
	sc.wmu.Lock()
	if sc.dirty && sc.werr == nil {
		sc.armFlushLocked()
	}
	sc.wmu.Unlock()
}

func (sc *conn) armFlushLocked() {
	if sc.flushArmed {
		return
	}
	sc.flushArmed = true
	d := time.Duration(flushDelay.Load())
	if sc.openStreams() > 0 {
		d = time.Duration(openFlushDelay.Load())
	}
	if sc.flushTimer == nil {
		sc.flushTimer = time.AfterFunc(d, sc.flushPending)
	} else {
		sc.flushTimer.Reset(d)
	}
}

// flushDelay bounds how long writeControl's frames wait for a response's
// flush; nanoseconds (tests change it).
var flushDelay atomic.Int64

// openFlushDelay bounds it instead while a stream is open; nanoseconds.
var openFlushDelay atomic.Int64

func init() {
	flushDelay.Store(int64(time.Millisecond))
	openFlushDelay.Store(int64(10 * time.Millisecond))
}

// flushPending is the timer's flush. flushArmed may be stale (a flush
// stopped the timer after it fired, or writeControl reset it since): a
// flush here leaves nothing behind either way.
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
func (sc *conn) writeHeaderBlock(id uint32, endStream bool, encode func(enc hpackEncoder)) error {
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

func (sc *conn) openStreams() int {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return len(sc.streams)
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
	streamErr := err
	if err == io.EOF {
		// The client's close ends the connection in order, not a stream
		// it left open: a body read to a clean EOF there would pass for
		// the whole body.
		streamErr = io.ErrUnexpectedEOF
	}
	for _, st := range sc.streams {
		st.abortLocked(streamErr)
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
	if sc.broken.Load() {
		return // its read loop panicked: closed, or its close waits for mu (loopPanicked)
	}
	sc.mu.Lock()
	if sc.goingAway && code == http2.ErrCodeNo || sc.closed {
		sc.mu.Unlock()
		return
	}
	sc.goingAway = true
	sc.lastID = sc.maxID
	last, open := sc.lastID, len(sc.streams)
	sc.mu.Unlock()
	if code != http2.ErrCodeNo {
		// The connection ends whether the client reads the GOAWAY or not:
		// a write held up by a client that does not read is cut.
		t := time.AfterFunc(time.Second, func() { sc.closeConn(http2.ConnectionError(code)) })
		defer t.Stop()
	}
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
	// Frames still buffered (a writer's in line, acknowledgements) go
	// first.
	sc.wmu.Lock()
	if sc.dirty && sc.werr == nil {
		sc.bw.Flush()
		sc.flushed()
	}
	sc.wmu.Unlock()
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
	ended := true // the read loop ends here (not on a goroutine that took it over)
	defer func() {
		p := recover()
		if p != nil {
			sc.loopPanicked(p)
		}
		if ended {
			sc.endServe(p != nil)
		}
	}()
	sc.nc.SetReadDeadline(time.Now().Add(prefaceTimeout))
	if !prefaceRead {
		buf := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(sc.in, buf); err != nil || string(buf) != http2.ClientPreface {
			return
		}
	}
	sc.unackedSets = 1
	if err := sc.writeFrames(func() error {
		if err := sc.fr.WriteSettings(
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: sc.maxStreams()},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: flowwin.Initial},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: DefaultMaxHeaderList},
		); err != nil {
			return err
		}
		return sc.fr.WriteWindowUpdate(0, connWindow-initialWindow)
	}); err != nil {
		return
	}
	// RFC 9113 §3.4: the client's preface ends with a SETTINGS frame.
	f, err := sc.meta.ReadFrame()
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
	rc := sc.rawConn()
	sc.rc = rc
	for sc.loop(rc, true) == loopHandedOff {
		// A handler ran here and the read loop went to another goroutine
		// meanwhile: read again once that one would wait.
		sc.inlineSkip = max(sc.inlineSkip, skipAfterTakeOver)
		sc.wantBack.Store(true)
		select {
		case <-sc.handBack:
			sc.wantBack.Store(false)
		case <-sc.done:
			ended = false
			return
		}
	}
}

// loopPanicked ends the connection after a panic of its read loop,
// recovered by serve or readFor (a bug, in code reached from the client's
// frames; unrecovered, it would end the process and every connection
// with it), or of a stream's end on a worker (recoverWorker): the panic goes to Server.OnPanic, the socket is closed at
// once (no lock taken: the client sees the end, a writer blocked on it
// lets go), and the connection's state (its streams failed, their
// handlers' waits ended) is closed by a goroutine of its own, never the
// recovering one: the panic may have left mu or wmu held, which
// closeConn takes; the recovering goroutine ends either way (serve's
// returns from ServeConn). Once a lock was left held, what waits on it
// stays blocked: only the socket's close reaches them; the server's Close
// does not wait for it (broken).
func (sc *conn) loopPanicked(p any) {
	sc.broken.Store(true) // first: Server.Close leaves it to the close below
	sc.s.panicked(p)
	sc.nc.Close()
	go sc.closeConn(fmt.Errorf("h2srv: the read loop panicked: %v", p))
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
