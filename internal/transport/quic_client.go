package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// QUICClientConfig configures a QUICClient: the fields of ClientConfig
// with a quic.Transport in place of the Network. Transport and TLS are
// required; every other zero value means the ClientConfig default.
type QUICClientConfig struct {
	// Transport is the QUIC endpoint of the UDP socket to dial from
	// (NewQUICTransport); the caller owns it. Dialing from the socket the
	// QUICServer listens on keeps one NAT mapping for both directions.
	Transport *quic.Transport
	// TLS is identity.Source.ClientConfig(identity.AuthorizeNode()); its
	// NextProtos is replaced by ALPNMeshQUIC.
	TLS *tls.Config
	// DialTimeout bounds a whole Dial, handshake and peer status included.
	// Default 3s.
	DialTimeout time.Duration
	// Logger, Metrics, SourceNode and PeerID are as in ClientConfig.
	Logger     *slog.Logger
	Metrics    *metrics.Set
	SourceNode string
	PeerID     func(meshAddr string) spiffeid.ID
	// Timers are the keepalive and idle timeout of dialed connections.
	Timers QUICTimers
	// PeerCheck and OnCut are as in ClientConfig (retirement included).
	PeerCheck PeerCheck
	OnCut     func(Cut)
}

// QUICClient opens streams to peer agents over QUIC. It keeps one QUIC
// connection per peer address, created on first use and replaced when it
// breaks; each mesh stream is one QUIC stream.
type QUICClient struct {
	cfg   QUICClientConfig
	tls   *tls.Config
	qconf *quic.Config
	log   *slog.Logger
	m     *meshMetrics
	wg    sync.WaitGroup // watchConn goroutines

	mu       sync.Mutex // guards the following, and every peer's conn, id, refs and dialed
	closed   bool
	peers    map[string]*quicPeer     // by mesh address; idle ones pruned, as Client's (peers.go)
	peerIdle time.Duration            // how long an idle peer is kept (defaultPeerIdle)
	swept    time.Time                // the last sweep of idle peers
	retired  map[*quic.Conn]*peerAuth // no new streams; closed at expiry or when idle
}

// quicPeer is the connection to one peer agent.
type quicPeer struct {
	dialing chan struct{} // one token: its holder may create conn
	conn    *quic.Conn
	id      spiffeid.ID
	auth    *peerAuth
	refs    int       // Dials in progress: a held peer is not pruned (its conn would escape Close)
	dialed  time.Time // when the last Dial to it ended
}

// NewQUICClient checks cfg and returns a client with no connections.
func NewQUICClient(cfg QUICClientConfig) (*QUICClient, error) {
	if cfg.Transport == nil {
		return nil, errors.New("transport: QUIC client config: no Transport")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = defaultClientDialTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Timers.validate(); err != nil {
		return nil, fmt.Errorf("transport: QUIC client config: %w", err)
	}
	m := newMeshMetrics(cfg.Metrics, "out")
	tlsConf, err := quicTLS(cfg.TLS, m)
	if err != nil {
		return nil, fmt.Errorf("transport: QUIC client config: %w", err)
	}
	return &QUICClient{
		cfg:      cfg,
		tls:      tlsConf,
		qconf:    quicClientConfig(cfg.Timers, cfg.DialTimeout),
		log:      cfg.Logger,
		m:        m,
		peers:    make(map[string]*quicPeer),
		peerIdle: defaultPeerIdle,
		retired:  make(map[*quic.Conn]*peerAuth),
	}, nil
}

// Dial opens a stream to the peer agent at meshAddr (a UDP host:port),
// sends h and waits for the peer's status, with the same results as
// Client.Dial: on StatusOK a net.Conn whose CloseWrite half-closes the
// stream; otherwise an error wrapping ErrRefused, ErrDialFailed or
// ErrDenied when the peer answered, or the transport error.
func (c *QUICClient) Dial(ctx context.Context, meshAddr string, h Header) (net.Conn, error) {
	if h.Source == "" {
		h.Source = c.cfg.SourceNode
	}
	if err := h.validate(); err != nil {
		return nil, fmt.Errorf("transport: dial %s: %w", meshAddr, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()

	conn, err := c.dial(ctx, meshAddr, h)
	result := resultOK
	switch {
	case errors.Is(err, ErrRefused):
		result = resultRefused
	case errors.Is(err, ErrDialFailed):
		result = resultDialFailed
	case errors.Is(err, ErrDenied):
		result = resultDenied
	case err != nil:
		result = resultError
	}
	c.m.streams[result].Inc()
	if err != nil {
		return nil, fmt.Errorf("transport: QUIC dial %s for %s: %w", meshAddr, h, err)
	}
	return conn, nil
}

func (c *QUICClient) dial(ctx context.Context, meshAddr string, h Header) (net.Conn, error) {
	if err := c.holdPeer(meshAddr); err != nil {
		return nil, err
	}
	defer c.releasePeer(meshAddr)
	qc, _, fresh, err := c.connection(ctx, meshAddr, nil)
	if err != nil {
		return nil, err
	}
	conn, err := c.openStream(ctx, qc, h)
	if err != nil && fresh {
		// In TLS 1.3 the client's handshake ends before the server has
		// checked its certificate: a refusal closes the new connection.
		if reason := quicDialReason(err); reason == identity.ReasonPeerRejected {
			c.m.tlsFailure(reason)
			c.log.Warn("mesh: QUIC peer refused our certificate", "peer", meshAddr, "err", err)
		}
	}
	if err != nil && !fresh && ctx.Err() == nil &&
		!errors.Is(err, ErrRefused) && !errors.Is(err, ErrDialFailed) && !errors.Is(err, ErrDenied) &&
		quicConnDead(qc) {
		c.log.Debug("mesh: QUIC connection broken, redialing", "peer", meshAddr, "err", err)
		if qc, _, _, err = c.connection(ctx, meshAddr, qc); err != nil {
			return nil, err
		}
		conn, err = c.openStream(ctx, qc, h)
	}
	return conn, err
}

func (c *QUICClient) openStream(ctx context.Context, qc *quic.Conn, h Header) (net.Conn, error) {
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	return streamHandshake(ctx, newQUICStreamConn(st, qc), h)
}

// connection returns a live connection to meshAddr, dialing it if needed.
// broken, if not nil, is a connection the caller saw fail; it is replaced.
// fresh reports whether this call dialed the connection.
func (c *QUICClient) connection(ctx context.Context, meshAddr string, broken *quic.Conn) (qc *quic.Conn, pa *peerAuth, fresh bool, err error) {
	p, qc, pa, err := c.lookup(meshAddr, broken)
	if err != nil || qc != nil {
		return qc, pa, false, err
	}
	select {
	case p.dialing <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, false, fmt.Errorf("wait for connection: %w", ctx.Err())
	}
	defer func() { <-p.dialing }()
	if _, qc, pa, err = c.lookup(meshAddr, nil); err != nil || qc != nil {
		return qc, pa, false, err
	}

	addr, err := net.ResolveUDPAddr("udp", meshAddr)
	if err != nil {
		return nil, nil, false, fmt.Errorf("resolve %s: %w", meshAddr, err)
	}
	qc, err = c.cfg.Transport.Dial(ctx, addr, c.tls, c.qconf)
	if err != nil {
		if reason := quicDialReason(err); reason != "" {
			c.m.tlsFailure(reason)
		}
		c.log.Warn("mesh: QUIC handshake with peer failed", "peer", meshAddr, "err", err)
		return nil, nil, false, err
	}
	peerID, _ := identity.PeerID(qc.ConnectionState().TLS)
	if c.cfg.PeerID != nil {
		if want := c.cfg.PeerID(meshAddr); !want.IsZero() && want != peerID {
			qc.CloseWithError(quicCodeWrongPeer, "unexpected peer identity")
			c.m.tlsFailure(identity.ReasonUnauthorized)
			return nil, nil, false, fmt.Errorf("peer at %s is %s, want %s", meshAddr, peerID, want)
		}
	}

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		qc.CloseWithError(quicCodeClosed, "client closed")
		return nil, nil, false, fmt.Errorf("client: %w", net.ErrClosed)
	}
	auth := authOf(peerID, qc.ConnectionState().TLS)
	p.conn, p.id, p.auth = qc, peerID, &auth
	c.m.sessions.Inc()
	c.wg.Add(1)
	c.mu.Unlock()
	go c.watchConn(meshAddr, p, qc, &auth)
	c.log.Debug("mesh: QUIC connection opened", "peer", meshAddr)
	return qc, &auth, true, nil
}

// quicConnDead reports whether qc is closed, waiting brokenSessionGrace
// for it: quic-go fails a connection's streams before it ends the
// connection's context.
func quicConnDead(qc *quic.Conn) bool {
	t := time.NewTimer(brokenSessionGrace)
	defer t.Stop()
	select {
	case <-qc.Context().Done():
		return true
	case <-t.C:
		return false
	}
}

// quicDialReason is the TLS failure reason of a failed dial that our own
// verifier did not already count: the peer refused our certificate, or
// the handshake timed out. "" for other errors.
func quicDialReason(err error) string {
	var te *quic.TransportError
	var idle *quic.HandshakeTimeoutError
	switch {
	case errors.As(err, &te) && te.Remote && te.ErrorCode.IsCryptoError():
		return identity.ReasonPeerRejected
	case errors.As(err, &idle), errors.Is(err, context.DeadlineExceeded):
		return identity.ReasonTimeout
	}
	return ""
}

// lookup returns the peer for meshAddr and its live connection, nil if
// there is none; a dead or broken connection is forgotten.
func (c *QUICClient) lookup(meshAddr string, broken *quic.Conn) (*quicPeer, *quic.Conn, *peerAuth, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, nil, nil, fmt.Errorf("client: %w", net.ErrClosed)
	}
	p := c.peers[meshAddr]
	if p == nil {
		p = &quicPeer{dialing: make(chan struct{}, 1)}
		c.peers[meshAddr] = p
	}
	var stale *quic.Conn
	if p.conn != nil && (p.conn == broken || p.conn.Context().Err() != nil) {
		stale, p.conn = p.conn, nil
	}
	qc, pa := p.conn, p.auth
	var invalid *quic.Conn
	if qc != nil && pa != nil {
		if _, err := pa.check(time.Now(), c.cfg.PeerCheck); err != nil {
			invalid, qc, p.conn = qc, nil, nil // as in Client.lookup
		}
	}
	c.mu.Unlock()
	if stale != nil {
		stale.CloseWithError(quicCodeClosed, "") // no-op when already dead
	}
	if invalid != nil {
		c.cutIfInvalid(invalid, pa)
		pa = nil
	}
	return p, qc, pa, nil
}

// watchConn retires qc when auth.retireIn says, cuts it when the peer's chain
// expires, and forgets it once it is closed, by us, the peer or a
// timeout.
func (c *QUICClient) watchConn(meshAddr string, p *quicPeer, qc *quic.Conn, auth *peerAuth) {
	defer c.wg.Done()
	var retire, expire <-chan time.Time
	if d := auth.untilExpiry(); d >= 0 {
		et := time.NewTimer(d)
		defer et.Stop()
		expire = et.C
		if d, ok := auth.retireIn(time.Now()); ok { // as in Client.watchSession
			rt := time.NewTimer(d)
			defer rt.Stop()
			retire = rt.C
		}
	}
	for done := false; !done; {
		select {
		case <-qc.Context().Done():
			done = true
		case <-retire:
			c.mu.Lock()
			ok := c.retireLocked(p, qc)
			c.mu.Unlock()
			if ok {
				c.log.Info("mesh: QUIC connection retired before the peer certificate expires", "peer", meshAddr,
					"peerId", auth.id.String(), "notAfter", auth.notAfter)
			}
		case <-expire:
			if !c.cutIfInvalid(qc, auth) {
				expire = time.After(10 * time.Millisecond)
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.conn == qc {
		p.conn = nil
	}
	delete(c.retired, qc)
	c.m.sessions.Dec()
}

// RTT is QUIC's smoothed round-trip time to the peer agent at meshAddr;
// false while there is no live connection.
func (c *QUICClient) RTT(meshAddr string) (time.Duration, bool) {
	c.mu.Lock()
	var qc *quic.Conn
	if p := c.peers[meshAddr]; p != nil {
		qc = p.conn
	}
	c.mu.Unlock()
	if qc == nil || qc.Context().Err() != nil {
		return 0, false
	}
	d := qc.ConnectionStats().SmoothedRTT
	return d, d > 0
}

// Alive reports whether the connection to meshAddr is open (false when
// there is none, or it died): a failed Dial on a live connection was not
// the connection's fault.
func (c *QUICClient) Alive(meshAddr string) bool {
	c.mu.Lock()
	var qc *quic.Conn
	if p := c.peers[meshAddr]; p != nil {
		qc = p.conn
	}
	c.mu.Unlock()
	return qc != nil && qc.Context().Err() == nil
}

// Bytes returns the bytes sent and received on the live connection to
// meshAddr (QUIC payload, retransmissions included); zeros without one.
func (c *QUICClient) Bytes(meshAddr string) (sent, received uint64) {
	c.mu.Lock()
	var qc *quic.Conn
	if p := c.peers[meshAddr]; p != nil {
		qc = p.conn
	}
	c.mu.Unlock()
	if qc == nil {
		return 0, 0
	}
	st := qc.ConnectionStats()
	return st.BytesSent, st.BytesReceived
}

// Close closes every connection, and with them every stream, and waits for
// the client's goroutines. It leaves the transport open. It is idempotent;
// Dials after Close fail.
func (c *QUICClient) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	var conns []*quic.Conn
	for _, p := range c.peers {
		if p.conn != nil {
			conns = append(conns, p.conn)
		}
	}
	for qc := range c.retired {
		conns = append(conns, qc)
	}
	c.mu.Unlock()
	for _, qc := range conns {
		qc.CloseWithError(quicCodeClosed, "client closed")
	}
	c.wg.Wait()
	return nil
}

// Sessions returns the number of open connections.
func (c *QUICClient) Sessions() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, p := range c.peers {
		if p.conn != nil && p.conn.Context().Err() == nil {
			n++
		}
	}
	return n
}

// DropPeer closes every connection whose peer is id (a revoked node).
func (c *QUICClient) DropPeer(id spiffeid.ID) int {
	c.mu.Lock()
	var drop []*quic.Conn
	for _, p := range c.peers {
		if p.conn != nil && !p.id.IsZero() && p.id == id {
			drop = append(drop, p.conn)
			p.conn = nil
		}
	}
	c.mu.Unlock()
	for _, qc := range drop {
		qc.CloseWithError(quicCodeDropped, "peer dropped")
	}
	return len(drop)
}

// DropSession closes the connection to meshAddr, so its streams fail at
// once (gossip declared the peer dead). The next Dial opens a fresh one.
func (c *QUICClient) DropSession(meshAddr string) bool {
	c.mu.Lock()
	var qc *quic.Conn
	if p := c.peers[meshAddr]; p != nil {
		qc, p.conn = p.conn, nil
	}
	c.mu.Unlock()
	if qc != nil {
		qc.CloseWithError(quicCodeDropped, "peer dropped")
	}
	return qc != nil
}

// holdPeer holds the peer at meshAddr (created if new) for a Dial: the
// peer lookup finds stays in peers until releasePeer.
func (c *QUICClient) holdPeer(meshAddr string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("client: %w", net.ErrClosed)
	}
	p := c.peers[meshAddr]
	if p == nil {
		p = &quicPeer{dialing: make(chan struct{}, 1)}
		c.peers[meshAddr] = p
	}
	p.refs++
	return nil
}

// releasePeer ends a Dial's hold, and forgets the peers with nothing held
// and no live connection, last dialed peerIdle ago, when a sweep is due
// (as Client.releasePeer).
func (c *QUICClient) releasePeer(meshAddr string) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.peers[meshAddr]; p != nil {
		p.refs--
		p.dialed = now
	}
	if now.Sub(c.swept) < c.peerIdle/sweepsPerIdle {
		return
	}
	c.swept = now
	for addr, p := range c.peers {
		if p.refs == 0 && (p.conn == nil || p.conn.Context().Err() != nil) && now.Sub(p.dialed) >= c.peerIdle {
			delete(c.peers, addr)
		}
	}
}
