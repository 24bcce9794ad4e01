package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// PoolConfig configures a Pool. Every field but Relays and TLS has a
// working zero value.
type PoolConfig struct {
	// Relays are the relays' addresses (host:port), for example one per
	// region. The agent connects to every one of them: a peer is reachable
	// through any relay both are connected to, so two agents with the same
	// list always share one while any relay is up. Required.
	Relays []string
	// TLS is the mesh mTLS client configuration (see DialClient).
	// Required.
	TLS *tls.Config
	// Dial opens the TCP connections (default: a net.Dialer).
	Dial DialFunc
	// KeepAlive is how often each relay is pinged: it holds NAT mappings,
	// measures the RTT that picks the home relay and finds a relay that
	// went silent (default 15s, below common NAT idle timeouts and the
	// relay's 90s ControlTimeout).
	KeepAlive time.Duration
	// PingTimeout: a relay that does not answer a ping within it is
	// considered lost; its connection is closed and redialed (default 5s).
	PingTimeout time.Duration
	// DialTimeout bounds one connection attempt to a relay and one
	// DialPeer attempt through one relay (default 5s).
	DialTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between reconnection
	// attempts to a lost relay; it doubles after each failure, with
	// ±20% jitter (defaults 100ms and 10s).
	MinBackoff, MaxBackoff time.Duration
	// Hysteresis: the home relay changes to a connected relay whose RTT is
	// below Hysteresis times the home's (default 0.8), so two relays of
	// similar RTT do not trade places at every ping. A lost home is
	// replaced at once.
	Hysteresis float64
	// Metrics receives the pool's metrics (default: a private set).
	Metrics *metrics.Set
}

// Defaults of PoolConfig.
const (
	DefaultPoolKeepAlive   = 15 * time.Second
	DefaultPoolPingTimeout = 5 * time.Second
	DefaultPoolDialTimeout = 5 * time.Second
	DefaultPoolMinBackoff  = 100 * time.Millisecond
	DefaultPoolMaxBackoff  = 10 * time.Second
	DefaultPoolHysteresis  = 0.8
)

func (c *PoolConfig) validate() error {
	if len(c.Relays) == 0 {
		return errors.New("relay pool: no relay address")
	}
	for i, a := range c.Relays {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("relay pool: relay %q: %w", a, err)
		}
		if slices.Contains(c.Relays[:i], a) {
			return fmt.Errorf("relay pool: relay %q listed twice", a)
		}
	}
	if c.TLS == nil {
		return errors.New("relay pool: no TLS configuration")
	}
	if c.KeepAlive < 0 || c.PingTimeout < 0 || c.DialTimeout < 0 || c.MinBackoff < 0 || c.MaxBackoff < 0 {
		return errors.New("relay pool: negative duration")
	}
	if c.Hysteresis < 0 || c.Hysteresis > 1 {
		return fmt.Errorf("relay pool: hysteresis %v outside 0..1", c.Hysteresis)
	}
	def := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	def(&c.KeepAlive, DefaultPoolKeepAlive)
	def(&c.PingTimeout, DefaultPoolPingTimeout)
	def(&c.DialTimeout, DefaultPoolDialTimeout)
	def(&c.MinBackoff, DefaultPoolMinBackoff)
	def(&c.MaxBackoff, DefaultPoolMaxBackoff)
	if c.MaxBackoff < c.MinBackoff {
		return fmt.Errorf("relay pool: max backoff %v below min backoff %v", c.MaxBackoff, c.MinBackoff)
	}
	if c.Hysteresis == 0 {
		c.Hysteresis = DefaultPoolHysteresis
	}
	if c.Metrics == nil {
		c.Metrics = metrics.NewSet()
	}
	return nil
}

// Pool is an agent's connections to several relays. It keeps a
// connection to every configured relay (reconnecting a lost one with
// backoff), measures each one's RTT, and calls the nearest connected one
// the home relay. DialPeer tries the home relay first, then the others by
// RTT; sessions other agents open through any relay arrive on Incoming.
type Pool struct {
	cfg     PoolConfig
	ctx     context.Context // cancelled by Close
	stop    context.CancelFunc
	wg      sync.WaitGroup
	relays  []*poolRelay // in configuration order
	in      chan PoolIncoming
	intro   chan PoolIntroduced
	mFail   *metrics.Counter
	mDrop   *metrics.Counter
	mPeerOK *metrics.Counter

	mu      sync.Mutex // guards the following and every poolRelay's state
	home    *poolRelay
	changed chan struct{} // closed and replaced at every change of state
}

// poolRelay is one relay of a Pool. Its run goroutine owns the connection;
// the fields below mu are shared.
type poolRelay struct {
	addr  string
	mConn *metrics.Counter

	// guarded by Pool.mu
	client    *Client // nil while not connected
	rtt, srtt time.Duration
	since     time.Time // when connected (or lost, while not)
	lastErr   error
	connects  uint64
	failures  uint64
	dialed    uint64 // sessions opened through it by DialPeer
}

// RelayStatus is what the pool knows of one relay, for `fogmesh get
// paths` and the metrics.
type RelayStatus struct {
	Addr      string
	Connected bool
	Home      bool
	// RTT is the last ping's round-trip time, SmoothedRTT the moving
	// average the home relay is chosen by (7/8 old + 1/8 new, as TCP's
	// SRTT); both zero before the first answer.
	RTT, SmoothedRTT time.Duration
	// Since is when the relay was connected, or lost.
	Since time.Time
	// Connects counts successful connections (1 + reconnections),
	// Failures failed attempts and lost connections.
	Connects, Failures uint64
	// Sessions counts the sessions DialPeer opened through this relay.
	Sessions uint64
	// LastError is why the last attempt failed or the connection ended.
	LastError string
}

// PoolIncoming is a session another agent opened to this one through
// one of the pool's relays.
type PoolIncoming struct {
	Incoming
	// Relay is the address of the relay it came through.
	Relay string
	c     *Client
}

// Accept opens this agent's side of the session, through the relay it
// came from.
func (in PoolIncoming) Accept(ctx context.Context) (net.Conn, error) {
	if in.c == nil {
		return nil, errors.New("relay pool: accept: not an incoming session of a pool")
	}
	return in.c.AcceptSession(ctx, in.Session)
}

// ErrNoRelay is returned by DialPeer when no relay of the pool is
// connected before its context ends.
var ErrNoRelay = errors.New("relay pool: no relay connected")

// NewPool starts connecting to every relay of cfg in the background;
// WaitConnected waits for them. Close stops everything.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	p := &Pool{cfg: cfg, ctx: ctx, stop: stop, in: make(chan PoolIncoming, clientQueue),
		intro: make(chan PoolIntroduced, clientQueue), changed: make(chan struct{})}
	m := cfg.Metrics
	p.mFail = m.NewCounter(`fogmesh_relay_pool_failovers_total`)
	p.mDrop = m.NewCounter(`fogmesh_relay_pool_incoming_dropped_total`)
	p.mPeerOK = m.NewCounter(`fogmesh_relay_pool_sessions_dialed_total`)
	for _, a := range cfg.Relays {
		r := &poolRelay{addr: a}
		r.mConn = m.NewCounter(fmt.Sprintf(`fogmesh_relay_pool_connects_total{relay=%q}`, a))
		m.NewGauge(fmt.Sprintf(`fogmesh_relay_pool_rtt_seconds{relay=%q}`, a), func() float64 {
			p.mu.Lock()
			defer p.mu.Unlock()
			return r.srtt.Seconds()
		})
		m.NewGauge(fmt.Sprintf(`fogmesh_relay_pool_connected{relay=%q}`, a), func() float64 {
			p.mu.Lock()
			defer p.mu.Unlock()
			return b2f(r.client != nil)
		})
		m.NewGauge(fmt.Sprintf(`fogmesh_relay_pool_home{relay=%q}`, a), func() float64 {
			p.mu.Lock()
			defer p.mu.Unlock()
			return b2f(p.home == r)
		})
		p.relays = append(p.relays, r)
	}
	for _, r := range p.relays {
		p.wg.Add(1)
		go p.runRelay(r)
	}
	return p, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Close closes every relay connection and waits for the pool's
// goroutines. Sessions already opened stay open. It is idempotent.
func (p *Pool) Close() error {
	p.stop()
	p.wg.Wait()
	return nil
}

// Incoming delivers the sessions other agents open to this one, through
// any relay; take one with its Accept. A session that finds the channel
// full is dropped (counted; the dialer gets accept_timeout and retries).
func (p *Pool) Incoming() <-chan PoolIncoming { return p.in }

// PoolIntroduced is an introduction another agent asked for through one
// of the pool's relays.
type PoolIntroduced struct {
	Introduced
	// Relay is the address of the relay that made it.
	Relay string
}

// Introductions delivers the introductions other agents ask for through
// any relay (full channel: dropped, as Client.Introductions). Introduce
// through a relay with Home's client.
func (p *Pool) Introductions() <-chan PoolIntroduced { return p.intro }

// Home returns the home relay's client and address, or nil and "" while
// no relay is connected.
func (p *Pool) Home() (*Client, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.home == nil {
		return nil, ""
	}
	return p.home.client, p.home.addr
}

// Status returns the state of every relay, in configuration order.
func (p *Pool) Status() []RelayStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]RelayStatus, 0, len(p.relays))
	for _, r := range p.relays {
		st := RelayStatus{Addr: r.addr, Connected: r.client != nil, Home: p.home == r, RTT: r.rtt,
			SmoothedRTT: r.srtt, Since: r.since, Connects: r.connects, Failures: r.failures, Sessions: r.dialed}
		if r.lastErr != nil {
			st.LastError = r.lastErr.Error()
		}
		out = append(out, st)
	}
	return out
}

// WaitConnected waits until at least n relays are connected with a
// measured RTT (n above the number of relays waits for all of them).
func (p *Pool) WaitConnected(ctx context.Context, n int) error {
	n = min(n, len(p.relays))
	for {
		p.mu.Lock()
		up := 0
		for _, r := range p.relays {
			if r.client != nil && r.srtt > 0 {
				up++
			}
		}
		ch := p.changed
		p.mu.Unlock()
		if up >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("relay pool: %d of %d relays connected: %w", up, n, ctx.Err())
		case <-p.ctx.Done():
			return errors.New("relay pool: closed")
		}
	}
}

// DialPeer opens a relayed session to peer (a node SPIFFE ID) through the
// home relay, or, if that fails (the peer is not connected there, the
// relay is gone), through the other connected relays by RTT, each attempt
// bounded by DialTimeout. It returns the connection and the relay's
// address. While no relay is connected it waits for one until ctx ends
// (ErrNoRelay). A refusal that another relay would repeat (denied, other
// trust domain, bad request) is returned at once as the *Error.
func (p *Pool) DialPeer(ctx context.Context, peer string) (net.Conn, string, error) {
	for {
		order, ch := p.dialOrder()
		var errs []error
		for _, r := range order {
			c := r.clientNow(p)
			if c == nil {
				continue
			}
			actx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
			conn, err := c.DialPeer(actx, peer)
			cancel()
			if err == nil {
				p.mu.Lock()
				r.dialed++
				p.mu.Unlock()
				p.mPeerOK.Inc()
				return conn, r.addr, nil
			}
			var re *Error
			if errors.As(err, &re) && final(re.Reason) {
				return nil, r.addr, err
			}
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
		}
		if len(errs) > 0 {
			return nil, "", fmt.Errorf("relay pool: dial %s: %w", peer, errors.Join(errs...))
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, "", fmt.Errorf("relay pool: dial %s: %w (%w)", peer, ErrNoRelay, ctx.Err())
		case <-p.ctx.Done():
			return nil, "", fmt.Errorf("relay pool: dial %s: closed: %w", peer, ErrNoRelay)
		}
	}
}

// final reports whether a refusal would be the same at every relay.
func final(reason string) bool {
	switch reason {
	case ReasonDenied, ReasonOtherDomain, ReasonBadRequest:
		return true
	}
	return false
}

// dialOrder is the connected relays, home first, then by smoothed RTT,
// and the channel closed at the next change of state.
func (p *Pool) dialOrder() ([]*poolRelay, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var order []*poolRelay
	for _, r := range p.relays {
		if r.client != nil && r != p.home {
			order = append(order, r)
		}
	}
	slices.SortStableFunc(order, func(a, b *poolRelay) int { return rttCmp(a.srtt, b.srtt) })
	if p.home != nil {
		order = append([]*poolRelay{p.home}, order...)
	}
	return order, p.changed
}

// rttCmp orders measured RTTs before unmeasured (zero) ones.
func rttCmp(a, b time.Duration) int {
	switch {
	case a == b:
		return 0
	case a == 0:
		return 1
	case b == 0:
		return -1
	case a < b:
		return -1
	}
	return 1
}

func (r *poolRelay) clientNow(p *Pool) *Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	return r.client
}

// changedLocked wakes the waiters of the current state.
func (p *Pool) changedLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// pickHomeLocked re-chooses the home relay: a lost home is replaced by the
// connected relay of least smoothed RTT; a connected home gives way only
// to one below Hysteresis times its RTT.
func (p *Pool) pickHomeLocked() {
	var best *poolRelay
	for _, r := range p.relays {
		if r.client == nil || r.srtt == 0 {
			continue
		}
		if best == nil || r.srtt < best.srtt {
			best = r
		}
	}
	old := p.home
	switch {
	case old == nil || old.client == nil:
		p.home = best
		if old != nil && best != nil {
			p.mFail.Inc() // the home was lost and another took over
		}
	case best != nil && best != old && float64(best.srtt) < p.cfg.Hysteresis*float64(old.srtt):
		p.home = best
	}
}

// runRelay keeps one relay connected until the pool closes: connect,
// ping and watch, and after a loss wait a backoff and connect again.
func (p *Pool) runRelay(r *poolRelay) {
	defer p.wg.Done()
	backoff := p.cfg.MinBackoff
	for {
		up := p.serveRelay(r)
		if p.ctx.Err() != nil {
			return
		}
		if up >= backoff {
			// It was up for a while: a loss starts over from the
			// smallest backoff; a relay that accepts and drops at once
			// keeps backing off.
			backoff = p.cfg.MinBackoff
		}
		// ±20% jitter, so agents that lost a relay together do not come
		// back in step.
		d := time.Duration(float64(backoff) * (0.8 + 0.4*rand.Float64()))
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-p.ctx.Done():
			t.Stop()
			return
		}
		backoff = min(2*backoff, p.cfg.MaxBackoff)
	}
}

// serveRelay connects to r once and serves the connection until it is
// lost or the pool closes; it returns how long the relay was connected.
// Why it ended is recorded in r, with the loss, in one step, so whoever
// sees the relay lost also sees why.
func (p *Pool) serveRelay(r *poolRelay) time.Duration {
	up, err := p.connectAndServe(r)
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.client != nil {
		r.client = nil
		r.since = time.Now()
		p.pickHomeLocked()
	}
	if p.ctx.Err() == nil {
		r.failures++
		r.lastErr = err
	}
	p.changedLocked()
	return up
}

// connectAndServe is serveRelay's body: it returns how long r was
// connected and why the attempt or the connection ended.
func (p *Pool) connectAndServe(r *poolRelay) (time.Duration, error) {
	dctx, cancel := context.WithTimeout(p.ctx, p.cfg.DialTimeout)
	c, err := DialClientVia(dctx, r.addr, p.cfg.TLS, p.cfg.Dial)
	cancel()
	if err != nil {
		return 0, err
	}
	var fwd sync.WaitGroup
	defer fwd.Wait()
	defer c.Close() // ends forwardIncoming
	// The first ping measures the RTT before the relay may become home.
	rtt, err := p.ping(c)
	if err != nil {
		return 0, err
	}
	fwd.Add(1)
	go p.forwardIncoming(&fwd, c)
	start := time.Now()
	p.mu.Lock()
	r.client = c
	r.since = start
	r.connects++
	r.lastErr = nil
	r.sample(rtt)
	p.pickHomeLocked()
	p.changedLocked()
	p.mu.Unlock()
	r.mConn.Inc()

	t := time.NewTicker(p.cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return time.Since(start), p.ctx.Err()
		case <-c.Done():
			if err := c.Err(); err != nil {
				return time.Since(start), fmt.Errorf("relay %s: connection lost: %w", r.addr, err)
			}
			return time.Since(start), fmt.Errorf("relay %s: connection closed", r.addr)
		case <-t.C:
			rtt, err := p.ping(c)
			if err != nil {
				return time.Since(start), err
			}
			p.mu.Lock()
			r.sample(rtt)
			p.pickHomeLocked()
			p.changedLocked()
			p.mu.Unlock()
		}
	}
}

// forwardIncoming moves c's incoming sessions and introductions to the
// pool's channels until c's connection ends.
func (p *Pool) forwardIncoming(wg *sync.WaitGroup, c *Client) {
	defer wg.Done()
	for {
		select {
		case <-c.Done():
			return
		case in := <-c.Incoming():
			select {
			case p.in <- PoolIncoming{Incoming: in, Relay: c.Addr(), c: c}:
			default:
				p.mDrop.Inc()
			}
		case m := <-c.Introductions():
			select {
			case p.intro <- PoolIntroduced{Introduced: m, Relay: c.Addr()}:
			default:
			}
		}
	}
}

// ping measures one RTT within PingTimeout.
func (p *Pool) ping(c *Client) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(p.ctx, p.cfg.PingTimeout)
	defer cancel()
	rtt, err := c.Ping(ctx)
	if err != nil {
		return 0, fmt.Errorf("relay %s: ping: %w", c.Addr(), err)
	}
	return max(rtt, time.Nanosecond), nil // zero means "not measured"
}

// sample adds one RTT measurement.
func (r *poolRelay) sample(rtt time.Duration) {
	r.rtt = rtt
	if r.srtt == 0 {
		r.srtt = rtt
		return
	}
	r.srtt = (7*r.srtt + rtt) / 8
}
