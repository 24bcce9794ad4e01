package transport

import "github.com/hashicorp/yamux"

// InjectSessionForTest makes sess the cached session for meshAddr, as if a
// Dial had created it.
func (c *Client) InjectSessionForTest(meshAddr string, sess *yamux.Session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peers[meshAddr]
	if p == nil {
		p = newPeer()
		c.peers[meshAddr] = p
	}
	p.sess = sess
	c.m.sessions.Inc()
	c.wg.Add(1)
	go c.watchSession(meshAddr, p, sess, &peerAuth{})
}

// YamuxConfigForTest is the session config both ends use.
func YamuxConfigForTest() *yamux.Config { return yamuxConfig(DefaultStreamWindow) }
