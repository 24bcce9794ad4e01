package relay

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// Config configures a Server. The zero value of every field but Source
// works.
type Config struct {
	// Source holds the relay's own certificate (any SPIFFE ID of the mesh
	// CA), the trust bundles it accepts agents from and the deny list of
	// revoked nodes. It is read at every handshake, so a renewed
	// certificate or bundle applies to the next connection. Required.
	Source *identity.Source
	// Policy decides whether node from may reach node to (introductions
	// and relayed sessions); a non-nil error refuses with reason "denied".
	// It is only asked about two nodes of the same trust domain: other
	// pairs are refused before. nil allows every such pair. It must be
	// safe for concurrent use and not block.
	Policy func(from, to spiffeid.ID) error
	// MaxSessionsPerNode bounds the relayed sessions (pending or open) a
	// node takes part in, as either end (default 64).
	MaxSessionsPerNode int
	// MaxSessionsPerPair bounds the relayed sessions (pending or open) one
	// node dials to one other node (default 16, a quarter of the default
	// MaxSessionsPerNode), so a single node dialing a peer in a loop
	// cannot take all of that peer's slots and cut it off from its other
	// peers. An agent carries all its streams to a peer in one relayed
	// session (yamux), so it needs one or two per peer and relay.
	MaxSessionsPerPair int
	// BytesPerSecond limits the bytes per second each node may send
	// through the relay, over all its sessions (token bucket; default
	// 64 MiB/s; negative: unlimited). Burst is the bucket's size in bytes
	// (default BytesPerSecond/10, at least 64 KiB).
	BytesPerSecond int64
	Burst          int64
	// IdleTimeout closes a relayed session after this long with no byte
	// either way (default 2m).
	IdleTimeout time.Duration
	// MaxUDPChannelsPerNode bounds the UDP channels (udpchan.go) a node
	// is either end of (default 16); their bytes count in BytesPerSecond.
	MaxUDPChannelsPerNode int
	// UDPIdleTimeout closes a UDP channel with no valid datagram for this
	// long (default 60s); one a side never used, after AcceptTimeout.
	UDPIdleTimeout time.Duration
	// AcceptTimeout is how long a dialed session waits for the peer to
	// open its side (default 10s).
	AcceptTimeout time.Duration
	// HandshakeTimeout bounds the TLS handshake and the first frame of a
	// data connection (default 10s).
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds the connections being authenticated at once
	// (default 1024): beyond it, new connections are closed at once with
	// reason "busy", so unauthenticated peers cannot hold unbounded
	// goroutines and memory. MaxHandshakesPerSource bounds those of one
	// source IP address, an IPv6 one's /64 (default
	// DefaultMaxHandshakesPerSource, 256; at most MaxHandshakes):
	// beyond it its new connections are closed with reason
	// "source_busy", so one source cannot take the whole budget. When
	// MaxHandshakes are taken, a source holding fewer than the busiest
	// minus one takes the place of the busiest one's oldest handshake
	// (closed, reason "evicted"; identity.HandshakeGate). A negative
	// bound is none (as BytesPerSecond's).
	MaxHandshakes, MaxHandshakesPerSource int
	// WriteTimeout bounds a frame written to an agent; an agent that does
	// not read its control connection is disconnected (default 10s).
	WriteTimeout time.Duration
	// ControlTimeout closes a control connection on which the agent sent
	// nothing (not even a Ping) for this long (default 90s; agents ping
	// more often to hold their NAT mapping).
	ControlTimeout time.Duration
	// ReplayWindow: an Introduce whose Time is further than this from the
	// relay's clock is refused as a replay; nonces are remembered for
	// twice as long (default 2m).
	ReplayWindow time.Duration
	// Logger receives the relay's few log lines (default: discard).
	Logger *slog.Logger
	// Metrics receives the relay's metrics (default: a private set).
	Metrics *metrics.Set
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Defaults of Config.
const (
	DefaultMaxSessionsPerNode = 64
	DefaultMaxSessionsPerPair = 16
	DefaultBytesPerSecond     = 64 << 20
	DefaultIdleTimeout        = 2 * time.Minute
	DefaultAcceptTimeout      = 10 * time.Second
	DefaultHandshakeTimeout   = 10 * time.Second
	DefaultMaxHandshakes      = 1024
	// DefaultMaxHandshakesPerSource: a relay's clients are mostly NATed
	// agents, a site's all from its NAT's one address (a gateway site's
	// from the gateway's), reconnecting together after a relay restart:
	// a quarter of the handshakes.
	DefaultMaxHandshakesPerSource = 256
	DefaultWriteTimeout           = 10 * time.Second
	DefaultReplayWindow           = 2 * time.Minute
	DefaultControlTimeout         = 90 * time.Second
	DefaultMaxUDPChannels         = 16
	DefaultUDPIdleTimeout         = 60 * time.Second
	minBurst                      = 64 << 10
	maxNonces                     = 1 << 16
)

// checkNegative refuses a negative limit or duration, naming its field
// (as the config file names it, where it has one): 0 is the default. The
// bounds whose negative value means none (BytesPerSecond, MaxHandshakes,
// MaxHandshakesPerSource) are not among them.
func (c *Config) checkNegative() error {
	for _, l := range []struct {
		name string
		v    int64
	}{
		{"maxSessionsPerNode", int64(c.MaxSessionsPerNode)},
		{"maxSessionsPerPair", int64(c.MaxSessionsPerPair)},
		{"burst", c.Burst},
		{"maxUDPChannelsPerNode", int64(c.MaxUDPChannelsPerNode)},
	} {
		if l.v < 0 {
			return fmt.Errorf("relay: config: %s %d is negative (0 or unset: the default)", l.name, l.v)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"idleTimeout", c.IdleTimeout},
		{"udpIdleTimeout", c.UDPIdleTimeout},
		{"acceptTimeout", c.AcceptTimeout},
		{"handshakeTimeout", c.HandshakeTimeout},
		{"writeTimeout", c.WriteTimeout},
		{"controlTimeout", c.ControlTimeout},
		{"replayWindow", c.ReplayWindow},
	} {
		if d.v < 0 {
			return fmt.Errorf("relay: config: %s %s is negative (0 or unset: the default)", d.name, d.v)
		}
	}
	return nil
}

func (c *Config) validate() error {
	if c.Source == nil || c.Source.SVID() == nil {
		return errors.New("relay: config: no certificate (Source with an SVID)")
	}
	if err := c.checkNegative(); err != nil {
		return err
	}
	def := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	def(&c.IdleTimeout, DefaultIdleTimeout)
	def(&c.AcceptTimeout, DefaultAcceptTimeout)
	def(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	def(&c.WriteTimeout, DefaultWriteTimeout)
	def(&c.ReplayWindow, DefaultReplayWindow)
	def(&c.ControlTimeout, DefaultControlTimeout)
	def(&c.UDPIdleTimeout, DefaultUDPIdleTimeout)
	c.MaxUDPChannelsPerNode = cmp.Or(c.MaxUDPChannelsPerNode, DefaultMaxUDPChannels)
	c.MaxHandshakes = cmp.Or(c.MaxHandshakes, DefaultMaxHandshakes)
	c.MaxHandshakesPerSource = cmp.Or(c.MaxHandshakesPerSource, DefaultMaxHandshakesPerSource)
	if c.MaxHandshakes > 0 && c.MaxHandshakesPerSource > 0 {
		c.MaxHandshakesPerSource = min(c.MaxHandshakesPerSource, c.MaxHandshakes)
	}
	if c.MaxSessionsPerNode == 0 {
		c.MaxSessionsPerNode = DefaultMaxSessionsPerNode
	}
	c.MaxSessionsPerPair = cmp.Or(c.MaxSessionsPerPair, DefaultMaxSessionsPerPair)
	if c.BytesPerSecond == 0 {
		c.BytesPerSecond = DefaultBytesPerSecond
	}
	if c.BytesPerSecond > 0 && c.Burst == 0 {
		c.Burst = max(c.BytesPerSecond/10, minBurst)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = metrics.NewSet()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}
