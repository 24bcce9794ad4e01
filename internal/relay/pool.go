package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
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
	// UDP are the options of UDP channels bound or opened through any
	// relay (BindUDP, UDPIncoming).
	UDP UDPOptions
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
	udpIn   chan PoolUDPIncoming
	mFail   *metrics.Counter
	mDrop   *metrics.Counter
	mPeerOK *metrics.Counter

	mu      sync.Mutex // guards the following and every poolRelay's state
	home    *poolRelay
	changed chan struct{} // closed and replaced at every change of state
	cands   []string      // SetCandidates': told every relay on connect
}

// poolRelay is one relay of a Pool. Its runRelay goroutine owns the
// connection; the state below is shared with DialPeer and Status.
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
	dialed    uint64 // sessions and UDP channels opened through it (DialPeer, BindUDP)
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
		intro: make(chan PoolIntroduced, clientQueue), udpIn: make(chan PoolUDPIncoming, clientQueue), changed: make(chan struct{})}
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

// SetCandidates tells every connected relay the agent's own addresses
// (Client.SetCandidates), and every relay that connects later too, so an
// introduction through any relay carries them. It returns the first
// error of a connected relay; that relay learns them when it reconnects.
func (p *Pool) SetCandidates(cands []string) error {
	p.mu.Lock()
	p.cands = slices.Clone(cands)
	var clients []*Client
	for _, r := range p.relays {
		if r.client != nil {
			clients = append(clients, r.client)
		}
	}
	p.mu.Unlock()
	var first error
	for _, c := range clients {
		if err := c.SetCandidates(cands); err != nil && first == nil {
			first = err
		}
	}
	return first
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
	var conn net.Conn
	via, err := p.eachRelay(ctx, "dial "+peer, func(ctx context.Context, c *Client) error {
		var err error
		conn, err = c.DialPeer(ctx, peer)
		return err
	})
	if err == nil {
		p.mPeerOK.Inc()
	}
	return conn, via, err
}

// eachRelay runs try on the home relay's client, then on the other
// connected relays by RTT, each bounded by DialTimeout, until one
// succeeds (its address is returned, and the relay's count of sessions
// grows). A refusal another relay would repeat is returned at once; while
// no relay is connected it waits for one until ctx ends (ErrNoRelay).
// what names the attempt in errors.
func (p *Pool) eachRelay(ctx context.Context, what string, try func(context.Context, *Client) error) (string, error) {
	for {
		order, ch := p.dialOrder()
		var errs []error
		for _, r := range order {
			c := r.clientNow(p)
			if c == nil {
				continue
			}
			actx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
			err := try(actx, c)
			cancel()
			if err == nil {
				p.mu.Lock()
				r.dialed++
				p.mu.Unlock()
				return r.addr, nil
			}
			var re *Error
			if errors.As(err, &re) && final(re.Reason) {
				return r.addr, err
			}
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
		}
		if len(errs) > 0 {
			return "", fmt.Errorf("relay pool: %s: %w", what, errors.Join(errs...))
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return "", fmt.Errorf("relay pool: %s: %w (%w)", what, ErrNoRelay, ctx.Err())
		case <-p.ctx.Done():
			return "", fmt.Errorf("relay pool: %s: closed: %w", what, ErrNoRelay)
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
