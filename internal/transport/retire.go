package transport

import (
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
