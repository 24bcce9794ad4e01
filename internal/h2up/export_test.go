package h2up

import (
	"errors"
	"net/http"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/flowwin"
)

// SetControlFlushDelay sets how long acknowledgements wait for a
// request's flush, and returns the old delay's restore.
func SetControlFlushDelay(d time.Duration) (restore func()) {
	old := controlFlushDelay.Swap(int64(d))
	return func() { controlFlushDelay.Store(old) }
}

// ControlFlushArmed reports whether a connection of p has writeControlLocked's
// timer armed, and whether p has a connection.
func ControlFlushArmed(p *Pool) (armed, found bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.wmu.Lock()
		armed, found = armed || c.ctlArmed, true
		c.wmu.Unlock()
	}
	return armed, found
}

// RoundTripReserved sends req on p's connection the way RoundTrip does,
// with something happening between the slot's reservation and the
// request's write: goaway, the connection takes a GOAWAY that leaves its
// open streams be (a request that picked the connection just before the
// server's GOAWAY arrived); otherwise nothing (req's context may be
// cancelled already: a caller that gave up meanwhile).
func RoundTripReserved(p *Pool, req *http.Request, goaway bool) (*http.Response, error) {
	p.mu.Lock()
	c := p.conns[0]
	reserved := c.reserve()
	p.mu.Unlock()
	if !reserved {
		return nil, errors.New("no slot on the connection")
	}
	if goaway {
		c.onGoAway(&http2.GoAwayFrame{LastStreamID: 1<<31 - 1})
	}
	return c.roundTrip(req)
}

// Buffered returns the streams open on p's connections and the response
// bytes they hold unread.
func Buffered(p *Pool) (streams, bytes int) {
	p.mu.Lock()
	conns := append([]*conn(nil), p.conns...)
	p.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		ss := make([]*stream, 0, len(c.streams))
		for _, s := range c.streams {
			ss = append(ss, s)
		}
		c.mu.Unlock()
		for _, s := range ss {
			s.mu.Lock()
			bytes += s.buf.Len()
			s.mu.Unlock()
		}
		streams += len(ss)
	}
	return streams, bytes
}

// SetWindowBudget sets what is left of the process's window growth budget,
// returning the old value's restore.
func SetWindowBudget(n int64) (restore func()) {
	old := flowwin.Process.Swap(n)
	return func() { flowwin.Process.Swap(old) }
}

// StreamWindows returns the receive windows of the streams open on p.
func StreamWindows(p *Pool) (wins []int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.mu.Lock()
		for _, s := range c.streams {
			wins = append(wins, s.win.Size())
		}
		c.mu.Unlock()
	}
	return wins
}

// Conns returns the number of connections in p.
func Conns(p *Pool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// WatchdogStopped reports whether p has a connection and the stall
// watchdogs of all its connections are stopped (their connections idle).
func WatchdogStopped(p *Pool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		if c.wseq.Load()&wdOff == 0 {
			return false
		}
	}
	return len(p.conns) > 0
}

// SetGoAwayLockWait sets how long the read loop waits for the write lock
// before its GOAWAY, and returns the old wait's restore.
func SetGoAwayLockWait(d time.Duration) (restore func()) {
	old := goAwayLockWait.Swap(int64(d))
	return func() { goAwayLockWait.Store(old) }
}

// HoldWriteLock takes the write lock of p's connection (a writer holding
// it) and returns its release; false when p has no connection.
func HoldWriteLock(p *Pool) (release func(), ok bool) {
	p.mu.Lock()
	if len(p.conns) == 0 {
		p.mu.Unlock()
		return nil, false
	}
	c := p.conns[0]
	p.mu.Unlock()
	c.wmu.Lock()
	return c.wmu.Unlock, true
}

// LockConns takes the lock (mu) of each of p's connections and returns
// its release.
func LockConns(p *Pool) (unlock func()) {
	p.mu.Lock()
	conns := append([]*conn(nil), p.conns...)
	p.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
	}
	return func() {
		for _, c := range conns {
			c.mu.Unlock()
		}
	}
}

// SetReserveHook has f called by every reservation of a stream slot
// (conn.reserve, the pool's lock held), until restore.
func SetReserveHook(f func()) (restore func()) {
	testHookReserve = f
	return func() { testHookReserve = nil }
}

// WriteBuffered returns the bytes in the write buffer of p's first
// connection, or -1 while its writer is busy (or p has none).
func WriteBuffered(p *Pool) int {
	p.mu.Lock()
	var c *conn
	if len(p.conns) > 0 {
		c = p.conns[0]
	}
	p.mu.Unlock()
	if c == nil || !c.wmu.TryLock() {
		return -1
	}
	defer c.wmu.Unlock()
	return c.bw.Buffered()
}

// SetYieldHook has f called by every writer that lets the write lock go
// to yield before its flush (writeLocked), until restore.
func SetYieldHook(f func()) (restore func()) {
	testHookYield = f
	return func() { testHookYield = nil }
}
