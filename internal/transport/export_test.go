package transport

import (
	"slices"
	"time"

	"github.com/hashicorp/yamux"
)

// InjectSessionForTest makes sess the cached session for meshAddr, as if a
// Dial had created it.
func (c *Client) InjectSessionForTest(meshAddr string, sess *yamux.Session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peers[meshAddr]
	if p == nil {
		p = newPeer()
		c.peers[meshAddr] = p
		c.rtts.Store(meshAddr, p)
	}
	p.sess = sess
	c.m.sessions.Inc()
	c.wg.Add(1)
	go c.watchSession(meshAddr, p, sess, &peerAuth{})
}

// YamuxConfigForTest is the session config both ends use.
func YamuxConfigForTest() *yamux.Config { return yamuxConfig(DefaultStreamWindow) }

// peerForTest returns the peer for meshAddr, creating it as a Dial does.
func (c *Client) peerForTest(meshAddr string) (*peer, error) {
	p, err := c.holdPeer(meshAddr)
	if err == nil {
		c.releasePeer(p)
	}
	return p, err
}

// SetPeerIdleForTest sets how long a peer with nothing open is kept after
// its last Dial (defaultPeerIdle); a Dial sweeps every d/sweepsPerIdle.
func (c *Client) SetPeerIdleForTest(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peerIdle = d
}

// PeersForTest returns the mesh addresses the client keeps a peer for, in
// its map and in rtts (RTT's lock-free index), sorted.
func (c *Client) PeersForTest() (peers, rtts []string) {
	c.mu.Lock()
	for addr := range c.peers {
		peers = append(peers, addr)
	}
	c.mu.Unlock()
	c.rtts.Range(func(k, _ any) bool {
		rtts = append(rtts, k.(string))
		return true
	})
	slices.Sort(peers)
	slices.Sort(rtts)
	return peers, rtts
}

// SetPeerIdleForTest is Client.SetPeerIdleForTest's for QUIC.
func (c *QUICClient) SetPeerIdleForTest(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peerIdle = d
}

// PeersForTest returns the mesh addresses the client keeps a peer for, sorted.
func (c *QUICClient) PeersForTest() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	peers := make([]string, 0, len(c.peers))
	for addr := range c.peers {
		peers = append(peers, addr)
	}
	slices.Sort(peers)
	return peers
}

// yamuxStreamsForTest returns the streams yamux holds in the server's
// sessions that are not closed (a closed one is being let go): served,
// lingering after their end, and not yet accepted.
func (s *Server) yamuxStreamsForTest() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for sess := range s.sessions {
		if !sess.IsClosed() {
			n += sess.NumStreams()
		}
	}
	return n
}

// peersForTest returns how many peers l keeps a count for.
func (l *PeerStreams) peersForTest() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.peers)
}

// yamuxSessionsForTest returns how many yamux sessions l keeps for the
// buffer budget, over all peers.
func (l *PeerStreams) yamuxSessionsForTest() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, pc := range l.peers {
		pc.yamux.mu.Lock()
		n += len(pc.yamux.list)
		pc.yamux.mu.Unlock()
	}
	return n
}

// setCutEveryForTest sets the window of the server's buffer cut reports
// (peerBufferWarnEvery).
func (s *Server) setCutEveryForTest(d time.Duration) {
	s.cuts.mu.Lock()
	defer s.cuts.mu.Unlock()
	s.cuts.every = d
}
