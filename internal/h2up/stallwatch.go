package h2up

import (
	"fmt"
	"os"
	"time"
)

// The stall watchdog: a connection whose write to the endpoint made no
// progress for Config.StallTimeout is closed.
//
// An endpoint that stops reading (or a path that went dead) leaves the
// connection's writer blocked in a write to a full socket for good.
// Requests on the connection give up at their deadlines (writeFlushCtx),
// but the connection, its writer and its buffers stayed, and a request
// without a deadline waited for ever. Closing the connection unblocks the
// write and fails its streams as any lost connection does; requests that
// waited to write go to a new connection (errConnGone).
//
// Writes pay no clock read or system call for it: each Write to the
// socket counts its start and its end (progressWriter), and a timer that
// ticks every StallTimeout/2 while the connection carries streams or a
// Write is in progress compares the count across ticks. It stops at a
// tick that finds the connection idle, marking the count (wdOff); the next
// reserve, or the next Write (a PING or SETTINGS acknowledgement, a
// WINDOW_UPDATE or RST_STREAM after a stream ended, a GOAWAY: an idle
// connection's writes), starts it again: Write reads the mark in the
// count it adds to anyway. A connection starts the timer at most once per
// StallTimeout/2, not per request. A Write seen in progress at three
// ticks in a row, the same one, began at least StallTimeout ago: the
// connection is closed between StallTimeout and 1.5 StallTimeout after a
// write's last progress. Progress is a Write's return; the socket is
// written bufio's 16 KiB buffer or one frame at a time (a request body's
// DATA frames are at most 16 KiB: bufPool). Without the start on Write, an
// idle connection whose acknowledgement blocked on an endpoint that stopped
// reading held its read loop until IdleTimeout (90 s by default).

const defaultStallTimeout = 10 * time.Second

// wdOff, in c.wseq: the watchdog's timer is stopped; whoever clears it
// (startWatchdog) starts it. Counting Writes never reaches it.
const wdOff = 1 << 63

// progressWriter is the connection's socket as its bufio.Writer writes
// it: c.wseq counts the start and the end of each Write (odd while one
// is in progress). Under wmu.
type progressWriter struct{ c *conn }

func (w progressWriter) Write(p []byte) (int, error) {
	if w.c.wseq.Add(1)&wdOff != 0 {
		w.c.startWatchdog()
	}
	n, err := w.c.nc.Write(p)
	w.c.wseq.Add(1)
	w.c.wrote += int64(n) // mayWrite's count
	return n, err
}

// watchStallsLocked makes the watchdog tick unless it does. Under mu.
func (c *conn) watchStallsLocked() { c.startWatchdog() }

// startWatchdog starts the watchdog's timer if it is stopped (wdOff):
// of several callers at once (reserve, Writes), the one that clears the
// mark starts it. A reserve while it ticks pays a load, as it paid a
// flag's.
func (c *conn) startWatchdog() {
	if c.wseq.Load()&wdOff != 0 && c.wseq.And(^uint64(wdOff))&wdOff != 0 {
		c.wd.Reset(c.p.cfg.StallTimeout / 2)
	}
}

// watchdogTick closes the connection if the Write in progress at the last
// two ticks is still the one in progress; it ticks again unless the
// connection is idle (no stream, no Write).
func (c *conn) watchdogTick() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	seq := c.wseq.Load()
	n := seq &^ wdOff
	if n&1 == 1 && n == c.wdSeen {
		c.wdSame++
	} else {
		c.wdSame = 0
	}
	c.wdSeen = n
	stalled := c.wdSame >= 2
	switch {
	case stalled:
	case n&1 == 0 && len(c.streams) == 0 && c.reserved == 0:
		// Idle: stop, unless a Write began or ended since the load (it
		// saw no mark, so it did not start the timer).
		if !c.wseq.CompareAndSwap(seq, seq|wdOff) {
			c.wd.Reset(c.p.cfg.StallTimeout / 2)
		}
	default:
		c.wd.Reset(c.p.cfg.StallTimeout / 2)
	}
	c.mu.Unlock()
	if stalled {
		c.close(fmt.Errorf("h2up: connection closed: a write to the endpoint made no progress for %v: %w",
			c.p.cfg.StallTimeout, os.ErrDeadlineExceeded))
	}
}
