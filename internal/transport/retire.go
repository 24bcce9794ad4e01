package transport

import (
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// retiredSession is where a retired session went, for DropSession and
// DropPeer.
type retiredSession struct {
	addr string
	id   spiffeid.ID
}

// retireCheck is how often a retired session is checked for its last
// stream.
const retireCheck = 500 * time.Millisecond

// Retire takes the session to meshAddr out of use without failing its
// streams: the next Dial opens a fresh session, and the retired one is
// closed once its last stream ends. The path manager calls it when a
// better path to the peer appears (a relayed session after a punch
// succeeded). It reports whether there was a session to retire.
func (c *Client) Retire(meshAddr string) bool {
	c.mu.Lock()
	p := c.peers[meshAddr]
	if c.closed || p == nil || p.sess == nil {
		c.mu.Unlock()
		return false
	}
	sess := p.sess
	p.sess = nil
	c.retired[sess] = retiredSession{addr: meshAddr, id: p.id}
	c.retiredSet.Store(sess, struct{}{})
	c.wg.Add(1)
	c.mu.Unlock()
	c.signalRetire()
	go func() {
		defer c.wg.Done()
		t := time.NewTicker(retireCheck)
		defer t.Stop()
		for sess.NumStreams() > 0 && !sess.IsClosed() {
			select {
			case <-sess.CloseChan():
			case <-t.C:
			}
		}
		sess.Close()
		c.mu.Lock()
		delete(c.retired, sess)
		c.mu.Unlock()
		c.retiredSet.Delete(sess)
	}()
	return true
}

// isRetired reports whether sess is retired and not yet closed.
func (c *Client) isRetired(sess *yamux.Session) bool {
	_, ok := c.retiredSet.Load(sess)
	return ok
}

// retireSignalChan returns the channel the next Retire closes.
func (c *Client) retireSignalChan() <-chan struct{} {
	c.retireSignalMu.Lock()
	defer c.retireSignalMu.Unlock()
	if c.retireSignal == nil {
		c.retireSignal = make(chan struct{})
	}
	return c.retireSignal
}

// signalRetire wakes the AfterRetire waiters: a session was retired.
func (c *Client) signalRetire() {
	c.retireSignalMu.Lock()
	if c.retireSignal != nil {
		close(c.retireSignal)
		c.retireSignal = nil
	}
	c.retireSignalMu.Unlock()
}

// AfterRetire arranges for f to run, once and in its own goroutine, when
// the client retires the stream's session (see Retired), unless stop is
// called first or the session closes. stop reports whether it stopped f
// from running; call it when the stream is closed. A stream that is no
// client's (server side) never runs f. HTTP/2 connections over a stream
// use it to drain from a path the agent left.
func (c *streamConn) AfterRetire(f func()) (stop func() bool) {
	if c.client == nil {
		return func() bool { return false }
	}
	done := make(chan struct{})
	var state atomic.Int32 // 0 waiting, 1 f ran, 2 stopped
	go c.awaitRetire(func() {
		if state.CompareAndSwap(0, 1) {
			f()
		}
	}, done)
	return func() bool {
		if state.CompareAndSwap(0, 2) {
			close(done)
			return true
		}
		return false
	}
}

// awaitRetire runs fire once the stream's session is retired; it ends
// without when done closes or the session closes.
func (c *streamConn) awaitRetire(fire func(), done <-chan struct{}) {
	sess := c.Stream.Session()
	for {
		signal := c.client.retireSignalChan() // before the check: no Retire is missed
		if c.client.isRetired(sess) {
			fire()
			return
		}
		select {
		case <-signal:
		case <-done:
			return
		case <-sess.CloseChan():
			return
		}
	}
}
