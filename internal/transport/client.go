package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/yamux"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/netseam"
)

// Errors a Dial returns, wrapped, when the peer agent answered but did not
// connect the stream.
var (
	// ErrRefused means the peer refused the destination: it is not an
	// endpoint on that node (StatusRefused) or the header was rejected
	// (StatusBadHeader). Retrying the same peer will not help.
	ErrRefused = errors.New("refused by peer agent")
	// ErrPeerBusy, wrapped with ErrRefused, means the peer refused the
	// stream because this agent has as many streams open there as the
	// peer allows one agent (its maxStreamsPerPeer): the load of this
	// pair of agents, not a failure of the endpoint.
	ErrPeerBusy = errors.New("the peer agent holds as many of this agent's streams as it allows")
	// ErrDialFailed means the peer agent could not connect to the workload
	// (StatusDialFailed). The endpoint may be down.
	ErrDialFailed = errors.New("peer agent could not reach the workload")
)

// ClientConfig configures a Client. Every zero value means the default
// written next to it.
type ClientConfig struct {
	// DialTimeout bounds a whole Dial: connecting to the peer agent if
	// needed, opening the stream and waiting for the peer's status (which
	// includes the peer's dial to its workload). Default 3s.
	DialTimeout time.Duration
	// Logger receives debug lines about sessions. Default: discard.
	Logger *slog.Logger
	// Metrics is where the fogmesh_mesh_* series with dir="out" are
	// registered. Default: a private set.
	Metrics *metrics.Set
	// SourceNode fills Header.Source when a Dial leaves it empty.
	SourceNode string
	// TLS, if set, runs a TLS handshake on every new connection before
	// yamux (identity.Source.ClientConfig); nil means plaintext
	// (insecure mode).
	TLS *tls.Config
	// PeerID, if set, names the node identity expected at a mesh address;
	// a peer that authenticates as another node is refused. A zero ID
	// accepts any node the TLS configuration authorizes.
	PeerID func(meshAddr string) spiffeid.ID
	// PingInterval is how often an open session is pinged to measure the
	// round-trip time to the peer agent (RTT). Default 5s.
	PingInterval time.Duration
	// Network carries the connections to peer agents. Default
	// netseam.OS{}: TCP sockets. Tests pass an in-memory network.
	Network netseam.Network
	// StreamWindow is the receive window of each yamux stream, in bytes:
	// how much a peer may send ahead of our reader, so the most one busy
	// stream buffers here (default DefaultStreamWindow; values outside
	// MinStreamWindow..MaxStreamWindow are clamped to that range).
	StreamWindow int
	// DirectStreams gives every stream whose header does not have UDP set
	// (relayed TCP connections, and the HTTP proxy's pooled upstream
	// connections) a TCP connection of its own in insecure mode (TLS nil),
	// so that the agents relay it socket to socket (direct.go). Ignored
	// with TLS.
	DirectStreams bool
	// DirectBytes, if set, is told the bytes a direct stream's connection
	// received and sent (the kernel's count, header and status included)
	// when it closes.
	DirectBytes func(meshAddr string, in, out uint64)
	// PeerCheck and OnCut are as in ServerConfig: a session whose peer
	// fails PeerCheck or whose peer chain expired is cut, and no stream
	// opens on it. A session is also retired (no new streams; its open
	// ones finish) a quarter of the peer certificate's life before it
	// expires, so that the next stream meets the renewed certificate.
	PeerCheck PeerCheck
	OnCut     func(Cut)
}

const defaultClientDialTimeout = 3 * time.Second

func (c *ClientConfig) validate() {
	if c.DialTimeout <= 0 {
		c.DialTimeout = defaultClientDialTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.PingInterval <= 0 {
		c.PingInterval = 5 * time.Second
	}
	c.Network = netseam.Or(c.Network)
	if c.StreamWindow == 0 {
		c.StreamWindow = DefaultStreamWindow
	}
	c.StreamWindow = min(max(c.StreamWindow, MinStreamWindow), MaxStreamWindow)
}

// Client opens streams to peer agents. It keeps one yamux session per peer
// address, created on first use and replaced when it breaks, and forgets a
// peer with nothing open that was not dialed for 5 minutes (peers.go).
type Client struct {
	cfg ClientConfig
	log *slog.Logger
	m   *meshMetrics
	wg  sync.WaitGroup // watchSession goroutines

	mu       sync.Mutex // guards the following, and every peer's sess
	closed   bool
	peers    map[string]*peer                  // by mesh address; idle ones pruned (peers.go)
	peerIdle time.Duration                     // how long an idle peer is kept (defaultPeerIdle)
	swept    time.Time                         // the last sweep of idle peers
	retired  map[*yamux.Session]retiredSession // draining: no new streams (Retire)
	directs  map[*directTrack]struct{}         // open direct streams (direct.go)

	rtts sync.Map // mesh address -> *peer, for RTT without mu (read per request)
	// retiredSet holds the sessions in retired, for streamConn.Retired
	// without mu (asked per pooled request).
	retiredSet sync.Map
	// retireSignal is closed (and replaced) at every Retire, to wake
	// streamConn.AfterRetire's waiters; nil until one waits.
	retireSignalMu sync.Mutex
	retireSignal   chan struct{}
}

// NewClient returns a client with no sessions.
func NewClient(cfg ClientConfig) *Client {
	cfg.validate()
	return &Client{
		cfg:      cfg,
		log:      cfg.Logger,
		m:        newMeshMetrics(cfg.Metrics, "out"),
		peers:    make(map[string]*peer),
		peerIdle: defaultPeerIdle,
		retired:  make(map[*yamux.Session]retiredSession),
	}
}

// Dial opens a stream to the peer agent at meshAddr (host:port, IPv4 or
// IPv6), sends h and waits for the peer's status. On StatusOK it returns the
// stream as a net.Conn whose CloseWrite half-closes it. Otherwise the error
// wraps ErrRefused or ErrDialFailed when the peer answered, or the
// transport error when it could not.
//
// A stream that cannot be opened on a cached session (the peer restarted,
// the connection broke) is retried once on a fresh session.
func (c *Client) Dial(ctx context.Context, meshAddr string, h Header) (net.Conn, error) {
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
		return nil, fmt.Errorf("transport: dial %s for %s: %w", meshAddr, h, err)
	}
	return conn, nil
}

func (c *Client) dial(ctx context.Context, meshAddr string, h Header) (conn net.Conn, err error) {
	p, err := c.holdPeer(meshAddr)
	if err != nil {
		return nil, err
	}
	defer c.releasePeer(p)
	if c.direct(h) {
		dc, ok, derr := c.dialDirect(ctx, p, meshAddr, h)
		if ok {
			return dc, derr
		}
		var noStatus errNoStatus
		if errors.As(derr, &noStatus) {
			defer func() {
				if err == nil { // the session answered: the peer predates direct streams
					c.noDirect(p, meshAddr, noStatus)
				}
			}()
		}
	}
	sess, auth, fresh, err := c.session(ctx, p, meshAddr, nil)
	if err != nil {
		return nil, err
	}
	conn, err = c.openStream(ctx, sess, auth, h)
	if err != nil && !fresh && ctx.Err() == nil && brokenSession(err, sess) {
		c.log.Debug("mesh: session broken, redialing", "peer", meshAddr, "err", err)
		if sess, auth, _, err = c.session(ctx, p, meshAddr, sess); err != nil {
			return nil, err
		}
		conn, err = c.openStream(ctx, sess, auth, h)
	}
	return conn, err
}

// brokenSessionGrace is how long a session whose stream failed may take to
// report itself closed: yamux returns a failed write to the stream before
// it shuts the session down.
const brokenSessionGrace = 100 * time.Millisecond

// brokenSession reports whether a stream handshake failed with err because
// sess is dead, so that the Dial may be retried on a new session. A peer
// that answered with a status is not retried.
func brokenSession(err error, sess *yamux.Session) bool {
	if errors.Is(err, ErrRefused) || errors.Is(err, ErrDialFailed) {
		return false
	}
	t := time.NewTimer(brokenSessionGrace)
	defer t.Stop()
	select {
	case <-sess.CloseChan():
		return true
	case <-t.C:
		return false
	}
}

// session returns a live session to p, the peer at meshAddr (held by the
// caller), creating it if needed. broken, if not nil, is a session the
// caller saw fail; it is closed and replaced. fresh reports whether this
// call created the session.
func (c *Client) session(ctx context.Context, p *peer, meshAddr string, broken *yamux.Session) (sess *yamux.Session, pa *peerAuth, fresh bool, err error) {
	sess, pa, err = c.lookup(p, broken)
	if err != nil || sess != nil {
		return sess, pa, false, err
	}

	select {
	case p.dialing <- struct{}{}:
	case <-ctx.Done():
		return nil, nil, false, fmt.Errorf("wait for session: %w", ctx.Err())
	}
	defer func() { <-p.dialing }()

	// Another Dial may have created the session while we waited.
	if sess, pa, err = c.lookup(p, nil); err != nil || sess != nil {
		return sess, pa, false, err
	}

	conn, err := c.cfg.Network.Dial(ctx, "tcp", meshAddr)
	if err != nil {
		return nil, nil, false, err
	}
	var peerID spiffeid.ID
	var auth peerAuth
	if c.cfg.TLS != nil {
		batch := newRecordBatcher(conn)
		tc := tls.Client(batch, c.cfg.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			reason := identity.HandshakeReason(err)
			c.m.tlsFailure(reason)
			c.log.Warn("mesh: TLS handshake with peer failed", "peer", meshAddr, "reason", reason, "err", err)
			return nil, nil, false, err
		}
		peerID, _ = identity.PeerID(tc.ConnectionState())
		if c.cfg.PeerID != nil {
			if want := c.cfg.PeerID(meshAddr); !want.IsZero() && want != peerID {
				tc.Close()
				c.m.tlsFailure(identity.ReasonUnauthorized)
				return nil, nil, false, fmt.Errorf("peer at %s is %s, want %s", meshAddr, peerID, want)
			}
		}
		auth = authOf(peerID, tc.ConnectionState())
		conn = &tlsFrameConn{Conn: tc, batch: batch}
	} else {
		conn = &plainFrameConn{Conn: conn}
	}
	sess, err = yamux.Client(conn, yamuxConfig(c.cfg.StreamWindow))
	if err != nil { // only for a bad config
		conn.Close()
		return nil, nil, false, err
	}

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		sess.Close()
		return nil, nil, false, fmt.Errorf("client: %w", net.ErrClosed)
	}
	p.sess, p.id, p.auth = sess, peerID, &auth
	c.m.sessions.Inc()
	c.wg.Add(2)
	c.mu.Unlock()
	go c.watchSession(meshAddr, p, sess, &auth)
	go c.refuseStreams(meshAddr, sess)
	c.log.Debug("mesh: session opened", "peer", meshAddr)
	return sess, &auth, true, nil
}

// lookup returns p's live session, nil if there is none. A session that is
// closed or is broken is closed and forgotten.
func (c *Client) lookup(p *peer, broken *yamux.Session) (*yamux.Session, *peerAuth, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, nil, fmt.Errorf("client: %w", net.ErrClosed)
	}
	var stale, invalid *yamux.Session
	var auth, bad *peerAuth
	if p.sess != nil && (p.sess == broken || p.sess.IsClosed()) {
		stale, p.sess = p.sess, nil
	}
	sess := p.sess
	if sess != nil && p.auth != nil {
		// The deny list may have changed, or the chain expired, before
		// Revalidate or the timer closed sess: no stream opens on it.
		if _, err := p.auth.check(time.Now(), c.cfg.PeerCheck); err != nil {
			invalid, bad, p.sess, sess = sess, p.auth, nil, nil
		}
	}
	if sess != nil {
		auth = p.auth
	}
	c.mu.Unlock()

	if stale != nil {
		stale.Close()
	}
	if invalid != nil {
		c.cutIfInvalid(invalid, bad)
	}
	return sess, auth, nil
}

// watchSession pings sess every PingInterval to measure the RTT to the
// peer, retires sess when auth.retireIn says, cuts it when the peer's chain
// expires, and forgets it once it is closed, by us or by a failure.
func (c *Client) watchSession(meshAddr string, p *peer, sess *yamux.Session, auth *peerAuth) {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.PingInterval)
	defer t.Stop()
	var retire, expire <-chan time.Time
	if d := auth.untilExpiry(); d >= 0 {
		et := time.NewTimer(d)
		defer et.Stop()
		expire = et.C
		if d, ok := auth.retireIn(time.Now()); ok {
			rt := time.NewTimer(d)
			defer rt.Stop()
			retire = rt.C
		}
	}
	for done := false; !done; {
		select {
		case <-sess.CloseChan():
			done = true
		case <-retire:
			if c.retireSession(meshAddr, sess) {
				c.log.Info("mesh: session retired before the peer certificate expires", "peer", meshAddr,
					"peerId", auth.id.String(), "notAfter", auth.notAfter)
			}
		case <-expire:
			if !c.cutIfInvalid(sess, auth) { // the clock ran behind the timer
				expire = time.After(10 * time.Millisecond)
			}
		case <-t.C:
			if d, err := sess.Ping(); err == nil {
				p.observeRTT(d)
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.sess == sess {
		p.sess = nil
	}
	c.m.sessions.Dec()
}

// openStream runs the client side of the stream handshake on sess.
func (c *Client) openStream(ctx context.Context, sess *yamux.Session, auth *peerAuth, h Header) (net.Conn, error) {
	st, err := openStreamContext(ctx, sess)
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	sc := newStreamConn(st)
	sc.client = c
	if auth != nil {
		sc.cause = auth.cause
	}
	return streamHandshake(ctx, sc, h)
}

// streamHandshake runs the client side of the stream handshake on a newly
// opened stream of any carrier (yamux or QUIC), and returns conn on
// StatusOK; otherwise it closes conn.
func streamHandshake(ctx context.Context, conn meshStream, h Header) (net.Conn, error) {
	// ctx (which always has the DialTimeout deadline) ends the handshake.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(pastDeadline) })
	code, msg, err := handshake(conn, h)
	if !stop() {
		err = fmt.Errorf("stream handshake: %w", ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	switch code {
	case StatusOK:
		conn.SetDeadline(time.Time{})
		return conn, nil
	case StatusDialFailed:
		err = ErrDialFailed
	case StatusDenied:
		err = ErrDenied
	default:
		err = ErrRefused
		if strings.HasPrefix(msg, errPeerStreams.Error()) { // refuseOverCap's answer
			err = fmt.Errorf("%w (%w)", ErrRefused, ErrPeerBusy)
		}
	}
	conn.Close()
	return nil, fmt.Errorf("%w: %v: %s", err, code, msg)
}

// handshake writes h and reads the peer's status.
func handshake(conn net.Conn, h Header) (Status, string, error) {
	if err := WriteHeader(conn, h); err != nil {
		return 0, "", err
	}
	return ReadStatus(conn)
}

// Close closes every session, and with them every stream, and waits for the
// client's goroutines. It is idempotent. Dials after Close fail.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	var sessions []*yamux.Session
	for _, p := range c.peers {
		if p.sess != nil {
			sessions = append(sessions, p.sess)
		}
	}
	for sess := range c.retired {
		sessions = append(sessions, sess)
	}
	directs := make([]net.Conn, 0, len(c.directs))
	for t := range c.directs {
		t.closedByUs.Store(true)
		directs = append(directs, t.closer)
	}
	c.mu.Unlock()

	for _, sess := range sessions {
		sess.Close()
	}
	for _, d := range directs {
		d.Close()
	}
	c.wg.Wait()
	return nil
}
