package transport

import (
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
)

// A Client's view of its peers: the session to each, what it measured of
// the path (RTT), and whether the path is live.
//
// A Client learns a peer per mesh address it dials, and on a long-running
// agent peers come and go (nodes replaced, addresses that NAT, hole
// punching or relays change). So a peer is forgotten, from peers and rtts,
// once nothing holds it (refs: no Dial in progress, retired session or
// direct stream) and it has no live session and was last dialed more than
// peerIdle ago. Only a Dial adds a peer, so a Dial's end sweeps, at most
// every peerIdle/sweepsPerIdle: no goroutine or timer per peer, and RTT,
// read per request, stays a lock-free load.

// defaultPeerIdle is how long a peer with nothing open is kept after its
// last Dial: longer than noDirectFor, so a peer that takes no direct
// streams is not tried again early, and long enough that a peer dialed
// now and then keeps its RTT between dials.
const defaultPeerIdle = 5 * time.Minute

// sweepsPerIdle is how many sweeps for idle peers a Dial may run per
// peerIdle: an idle peer is forgotten within 1¼ peerIdle of its last Dial
// if Dials go on.
const sweepsPerIdle = 4

// peer is the session to one peer agent.
type peer struct {
	// dialing holds one token: whoever takes it may create the session,
	// so concurrent Dials to a new peer share one TCP connection.
	dialing chan struct{}
	sess    *yamux.Session // guarded by Client.mu; nil before the first dial
	id      spiffeid.ID    // guarded by Client.mu; the TLS peer of sess
	auth    *peerAuth      // guarded by Client.mu; what sess authenticated
	rtt     atomic.Int64   // smoothed round-trip time in ns; 0 = not measured
	// directUp is whether the last connection of a direct stream to the
	// peer got through (direct.go): the path is live, as with a session.
	directUp atomic.Bool
	// noDirectUntil (Unix ns): until then the peer gets yamux streams
	// only (it closed a direct stream without an answer).
	noDirectUntil atomic.Int64
	directRate    *rate.Limiter // direct streams opened (directPerSecond)
	// refs counts what holds the peer: Dials in progress, its retired
	// sessions still open and its direct streams. Guarded by Client.mu.
	// A held peer is not pruned, so a session or stream is never made for
	// a peer the client forgot (Close would miss it).
	refs   int
	dialed time.Time // guarded by Client.mu; when the last Dial to it ended
}

func newPeer() *peer {
	return &peer{dialing: make(chan struct{}, 1), directRate: rate.NewLimiter(directPerSecond, directPerSecond)}
}

// observeRTT folds one RTT sample into the smoothed RTT: an EWMA
// (α = 1/4), so one slow sample moves it little.
func (p *peer) observeRTT(d time.Duration) {
	if d <= 0 {
		return
	}
	old := p.rtt.Load()
	if old == 0 {
		p.rtt.Store(int64(d))
	} else {
		p.rtt.Store(old + (int64(d)-old)/4)
	}
}

// RTT is the smoothed round-trip time to the peer agent at meshAddr,
// measured by pinging its session and from the kernel's RTT of each direct
// stream's connection; false before either was measured.
func (c *Client) RTT(meshAddr string) (time.Duration, bool) {
	v, ok := c.rtts.Load(meshAddr)
	if !ok {
		return 0, false
	}
	d := v.(*peer).rtt.Load()
	return time.Duration(d), d > 0
}

// Sessions returns the number of open sessions.
func (c *Client) Sessions() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, p := range c.peers {
		if p.sess != nil && !p.sess.IsClosed() {
			n++
		}
	}
	return n
}

// Live reports whether the session to meshAddr is open, or the last
// direct stream's connection to it got through: a Dial on it that failed
// without the peer's answer (its deadline passed while the peer connected
// a slow workload) says nothing against the path.
func (c *Client) Live(meshAddr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peers[meshAddr]
	return p != nil && (p.sess != nil && !p.sess.IsClosed() || p.directUp.Load())
}

// holdPeer returns the peer for meshAddr, creating it, and holds it for a
// Dial until releasePeer.
func (c *Client) holdPeer(meshAddr string) (*peer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("client: %w", net.ErrClosed)
	}
	p := c.peers[meshAddr]
	if p == nil {
		p = newPeer()
		c.peers[meshAddr] = p
		c.rtts.Store(meshAddr, p)
	}
	p.refs++
	return p, nil
}

// releasePeer ends a Dial's hold on p, and sweeps idle peers when a sweep
// is due.
func (c *Client) releasePeer(p *peer) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	p.refs--
	p.dialed = now
	if now.Sub(c.swept) >= c.peerIdle/sweepsPerIdle {
		c.sweepLocked(now)
	}
}

// sweepLocked forgets the peers that nothing holds, with no live session,
// last dialed peerIdle or more before now.
func (c *Client) sweepLocked(now time.Time) {
	c.swept = now
	for addr, p := range c.peers {
		if p.refs == 0 && (p.sess == nil || p.sess.IsClosed()) && now.Sub(p.dialed) >= c.peerIdle {
			delete(c.peers, addr)
			c.rtts.CompareAndDelete(addr, p)
		}
	}
}
