package h2srv

// The read loop's handling of each frame type.

import (
	"fmt"
	"io"
	"net/http"

	"github.com/fogmesh/fogmesh/internal/flowwin"
	"golang.org/x/net/http2"
)

func (sc *conn) processFrame(f http2.Frame) error {
	if id := f.Header().StreamID; id != 0 {
		// RFC 9113 §6.8: after GOAWAY, frames of streams above its last
		// stream id are discarded (their DATA's connection window given
		// back).
		sc.mu.Lock()
		discard := sc.goingAway && id > sc.lastID
		if d, ok := f.(*http2.DataFrame); ok && discard {
			if int64(d.Length) > sc.recvWin {
				sc.mu.Unlock()
				return http2.ConnectionError(http2.ErrCodeFlowControl)
			}
			sc.recvWin -= int64(d.Length)
			sc.creditLocked(int(d.Length))
		}
		sc.mu.Unlock()
		if discard {
			return nil
		}
	}
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
	tableSize, setTable := uint32(0), false
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
		case http2.SettingHeaderTableSize:
			tableSize, setTable = s.Val, true
		}
		return nil
	}); err != nil {
		return err
	}
	return sc.writeControl(func() error {
		if setTable { // under wmu: every header block encoded from now on
			sc.henc.SetMaxDynamicTableSizeLimit(tableSize)
		}
		return sc.fr.WriteSettingsAck()
	})
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
		// Forgotten here, so the updates that follow find no stream: one
		// RST_STREAM written for it, not one goroutine per frame.
		st.abortLocked(http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeFlowControl})
		sc.removeLocked(st)
		go sc.writeFrames(func() error { return sc.fr.WriteRSTStream(f.StreamID, http2.ErrCodeFlowControl) })
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
		sc.consumedLocked(n)
	}
	st.win.Release()
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

// heldLocked records n bytes of request body buffered for a handler.
// Beyond half the connection's window held, they go back to the client at
// once, lent from the process's window budget (at most maxLent per
// connection) until a handler consumes them: streams whose handlers do
// not read (their endpoint is slow) then hold their own windows, not the
// whole connection's, and the client's other streams keep moving (as
// grpc-go's server, which credits the connection on receipt).
func (sc *conn) heldLocked(n int) {
	sc.held += n
	if sc.held > connWindow/2 && sc.lent+n <= maxLent && flowwin.Process.Take(int64(n)) {
		sc.lent += n
		sc.creditLocked(n)
	}
}

// consumedLocked records n held bytes read or discarded: they repay what
// was lent first, and the rest goes back to the client.
func (sc *conn) consumedLocked(n int) {
	sc.held -= n
	if r := min(n, sc.lent); r > 0 {
		sc.lent -= r
		flowwin.Process.Give(int64(r))
		n -= r
	}
	if n > 0 {
		sc.creditLocked(n)
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
	sc.windowUpdateLocked(0, c)
}

// windowUpdateLocked queues a WINDOW_UPDATE of n for stream id (0: the
// connection). One goroutine per connection writes what is queued,
// increments to one stream summed: a client that sends (padding, bodies
// credited on receipt) but does not read holds up that goroutine, not one
// parked goroutine per update.
func (sc *conn) windowUpdateLocked(id uint32, n int) {
	if sc.updates == nil {
		sc.updates = map[uint32]int{}
	}
	sc.updates[id] += n
	if !sc.updating {
		sc.updating = true
		go sc.writeWindowUpdates()
	}
}

func (sc *conn) writeWindowUpdates() {
	for {
		sc.mu.Lock()
		updates := sc.updates
		sc.updates = nil
		if len(updates) == 0 || sc.closed {
			sc.updating = false
			sc.mu.Unlock()
			return
		}
		sc.mu.Unlock()
		sc.writeFrames(func() error {
			for id, n := range updates {
				if err := sc.fr.WriteWindowUpdate(id, uint32(n)); err != nil {
					return err
				}
			}
			return nil
		})
	}
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
	sc.mu.Unlock()
	// The request is built before the stream is recorded: maxID and the
	// stream's entry change together below, so a GOAWAY (Shutdown, the
	// idle timer) either counts the stream as open or takes it for one
	// above its last stream id, never promises it and closes.
	st := new(stream) // first: the header's values may go in it
	req, cont, err := newRequest(f, sc.canonical, st.vals[:])
	bad, _ := err.(*errBadRequest) // newRequest's errors are not wrapped; errors.As would move bad to the heap
	malformed := err != nil && bad == nil
	if malformed {
		st = nil
	} else {
		newStream(st, sc, id, req, !f.StreamEnded(), cont)
	}
	drop := func() {
		if st != nil {
			st.cancel()
		}
	}
	sc.mu.Lock()
	sc.maxID = id
	if sc.goingAway {
		sc.mu.Unlock()
		drop()
		return nil // above the GOAWAY's last stream: ignored
	}
	if uint32(len(sc.streams)) >= sc.maxStreams() {
		code := http2.ErrCodeProtocol
		if sc.unackedSets > 0 {
			code = http2.ErrCodeRefusedStream
		}
		sc.mu.Unlock()
		drop()
		sc.resetStream(id, code)
		return nil
	}
	if sc.handlers >= 4*int(sc.maxStreams()) {
		// Handlers of reset streams still running: a client resetting
		// streams as fast as it opens them (CVE-2023-44487).
		sc.mu.Unlock()
		drop()
		return http2.ConnectionError(http2.ErrCodeEnhanceYourCalm)
	}
	if f.HasPriority() && f.Priority.StreamDep == id {
		sc.mu.Unlock()
		drop()
		sc.resetStream(id, http2.ErrCodeProtocol)
		return nil
	}
	if malformed {
		sc.mu.Unlock()
		sc.s.logf("h2srv: refused request", "remote", sc.remote, "err", err)
		sc.resetStream(id, http2.ErrCodeProtocol)
		return nil
	}
	if sc.closed {
		sc.mu.Unlock()
		drop()
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
	// A lone stream is held until the read loop has processed what it
	// read (serveRaw), which may then run it itself (inline.go); any
	// other goes to a worker now, a stream held before it first.
	if sc.queueStream(streamTask{st, h}) {
		return nil
	}
	if sc.inlineOn && sc.in.raw {
		sc.mu.Lock()
		others := sc.othersOpenLocked(st)
		sc.mu.Unlock()
		if others {
			sc.inlineSkip = skipAfterMultiplex
		} else if sc.inlineSkip > 0 {
			sc.inlineSkip--
		} else if sc.pending.st == nil {
			sc.pending = streamTask{st, h}
			return nil
		}
	}
	sc.dispatchPending()
	sc.s.dispatch(streamTask{st, h})
	return nil
}

func (sc *conn) processData(f *http2.DataFrame) error {
	reset, code, err := sc.processDataLocked(f)
	if reset {
		// From the read loop, not a goroutine per frame: a client that
		// does not read is held up here (its frames pile up in its own
		// socket), not in parked goroutines.
		sc.resetStream(f.StreamID, code)
	}
	return err
}

func (sc *conn) processDataLocked(f *http2.DataFrame) (reset bool, code http2.ErrCode, err error) {
	id, n := f.StreamID, int(f.Length)
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if int64(n) > sc.recvWin {
		return false, 0, http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	sc.recvWin -= int64(n)
	st := sc.streams[id]
	if st == nil || st.recvDone {
		sc.creditLocked(n) // the connection's window is the client's to use again
		if id > sc.maxID {
			return false, 0, http2.ConnectionError(http2.ErrCodeProtocol) // an idle stream
		}
		return true, http2.ErrCodeStreamClosed, nil
	}
	if int64(n) > st.recvWin {
		return false, 0, http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	st.recvWin -= int64(n)
	data := f.Data()
	if pad := n - len(data); pad > 0 {
		// Padding is flow-controlled but never read: it goes back to the
		// client at once, in the stream's WINDOW_UPDATE steps (kept here
		// without one, it shrank the client's window for good: RFC 9113
		// §6.9.1).
		sc.creditLocked(pad)
		st.credit += pad
		if c := st.credit; int64(c) >= st.win.Size()/4 && !st.recvDone {
			st.credit = 0
			st.recvWin += int64(c)
			sc.windowUpdateLocked(id, c)
		}
	}
	st.got += int64(len(data))
	if st.declLen >= 0 && st.got > st.declLen {
		sc.creditLocked(len(data))              // not buffered: the connection's window goes back
		return true, http2.ErrCodeProtocol, nil // more than its Content-Length
	}
	if len(data) > 0 {
		if st.bodyClosed {
			sc.creditLocked(len(data))
		} else {
			st.body.write(data)
			sc.heldLocked(len(data))
		}
	}
	if f.StreamEnded() {
		if st.declLen >= 0 && st.got != st.declLen {
			return true, http2.ErrCodeProtocol, nil
		}
		st.endBodyLocked(io.EOF)
	}
	st.wake()
	return false, 0, nil
}
