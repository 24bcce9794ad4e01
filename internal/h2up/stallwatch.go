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
// ticks every StallTimeout/2 while the connection carries streams
// compares the count across ticks. It stops at a tick that finds the
// connection idle and the next reserve starts it again: a connection
// starts the timer at most once per StallTimeout/2, not per request. A
// Write seen in progress at three ticks in a row, the same one, began at
// least StallTimeout ago: the connection is closed between StallTimeout
// and 1.5 StallTimeout after a write's last progress. Progress is a
// Write's return; the socket is written bufio's 16 KiB buffer or one
// frame at a time (a request body's DATA frames are at most 16 KiB:
// bufPool).

const defaultStallTimeout = 10 * time.Second

// progressWriter is the connection's socket as its bufio.Writer writes
// it: c.wseq counts the start and the end of each Write (odd while one
// is in progress). Under wmu.
type progressWriter struct{ c *conn }

func (w progressWriter) Write(p []byte) (int, error) {
	w.c.wseq.Add(1)
	n, err := w.c.nc.Write(p)
	w.c.wseq.Add(1)
	return n, err
}

// watchStallsLocked makes the watchdog tick unless it does. Under mu.
func (c *conn) watchStallsLocked() {
	if c.wdArmed {
		return
	}
	c.wdArmed = true
	d := c.p.cfg.StallTimeout / 2
	if c.wd == nil {
		c.wd = time.AfterFunc(d, c.watchdogTick)
	} else {
		c.wd.Reset(d)
	}
}

// watchdogTick closes the connection if the Write in progress at the last
// two ticks is still the one in progress; it ticks again unless the
// connection is idle (no stream, no Write).
func (c *conn) watchdogTick() {
	c.mu.Lock()
	if c.closed {
		c.wdArmed = false
		c.mu.Unlock()
		return
	}
	seq := c.wseq.Load()
	if seq&1 == 1 && seq == c.wdSeen {
		c.wdSame++
	} else {
		c.wdSame = 0
	}
	c.wdSeen = seq
	stalled := c.wdSame >= 2
	if stalled || seq&1 == 0 && len(c.streams) == 0 && c.reserved == 0 {
		c.wdArmed = false
	} else {
		c.wd.Reset(c.p.cfg.StallTimeout / 2)
	}
	c.mu.Unlock()
	if stalled {
		c.close(fmt.Errorf("h2up: connection closed: a write to the endpoint made no progress for %v: %w",
			c.p.cfg.StallTimeout, os.ErrDeadlineExceeded))
	}
}
