package transport

import (
	"net"
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
	auth *peerAuth // nil in insecure mode
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
	return c.retireSession(meshAddr, nil)
}

// RetireAll retires every session (Retire). The agent calls it when its
// own node certificate was renewed: peers hold the old one for the
// sessions it authenticated, and cut them when it expires, so new streams
// go over new sessions that present the renewed certificate.
func (c *Client) RetireAll() int {
	c.mu.Lock()
	addrs := make([]string, 0, len(c.peers))
	for addr, p := range c.peers {
		if p.sess != nil {
			addrs = append(addrs, addr)
		}
	}
	c.mu.Unlock()
	n := 0
	for _, addr := range addrs {
		if c.retireSession(addr, nil) {
			n++
		}
	}
	return n
}

// retireSession retires the session to meshAddr if it is only (any when
// only is nil).
func (c *Client) retireSession(meshAddr string, only *yamux.Session) bool {
	c.mu.Lock()
	p := c.peers[meshAddr]
	if c.closed || p == nil || p.sess == nil || only != nil && p.sess != only {
		c.mu.Unlock()
		return false
	}
	sess := p.sess
	p.sess = nil
	c.retired[sess] = retiredSession{addr: meshAddr, id: p.id, auth: p.auth}
	c.retiredSet.Store(sess, struct{}{})
	p.refs++ // the session's streams go to p: it is not pruned until they end
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
		p.refs--
		c.mu.Unlock()
		c.retiredSet.Delete(sess)
	}()
	return true
}

// DropPeer closes every session whose TLS peer is id (a revoked node),
// retired ones included.
func (c *Client) DropPeer(id spiffeid.ID) int {
	c.mu.Lock()
	var drop []*yamux.Session
	for _, p := range c.peers {
		if p.sess != nil && !p.id.IsZero() && p.id == id {
			drop = append(drop, p.sess)
			p.sess = nil
		}
	}
	for sess, r := range c.retired {
		if !r.id.IsZero() && r.id == id {
			drop = append(drop, sess)
		}
	}
	c.mu.Unlock()
	for _, s := range drop {
		s.Close()
	}
	return len(drop)
}

// DropSession closes the session to meshAddr, so its streams fail at once,
// and every direct stream to meshAddr. The agent calls it when gossip declares the peer dead: a peer that froze
// or lost power sends no RST, and its streams would otherwise hang until
// TCP gives up. A session to meshAddr that Retire took out of use is
// closed too. The next Dial opens a fresh session.
func (c *Client) DropSession(meshAddr string) bool {
	c.mu.Lock()
	var drop []*yamux.Session
	if p := c.peers[meshAddr]; p != nil && p.sess != nil {
		drop = append(drop, p.sess)
		p.sess = nil
	}
	for sess, r := range c.retired {
		if r.addr == meshAddr {
			drop = append(drop, sess)
		}
	}
	var directs []net.Conn
	for t := range c.directs {
		if t.meshAddr == meshAddr {
			t.closedByUs.Store(true)
			directs = append(directs, t.closer)
		}
	}
	if p := c.peers[meshAddr]; p != nil {
		p.directUp.Store(false)
	}
	c.mu.Unlock()
	for _, sess := range drop {
		sess.Close()
	}
	for _, d := range directs {
		d.Close()
	}
	return len(drop)+len(directs) > 0
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
