package h2up

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/flowwin"
	"github.com/fogmesh/fogmesh/internal/h2meta"
)

// One connection: its writes (any goroutine, serialised by wmu, flushed by
// the last writer in line) and its read loop (frames to streams, read.go).

// A stream's receive window starts at 64 KiB and grows to 1 MiB while its
// reader keeps up (package flowwin): a response nobody reads holds 64 KiB
// in the agent (the agent's HTTP/2 server lets a client open 250 streams,
// and a client may have maxRequestsPerClient in flight).
const (
	connWindow     = 1 << 30 // the connection's, as net/http's transport: streams' windows bound it
	connUpdateAt   = 1 << 20 // connection credit is returned in steps of at least this
	maxHeaderList  = 10 << 20
	defaultMaxConc = 100 // streams assumed allowed before the server's SETTINGS say
)

var clientPreface = []byte(http2.ClientPreface)

// wlock is a mutex whose Lock may be given up (lockDone).
type wlock chan struct{}

func (l wlock) Lock()   { l <- struct{}{} }
func (l wlock) Unlock() { <-l }

// TryLock locks l if it is free.
func (l wlock) TryLock() bool {
	select {
	case l <- struct{}{}:
		return true
	default:
		return false
	}
}

// lockDone locks l unless done is closed first (nil: never).
func (l wlock) lockDone(done <-chan struct{}) bool {
	select {
	case l <- struct{}{}:
		return true
	case <-done:
		return false
	}
}

// errConnGone: the connection closed or went away before the stream was
// opened on it; RoundTrip tries another.
var errConnGone = errors.New("h2up: connection no longer takes streams")

// StreamError is an RST_STREAM from the server, or the refusal of a
// stream by GOAWAY. Its text names the code (REFUSED_STREAM: not
// processed, safe to retry).
type StreamError struct {
	ID   uint32
	Code http2.ErrCode
	Why  string
}

func (e *StreamError) Error() string {
	return fmt.Sprintf("h2up: stream %d reset by the server: %v%s", e.ID, e.Code, e.Why)
}

type conn struct {
	p    *Pool
	nc   net.Conn
	bw   *bufio.Writer
	fr   *http2.Framer
	meta *h2meta.Reader // reads fr's frames, header blocks decoded (read loop only)

	wmu wlock // guards bw, the framer's writes, henc, hbuf, werr
	// broken: the read loop panicked (recoverRead): the connection takes
	// no new stream, and reserve does not wait for mu, which the panic
	// may have left held (get waits for it holding the pool's lock).
	broken  atomic.Bool
	waiting atomic.Int32  // writers waiting for wmu: the last one flushes
	wseq    atomic.Uint64 // Writes to nc begun and ended (progressWriter): odd while one is in progress
	handoff atomic.Bool   // a flush of what a writer that gave up was owed is on its way (writeFlushCtx)
	henc    *h2meta.Encoder
	hbuf    bytes.Buffer
	werr    error
	// mayWrite's (async.go): the socket's descriptor (nil: none), the
	// bytes written since it last held nothing unacknowledged, its
	// SO_SNDBUF (read once; -1: unknown) and SIOCOUTQ's last figure.
	rc     syscall.RawConn
	wrote  int64
	sndbuf int
	outq   int
	outqFn func(fd uintptr)
	// owed: a writer left its frames to the next one in line to flush.
	owed bool
	// flushing: a writer yields before its flush (writeFlush); writers
	// meanwhile leave their frames to it.
	flushing bool
	// ctlTimer flushes writeControlLocked's frames if no request's write does
	// first; ctlArmed: it is running.
	ctlTimer *time.Timer
	ctlArmed bool

	// The read loop's control frames (SETTINGS and PING
	// acknowledgements), queued for the write lock (queueControl): the
	// read loop never waits for it. ctlMu guards ctlq, ctlSpare and
	// ctlWriter, never held while writing.
	ctlMu     sync.Mutex
	ctlq      []ctlFrame
	ctlSpare  []ctlFrame // ctlq's other buffer: writeQueued swaps them
	ctlWriter bool       // a goroutine waits for wmu to write ctlq
	// ctlPending: ctlq holds frames; the next holder of wmu writes them
	// before its own (writeLocked).
	ctlPending atomic.Bool

	mu         sync.Mutex // guards the following and the streams' send state
	cond       sync.Cond  // on mu: send windows, stream ends, close
	streams    map[uint32]*stream
	nextID     uint32
	reserved   int // slots handed out by reserve, not yet opened
	opened     int
	maxConc    uint32
	peerWin    int32 // the server's initial stream window
	sendWin    int64 // the connection's send window
	maxFrame   uint32
	goaway     bool // no new streams: GOAWAY received, pool closed, or MaxStreams reached
	closed     bool
	err        error // why closed
	connCredit int   // received bytes consumed, not yet returned in a WINDOW_UPDATE
	recvWin    int64 // the connection's receive window left
	idle       *time.Timer
	// The stall watchdog (stallwatch.go): wd ticks unless wseq holds
	// wdOff; wdSeen is wseq at its last tick, wdSame the ticks in a row
	// that saw that Write in progress.
	wd     *time.Timer
	wdSeen uint64
	wdSame int

	// Read loop only: br is the framer's reader; wakeLater, streams whose
	// readers were not yet woken for data because the next frame was
	// already buffered (most often the stream's trailers: the reader then
	// sees the data and the end together).
	br        *bufio.Reader
	wakeLater []*stream
	doneLater []*stream         // streams whose completion waits for their response's end (completeLater)
	rl        ReadLoop          // completions owed and flushes to make before the read loop waits (async.go)
	canon     map[string]string // header name -> canonical form (canonical)
}

func newConn(p *Pool, nc net.Conn) (*conn, error) {
	c := &conn{p: p, nc: nc, wmu: make(wlock, 1), streams: map[uint32]*stream{},
		nextID: 1, maxConc: defaultMaxConc, peerWin: 65535, sendWin: 65535, maxFrame: 16384, recvWin: connWindow}
	c.cond.L = &c.mu
	c.rl.c = c
	if sc, ok := nc.(syscall.Conn); ok {
		c.rc, _ = sc.SyscallConn()
	}
	c.bw = bufio.NewWriterSize(progressWriter{c}, 16<<10)
	c.br = bufio.NewReaderSize(nc, 16<<10)
	c.fr = http2.NewFramer(c.bw, c.br)
	c.meta = h2meta.New(c.fr, maxHeaderList) // header blocks decoded as ReadMetaHeaders would
	c.fr.SetMaxReadFrameSize(16384)
	c.fr.SetReuseFrames() // one DATA frame per connection: onData is done with it before the next read
	c.henc = h2meta.NewEncoder(&c.hbuf)
	c.bw.Write(clientPreface)
	c.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: flowwin.Initial},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList})
	c.fr.WriteWindowUpdate(0, connWindow-65535)
	if err := c.bw.Flush(); err != nil {
		nc.Close()
		return nil, fmt.Errorf("h2up: preface: %w", err)
	}
	// The watchdog starts stopped (wdOff), once the preface is sent.
	c.wd = time.AfterFunc(time.Hour, c.watchdogTick)
	c.wd.Stop()
	c.wseq.Or(wdOff)
	go c.readLoop()
	return c, nil
}

// reserve takes a stream slot for a request about to be sent; false if
// the connection is full or takes no new streams. Under the pool's lock.
func (c *conn) reserve() bool {
	if c.broken.Load() {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if h := testHookReserve; h != nil {
		h()
	}
	if c.closed || c.goaway || uint32(len(c.streams)+c.reserved) >= c.maxConc ||
		c.p.cfg.MaxStreams > 0 && c.opened+c.reserved >= c.p.cfg.MaxStreams {
		return false
	}
	c.reserved++
	if c.idle != nil {
		c.idle.Stop()
	}
	c.watchStallsLocked()
	return true
}

// write runs fn (framer writes) under the write lock and flushes unless
// another writer waits (it flushes in turn). A failed write closes the
// connection.
func (c *conn) write(fn func() error) error { return c.writeFlush(fn, true) }

// writeFlush is write; flush false leaves the frames buffered for the
// next write's flush (or a timer's: see roundTrip).
func (c *conn) writeFlush(fn func() error, flush bool) error {
	return c.writeFlushCtx(nil, fn, flush)
}

// errWaitDone: writeFlushCtx's done was closed before the write lock was
// taken (fn did not run).
var errWaitDone = errors.New("h2up: gave up waiting for the connection's writer")

// writeFlushCtx is writeFlush giving up, before fn runs, once ctx (nil:
// never) is done: a writer blocked in a write to an endpoint that does
// not read holds the lock. ctx's Done channel is asked for only if the
// lock is taken: making it costs an allocation (most requests' contexts
// are new).
func (c *conn) writeFlushCtx(ctx context.Context, fn func() error, flush bool) error {
	var done <-chan struct{}
	if ctx != nil {
		if c.wmu.TryLock() {
			defer c.wmu.Unlock()
			return c.writeLocked(fn, flush)
		}
		done = ctx.Done()
	}
	c.waiting.Add(1)
	if !c.wmu.lockDone(done) {
		c.waiting.Add(-1)
		// A writer that saw this one waiting may have left its frames
		// to this one's flush (owed): one goroutine per connection at a
		// time takes the lock and flushes what is owed.
		if c.handoff.CompareAndSwap(false, true) {
			go c.writeFlush(func() error { c.handoff.Store(false); return nil }, false)
		}
		return errWaitDone
	}
	c.waiting.Add(-1)
	defer c.wmu.Unlock()
	return c.writeLocked(fn, flush)
}

// writeLocked is writeFlushCtx's part under wmu (which it may give up
// and take again while it yields before a flush).
func (c *conn) writeLocked(fn func() error, flush bool) error {
	if c.werr != nil {
		return c.werr
	}
	// The read loop's control frames go first, with this write
	// (queueControl): its acknowledgements wait for no other writer.
	var err error
	ctl := c.ctlPending.Load()
	if ctl {
		_, err = c.writeQueued(-1)
	}
	if err == nil {
		err = fn()
	}
	if err == nil && (flush || c.owed) {
		switch {
		case c.waiting.Load() > 0 || c.flushing:
			c.owed = true // the next writer in line (or the one yielding) flushes, even one that would not
		default:
			// Yield once before the flush: requests of streams the agent's
			// server has just handed out (several read in one read) write
			// their HEADERS first and share this write. With nothing else
			// to run Gosched returns at once.
			c.flushing = true
			c.wmu.Unlock()
			if h := testHookYield; h != nil {
				h()
			}
			runtime.Gosched()
			c.wmu.Lock()
			c.flushing = false
			if c.werr != nil {
				return c.werr
			}
			if c.waiting.Load() == 0 {
				err = c.bw.Flush()
				c.owed = false
				if c.ctlArmed {
					// writeControlLocked's frames went with this flush.
					c.ctlArmed = false
					c.ctlTimer.Stop()
				}
			} else {
				c.owed = true
			}
		}
	}
	if err != nil {
		c.werr = fmt.Errorf("h2up: write: %w", err)
		c.nc.Close() // the read loop fails the streams
		return c.werr
	}
	if ctl {
		c.armControlFlush()
	}
	return nil
}

// armControlFlush makes controlFlushDelay's timer flush what is buffered
// unless it runs. Control frames have no flush of their own: the next
// request's write takes them along, or the timer flushes them. A grpc-go
// server pings after each request it reads (its BDP estimate): an
// acknowledgement flushed alone cost a system call per call. Under wmu.
func (c *conn) armControlFlush() {
	if c.ctlArmed || c.bw.Buffered() == 0 {
		return
	}
	c.ctlArmed = true
	d := time.Duration(controlFlushDelay.Load())
	if c.ctlTimer == nil {
		c.ctlTimer = time.AfterFunc(d, c.flushControl)
	} else {
		c.ctlTimer.Reset(d)
	}
}

// flush sends what writeFlush left buffered.
func (c *conn) flush() { c.write(func() error { return nil }) }

// ctlFrame is a control frame of the read loop's, queued for the write
// lock: a PING acknowledgement (ping), a WINDOW_UPDATE (wu: inc for
// stream id, 0 the connection) or a SETTINGS acknowledgement, after which
// (setTable) the encoder takes the SETTINGS' header table size.
type ctlFrame struct {
	ping      bool
	data      [8]byte // the PING's
	setTable  bool
	tableSize uint32
	wu        bool
	id, inc   uint32 // the WINDOW_UPDATE's
}

// queueControl has f written without the read loop waiting for the write
// lock: a writer blocked in a write to an endpoint that stopped reading
// holds it, and the read loop stopped with it (a response, an RST_STREAM
// or a GOAWAY that would end the writer's stream went unread until the
// stall watchdog closed the connection). When the lock is free and the
// write buffer has room, the read loop puts the frames in the buffer
// itself, as before (no write to the socket: that could block too);
// otherwise one goroutine waits for the lock and writes what is queued
// then, unless another writer does first (writeLocked), as x/net/http2's
// server leaves its acknowledgements to its writer. Frames go in the
// order queued: whoever takes them from the queue writes them under wmu.
//
// An endpoint that sends PINGs or SETTINGS while not reading our
// acknowledgements is cut at maxQueuedControl of them (as x/net/http2's
// server does): the queue does not grow without bound.
func (c *conn) queueControl(f ctlFrame) error {
	c.ctlMu.Lock()
	if len(c.ctlq) >= maxQueuedControl {
		c.ctlMu.Unlock()
		return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	c.ctlq = append(c.ctlq, f)
	c.ctlPending.Store(true)
	writer := c.ctlWriter // it writes f too
	c.ctlMu.Unlock()
	if writer {
		return nil
	}
	select {
	case c.wmu <- struct{}{}:
		done := c.werr != nil
		if !done {
			// Only if the buffer takes the whole queue, counted when
			// taken: credit queues from other goroutines too.
			var err error
			if done, err = c.writeQueued(c.bw.Available()); err != nil { // not expected: the buffer took them
				c.werr = fmt.Errorf("h2up: write: %w", err)
				c.nc.Close()
			} else if done {
				c.armControlFlush()
			}
		}
		c.wmu.Unlock()
		if done {
			return nil
		}
	default:
	}
	c.ctlMu.Lock()
	start := !c.ctlWriter && len(c.ctlq) > 0
	c.ctlWriter = c.ctlWriter || start
	c.ctlMu.Unlock()
	if start {
		go c.controlWriter()
	}
	return nil
}

// maxQueuedControl bounds the control frames queued (x/net/http2's
// server's maxQueuedControlFrames).
const maxQueuedControl = 10000

// ctlFrameMax is the most bytes a ctlFrame takes in the buffer (a PING:
// a 9-byte frame header and 8 bytes; a WINDOW_UPDATE takes 13).
const ctlFrameMax = 17

// controlWriter waits for the write lock (a stalled writer gives it up
// when the connection closes) and writes the queued control frames.
func (c *conn) controlWriter() {
	c.wmu.Lock()
	// Cleared before the queue is taken: a frame queued from now on is
	// written here, or by a writer queueControl starts, which waits for
	// this one's lock.
	c.ctlMu.Lock()
	c.ctlWriter = false
	c.ctlMu.Unlock()
	c.writeControlLocked()
	c.wmu.Unlock()
}

// writeControlLocked writes the queued control frames (writeLocked
// does, first), without a flush of their own. Under wmu.
func (c *conn) writeControlLocked() { c.writeLocked(func() error { return nil }, false) }

// writeQueued writes the queued control frames, in order. A SETTINGS
// acknowledgement follows its settings' application (RFC 9113 §6.5.3):
// the header table size is the encoder's from here, so every header
// block after the acknowledgement begins with the size update (RFC 7541
// §4.2), and every block before it was encoded within the old size.
// Under wmu. room >= 0: only if the queue takes at most room bytes
// (false: nothing taken, nothing written).
func (c *conn) writeQueued(room int) (bool, error) {
	c.ctlMu.Lock()
	if room >= 0 && ctlFrameMax*len(c.ctlq) > room {
		c.ctlMu.Unlock()
		return false, nil
	}
	q := c.ctlq
	c.ctlq, c.ctlSpare = c.ctlSpare[:0], nil
	c.ctlPending.Store(false)
	c.ctlMu.Unlock()
	var err error
	for i := 0; i < len(q) && err == nil; i++ {
		f := &q[i]
		switch {
		case f.ping:
			err = c.fr.WritePing(true, f.data)
		case f.wu:
			err = c.fr.WriteWindowUpdate(f.id, f.inc)
		default:
			if f.setTable {
				c.henc.SetMaxDynamicTableSizeLimit(f.tableSize)
			}
			err = c.fr.WriteSettingsAck()
		}
	}
	c.ctlMu.Lock()
	c.ctlSpare = q[:0]
	c.ctlMu.Unlock()
	return true, err
}

// controlFlushDelay bounds how long writeControlLocked's frames wait for a
// request's flush (as h2srv's flushDelay); nanoseconds.
var controlFlushDelay atomic.Int64

func init() { controlFlushDelay.Store(int64(time.Millisecond)) }

func (c *conn) flushControl() {
	c.wmu.Lock()
	c.ctlArmed = false
	pending := c.bw.Buffered() > 0
	c.wmu.Unlock()
	if pending {
		c.flush()
	}
}

// writeHeaderBlock writes HEADERS (and CONTINUATION) frames of the block
// in c.hbuf. Under wmu.
func (c *conn) writeHeaderBlock(id uint32, endStream bool, maxFrame uint32) error {
	block := c.hbuf.Bytes()
	first := true
	for first || len(block) > 0 {
		chunk := block
		if uint32(len(chunk)) > maxFrame {
			chunk = chunk[:maxFrame]
		}
		block = block[len(chunk):]
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: chunk, EndStream: endStream, EndHeaders: len(block) == 0})
			first = false
		} else {
			err = c.fr.WriteContinuation(id, len(block) == 0, chunk)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// close fails every stream with err and closes the connection.
func (c *conn) close(err error) { c.closeIf(err, nil) }

// closeIf is close if cond (nil: always) holds, checked under mu with
// the close: a stream opened in between keeps the connection.
func (c *conn) closeIf(err error, cond func() bool) {
	c.mu.Lock()
	if c.closed || cond != nil && !cond() {
		c.mu.Unlock()
		return
	}
	c.closed, c.err = true, err
	streams := c.streams
	c.streams = map[uint32]*stream{}
	if c.idle != nil {
		c.idle.Stop()
	}
	c.wd.Stop()
	c.cond.Broadcast()
	c.mu.Unlock()
	c.p.remove(c)
	c.nc.Close() // first: a writer blocked in a write holds wmu
	// The streams fail before the wait for wmu: a panic while it was
	// held (recoverRead) may have left it so.
	for _, s := range streams {
		s.fail(err)
	}
	c.wmu.Lock()
	if c.ctlTimer != nil {
		c.ctlTimer.Stop()
	}
	c.wmu.Unlock()
}

// closeIfIdle closes the connection if it carries no stream.
func (c *conn) closeIfIdle() {
	if c.broken.Load() {
		return // closed already, or its close waits for the locks (recoverRead)
	}
	c.closeIf(errIdleClosed, func() bool { return len(c.streams) == 0 && c.reserved == 0 })
}

var errIdleClosed = errors.New("h2up: idle connection closed")

// drain takes no new streams and closes once the streams in flight are done.
func (c *conn) drain() {
	if c.broken.Load() {
		return // as closeIfIdle
	}
	c.mu.Lock()
	c.goaway = true
	c.mu.Unlock()
	c.closeIfIdle()
}

// streamDone is called (without mu) after a stream left the map: an idle
// connection arms its idle timer, or closes when it takes no more streams.
func (c *conn) streamDone() {
	c.mu.Lock()
	if c.closed || len(c.streams) > 0 || c.reserved > 0 {
		c.mu.Unlock()
		return
	}
	// done: it takes no more streams (a server's MAX_CONCURRENT_STREAMS
	// of 0 too: a connection kept for its idle timeout would be one more
	// per request while the server says so).
	done := c.goaway || c.maxConc == 0 || c.p.cfg.MaxStreams > 0 && c.opened >= c.p.cfg.MaxStreams
	if !done {
		if c.idle == nil {
			c.idle = time.AfterFunc(c.p.cfg.IdleTimeout, c.closeIfIdle)
		} else {
			c.idle.Reset(c.p.cfg.IdleTimeout)
		}
	}
	c.mu.Unlock()
	if done {
		c.close(errors.New("h2up: connection done"))
	}
}

// unreserve gives back a slot that was not used.
func (c *conn) unreserve() {
	c.mu.Lock()
	c.reserved--
	c.mu.Unlock()
	c.streamDone()
}

// credit returns n consumed bytes to the connection's window (and s's,
// if still receiving) once enough have added up. drained: the stream's
// reader has just emptied its buffer, which may grow its window.
func (c *conn) credit(s *stream, n int, drained bool) { c.creditVia(s, n, drained, false) }

// creditVia is credit; queued: its WINDOW_UPDATEs are queued as the read
// loop's acknowledgements are (queueControl), which the read loop's
// credits must be: it must not wait for the write lock, which a writer
// blocked on an endpoint that stopped reading holds. The connection's
// credit alone (a reset stream's bytes, a closed body's) is queued from
// any goroutine: it comes in steps of connUpdateAt on a window of
// connWindow, the flush it waits for (at most controlFlushDelay) costs
// nothing, and Close of a body does not wait behind a stalled writer for
// it. A body's reads credit its stream at once, flushed.
func (c *conn) creditVia(s *stream, n int, drained, queued bool) {
	if n <= 0 {
		return
	}
	var connInc, streamInc uint32
	c.mu.Lock()
	c.connCredit += n
	if c.connCredit >= connUpdateAt {
		connInc = uint32(c.connCredit)
		c.recvWin += int64(c.connCredit)
		c.connCredit = 0
	}
	if s != nil && !s.recvEnd {
		s.credit += n
		var extra int64
		if !s.gone && !c.closed {
			extra = s.win.Consumed(n, drained, flowwin.Process)
		}
		if int64(s.credit) >= s.win.Size()/4 || extra > 0 {
			inc := int64(s.credit) + extra
			streamInc = uint32(inc)
			s.recvWin += inc
			s.credit = 0
		}
	}
	closed := c.closed
	c.mu.Unlock()
	if closed || connInc == 0 && streamInc == 0 {
		return
	}
	if queued || streamInc == 0 {
		var err error
		if connInc > 0 {
			err = c.queueControl(ctlFrame{wu: true, inc: connInc})
		}
		if err == nil && streamInc > 0 {
			err = c.queueControl(ctlFrame{wu: true, id: s.id, inc: streamInc})
		}
		if err != nil { // ENHANCE_YOUR_CALM: the read loop fails the streams
			c.nc.Close()
		}
		return
	}
	c.write(func() error {
		if connInc > 0 {
			if err := c.fr.WriteWindowUpdate(0, connInc); err != nil {
				return err
			}
		}
		if streamInc > 0 {
			return c.fr.WriteWindowUpdate(s.id, streamInc)
		}
		return nil
	})
}

var _ io.ReadCloser = (*body)(nil)
