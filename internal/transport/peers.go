package transport

import (
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/time/rate"
)

// A Client's view of its peers: the session to each, what it measured of
// the path (RTT), and whether the path is live.

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
