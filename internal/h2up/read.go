package h2up

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// The connection's read loop: frames to streams, SETTINGS, GOAWAY, flow
// control.

// readLoop reads frames until the connection fails.
func (c *conn) readLoop() {
	defer c.recoverRead()
	var err error
	for {
		if (len(c.wakeLater) > 0 || c.rl.pending()) && !c.nextFrameBuffered() {
			c.wakeStreams() // before a read that may wait
			c.beforeWait()
		}
		var f http2.Frame
		f, err = c.meta.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.streamProtocolError(se.StreamID, se.Code, se.Error())
				continue
			}
			break
		}
		if err = c.process(f); err != nil {
			break
		}
	}
	c.wakeStreams()
	c.beforeWait()
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		c.goAway(http2.ErrCode(ce))
	}
	c.close(fmt.Errorf("h2up: connection lost: %w", err))
}

// recoverRead, deferred first by readLoop (a goroutine of the pool's),
// recovers a panic in it (a bug, in code reached from the endpoint's
// frames): the panic goes to Config.OnPanic and the connection is closed,
// its streams failed, rather than the process ending. The socket is
// closed first, taking no lock: the endpoint sees the end, a writer
// blocked on it lets go. Then the connection's state, which close changes
// under mu and wmu: here if both are free (TryLock), else by a goroutine
// of its own, never waiting here. A lock has no owner: a held mu or wmu
// may be another goroutine's for a moment (the close follows it) or the
// panicked code's own for good (a section that unlocks without defer),
// and unlocking another's would be fatal. Waiting here would keep the
// read loop's goroutine for good in the second case; the spawned close
// waits instead (and so does whatever else waits for that lock: the
// streams fail first, the wait for wmu comes last, closeIf). The pool
// never waits for it: the connection is marked broken before anything,
// and the pool's get (which reserves a slot holding the pool's lock),
// Close and CloseIdleConnections skip it without taking mu; it leaves
// the pool when its close has the locks.
func (c *conn) recoverRead() {
	if p := recover(); p != nil {
		c.broken.Store(true) // first: get skips c from now on
		c.p.panicked(p)
		c.nc.Close()
		c.orphaned()
		err := fmt.Errorf("h2up: connection lost: the read loop panicked: %v", p)
		if c.mu.TryLock() {
			free := c.wmu.TryLock()
			c.mu.Unlock()
			if free {
				c.wmu.Unlock()
				c.close(err)
				return
			}
		}
		go c.close(err)
	}
}

// goAway tells the endpoint why the read loop closes the connection.
// When a writer holds the write lock the read loop waits for it at most
// goAwayLockWait, then closes without the GOAWAY: a writer blocked on an
// endpoint that stopped reading would hold it until the stall watchdog
// closed the connection, and the close (which ends that write) fails the
// streams. The control frames queued before it (queueControl) go first,
// in order; a write deadline bounds the flush.
func (c *conn) goAway(code http2.ErrCode) {
	select {
	case c.wmu <- struct{}{}:
	default:
		t := time.NewTimer(time.Duration(goAwayLockWait.Load()))
		select {
		case c.wmu <- struct{}{}:
			t.Stop()
		case <-t.C:
			return
		}
	}
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	c.nc.SetWriteDeadline(time.Now().Add(goAwayWait))
	var err error
	if c.ctlPending.Load() {
		_, err = c.writeQueued(-1)
	}
	if err == nil {
		err = c.fr.WriteGoAway(0, code, nil)
	}
	if err == nil {
		err = c.bw.Flush()
	}
	if err != nil {
		c.werr = fmt.Errorf("h2up: write: %w", err)
	}
}

// goAwayWait bounds the write of the read loop's GOAWAY.
const goAwayWait = time.Second

// goAwayLockWait bounds the read loop's wait for the write lock before
// its GOAWAY (goAway); nanoseconds.
var goAwayLockWait atomic.Int64

func init() { goAwayLockWait.Store(int64(time.Second)) }

// nextFrameBuffered reports whether a whole frame is buffered: reading it
// does not wait.
func (c *conn) nextFrameBuffered() bool {
	n := c.br.Buffered()
	if n < 9 {
		return false
	}
	h, _ := c.br.Peek(9)
	return n >= 9+(int(h[0])<<16|int(h[1])<<8|int(h[2]))
}

func (c *conn) wakeStreams() {
	for i, s := range c.wakeLater {
		s.mu.Lock()
		s.held = false
		s.cond.Broadcast()
		s.mu.Unlock()
		c.wakeLater[i] = nil
	}
	c.wakeLater = c.wakeLater[:0]
}

func (c *conn) stream(id uint32) *stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

// streamProtocolError resets a stream the server broke the rules on.
func (c *conn) streamProtocolError(id uint32, code http2.ErrCode, why string) {
	if s := c.stream(id); s != nil {
		s.resetAsync(code, &StreamError{ID: id, Code: code, Why: ": " + why}, true, true)
	}
}

func (c *conn) process(f http2.Frame) error {
	id := f.Header().StreamID
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		s := c.stream(id)
		if s == nil {
			c.mu.Lock()
			unopened := id >= c.nextID
			c.mu.Unlock()
			if unopened || id%2 == 0 {
				return http2.ConnectionError(http2.ErrCodeProtocol)
			}
			return nil // a stream we reset
		}
		s.onHeaders(f)
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.RSTStreamFrame:
		if s := c.stream(id); s != nil {
			s.reset(f.ErrCode, &StreamError{ID: id, Code: f.ErrCode}, false)
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		ack := ctlFrame{}
		if err := c.onSettings(f, &ack); err != nil {
			return err
		}
		if err := c.queueControl(ack); err != nil {
			return err
		}
		c.mu.Lock()
		none := c.maxConc == 0
		c.mu.Unlock()
		if none {
			c.streamDone() // closes it if it carries no stream
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			return c.queueControl(ctlFrame{ping: true, data: f.Data})
		}
	case *http2.WindowUpdateFrame:
		c.mu.Lock()
		defer c.mu.Unlock()
		if id == 0 {
			c.sendWin += int64(f.Increment)
			if c.sendWin > 1<<31-1 {
				return http2.ConnectionError(http2.ErrCodeFlowControl)
			}
		} else if s := c.streams[id]; s != nil {
			s.sendWin += int64(f.Increment)
			if s.sendWin > 1<<31-1 {
				go s.reset(http2.ErrCodeFlowControl, &StreamError{ID: id, Code: http2.ErrCodeFlowControl}, true)
			}
		}
		c.cond.Broadcast()
	case *http2.GoAwayFrame:
		c.onGoAway(f)
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // push is disabled
	}
	return nil
}

// onSettings applies f's settings but the header table size, which ack
// takes to the encoder with the acknowledgement (writeQueued).
func (c *conn) onSettings(f *http2.SettingsFrame, ack *ctlFrame) error {
	return f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			return err
		}
		switch st.ID {
		case http2.SettingMaxConcurrentStreams:
			c.mu.Lock()
			c.maxConc = st.Val
			c.mu.Unlock()
		case http2.SettingInitialWindowSize:
			c.mu.Lock()
			delta := int64(st.Val) - int64(c.peerWin)
			c.peerWin = int32(st.Val)
			for _, s := range c.streams {
				s.sendWin += delta
			}
			c.cond.Broadcast()
			c.mu.Unlock()
		case http2.SettingMaxFrameSize:
			c.mu.Lock()
			c.maxFrame = st.Val
			c.mu.Unlock()
		case http2.SettingHeaderTableSize:
			ack.setTable, ack.tableSize = true, st.Val
		}
		return nil
	})
}

func (c *conn) onGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.goaway = true
	var refused []*stream
	for id, s := range c.streams {
		if id > f.LastStreamID {
			refused = append(refused, s)
		}
	}
	c.mu.Unlock()
	c.p.remove(c)
	for _, s := range refused {
		s.reset(http2.ErrCodeRefusedStream, &StreamError{ID: s.id, Code: http2.ErrCodeRefusedStream, Why: " (GOAWAY: not processed)"}, false)
	}
	c.streamDone()
}

func (c *conn) onData(f *http2.DataFrame) error {
	id, n := f.StreamID, int(f.Length)
	c.mu.Lock()
	c.recvWin -= int64(n)
	if c.recvWin < 0 {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	s := c.streams[id]
	if s == nil {
		unopened := id >= c.nextID
		c.mu.Unlock()
		if unopened {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		c.credit(nil, n, false) // a stream we reset: its bytes go back at once
		return nil
	}
	if s.recvEnd || s.resp == nil {
		c.mu.Unlock()
		c.credit(nil, n, false)
		s.resetAsync(http2.ErrCodeStreamClosed, &StreamError{ID: id, Code: http2.ErrCodeProtocol, Why: ": DATA before response headers or after the end"}, true, true)
		return nil
	}
	s.recvWin -= int64(n)
	if s.recvWin < 0 {
		c.mu.Unlock()
		c.credit(nil, n, false)
		s.resetAsync(http2.ErrCodeFlowControl, &StreamError{ID: id, Code: http2.ErrCodeFlowControl}, true, true)
		return nil
	}
	ended := f.StreamEnded()
	if ended {
		s.recvEnd = true
	}
	c.mu.Unlock()
	data := f.Data()
	if pad := n - len(data); pad > 0 {
		c.creditVia(s, pad, false, true)
	}
	later := len(data) > 0 && !ended && c.nextFrameBuffered()
	if later {
		c.wakeLater = append(c.wakeLater, s)
	}
	if len(data) > 0 && !s.push(data, !later) {
		c.credit(nil, len(data), false) // the body was closed: nobody reads it
	}
	if ended {
		if !s.checkLength() {
			s.resetAsync(http2.ErrCodeProtocol, &StreamError{ID: id, Code: http2.ErrCodeProtocol, Why: ": body length differs from content-length"}, true, true)
			return nil
		}
		s.end(nil)
	}
	return nil
}
