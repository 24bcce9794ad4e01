package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/hashicorp/yamux"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// ErrUnknownDestination is what a Dialer returns (wrapped) for a header that
// does not name an endpoint registered on this node. The server answers it
// with StatusRefused; any other Dialer error is StatusDialFailed.
var ErrUnknownDestination = errors.New("unknown destination")

// ErrDenied is what a Dialer returns (wrapped) when an authorization policy
// denies the stream's source the destination; the server answers it with
// StatusDenied. Client.Dial returns it (wrapped) for StatusDenied, so the
// source agent closes its client's connection instead of failing over:
// another endpoint of the same service would deny it too.
var ErrDenied = errors.New("denied by authorization policy")

// StreamRelayer is optionally implemented by a Dialer that relays some
// streams itself, to authorize what flows on them (HTTP requests, MQTT
// packets), instead of the server's byte relay. RelayStream is called after
// StatusOK was sent, with the conn DialLocal returned; it owns stream and
// local, must close both, must return when ctx is done, and is called
// concurrently from many streams.
type StreamRelayer interface {
	RelayStream(ctx context.Context, h Header, stream, local net.Conn)
}

// Dialer resolves a header to a local workload and connects to it. The
// agent implements it.
//
// DialLocal must refuse destinations that are not endpoints registered on
// this node, by returning an error that wraps ErrUnknownDestination: the
// mesh port is not an open proxy. Any other error means the dial failed.
// It is called concurrently from many streams and must honour ctx, which
// carries the server's dial timeout.
type Dialer interface {
	DialLocal(ctx context.Context, h Header) (net.Conn, error)
}

// ServerConfig configures a Server. Listener and Dialer are required; every
// other zero value means the default written next to it.
type ServerConfig struct {
	// Listener is the bound mesh port: a TCP socket, or any
	// netseam.Network's listener (an in-memory one in tests). Serve owns
	// it and Close closes it.
	Listener net.Listener
	// Dialer connects accepted streams to local workloads.
	Dialer Dialer
	// HeaderTimeout bounds how long a stream may take to send its full
	// header, and how long a new connection may take to open its first
	// stream (the yamux handshake). Offenders are dropped. Default 5s.
	HeaderTimeout time.Duration
	// DialTimeout bounds each Dialer.DialLocal call. Default 5s.
	DialTimeout time.Duration
	// Logger receives debug lines about dropped connections and streams.
	// Default: discard.
	Logger *slog.Logger
	// Metrics is where the fogmesh_mesh_* series with dir="in" are
	// registered. Default: a private set.
	Metrics *metrics.Set
	// TLS, if set, makes every connection start with a TLS handshake
	// (identity.Source.ServerConfig: TLS 1.3, client certificate
	// required) within HeaderTimeout; the yamux session runs inside it.
	// Refused handshakes are logged and counted in
	// fogmesh_tls_handshake_failures_total{port="mesh",reason}. The
	// peer's node identity reaches DialLocal through PeerFromContext,
	// and a stream whose Header.Source is not that node is refused.
	// nil means plaintext (insecure mode: tests and local development).
	TLS *tls.Config
	// TrustedSourceID, if set, must accept a header's SourceID (a SPIFFE
	// ID of a trust domain the agent trusts) or the stream is refused.
	TrustedSourceID func(spiffeid.ID) bool
	// StreamWindow is the receive window of each yamux stream, in bytes:
	// how much a peer may send ahead of the relay to the workload, so the
	// most one busy stream buffers here. Default DefaultStreamWindow;
	// MinStreamWindow to MaxStreamWindow.
	StreamWindow int
	// PeerCheck, if set, is asked before every new stream and by
	// Revalidate whether a session's peer may still use it (the deny
	// list); a session whose peer fails it, or whose peer chain expired,
	// is cut (peerauth.go).
	PeerCheck PeerCheck
	// OnCut, if set, is told of every cut session (the agent audits it).
	OnCut func(Cut)
	// PeerStreams caps the streams each peer may have open here at once,
	// shared with the agent's other mesh servers (peerlimit.go). Default:
	// a cap of DefaultMaxStreamsPerPeer for this server alone.
	PeerStreams *PeerStreams
	// MaxHandshakes and MaxHandshakesPerSource bound the TLS handshakes
	// in progress at once, in all and from one source IP address (an
	// IPv6 /64): a connection over either is closed at once, before any
	// TLS work, and counted as reason "busy" or "source_busy" of
	// fogmesh_tls_handshake_failures_total (identity.HandshakeGate); a
	// full gate closes the busiest source's oldest handshake ("evicted")
	// for a source holding fewer (minus one).
	// Authenticated connections do not count. 0: the default,
	// identity.DefaultMaxHandshakes (256) and
	// identity.DefaultMaxHandshakesPerSource (64); negative: no bound.
	MaxHandshakes, MaxHandshakesPerSource int
}

// Peer is the authenticated agent at the other end of a mesh connection.
type Peer struct {
	ID   spiffeid.ID // its node SPIFFE ID
	Site string
	Node string
}

type peerKey struct{}

// ContextWithPeer returns ctx carrying p as the stream's authenticated peer
// (the mesh server does this for every stream; tests may too).
func ContextWithPeer(ctx context.Context, p Peer) context.Context {
	return context.WithValue(ctx, peerKey{}, p)
}

// PeerFromContext returns the TLS-authenticated peer of a stream; the
// context given to Dialer.DialLocal carries it. ok is false in insecure
// mode.
func PeerFromContext(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// maxOpening bounds the streams of one yamux session that wait for their
// header at once (serveConn).
const maxOpening = 256

const (
	defaultHeaderTimeout = 5 * time.Second
	defaultDialTimeout   = 5 * time.Second
)

func (c *ServerConfig) validate() error {
	if c.Listener == nil {
		return errors.New("no Listener")
	}
	var err error
	if c.StreamWindow, err = checkStreamWindow(c.StreamWindow); err != nil {
		return err
	}
	return c.validateStreams()
}

// validateStreams checks and defaults the fields every mesh server (yamux
// or QUIC) uses to serve streams.
func (c *ServerConfig) validateStreams() error {
	if c.Dialer == nil {
		return errors.New("no Dialer")
	}
	if c.HeaderTimeout < 0 || c.DialTimeout < 0 {
		return errors.New("negative timeout")
	}
	if c.HeaderTimeout == 0 {
		c.HeaderTimeout = defaultHeaderTimeout
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = defaultDialTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.PeerStreams == nil {
		c.PeerStreams = NewPeerStreams(0, 0, c.Metrics)
	}
	return nil
}

// Server accepts yamux sessions from peer agents on the mesh port and relays
// each stream to the local workload its header names.
type Server struct {
	cfg    ServerConfig
	log    *slog.Logger
	limit  *PeerStreams // cfg.PeerStreams
	cuts   *cutReports  // of cuts over the buffer budget (cutreport.go)
	gate   *identity.HandshakeGate
	m      *meshMetrics
	ctx    context.Context // canceled by Close; parent of every stream's
	cancel context.CancelFunc
	wg     sync.WaitGroup // serveConn and serveStream goroutines
	active atomic.Int64   // streams being served
	done   chan struct{}  // closed when Close has finished

	mu       sync.Mutex // guards the following
	serving  bool
	closing  bool
	sessions map[*yamux.Session]*peerAuth // the peer; zero in insecure mode
}

// NewServer checks cfg and returns a server that does nothing until Serve.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("transport: server config: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		limit:    cfg.PeerStreams,
		cuts:     newCutReports(func(log *slog.Logger, c Cut) { sayCut(log, cfg.OnCut, c) }),
		gate:     identity.NewHandshakeGate(cfg.MaxHandshakes, cfg.MaxHandshakesPerSource),
		m:        newMeshMetrics(cfg.Metrics, "in"),
		ctx:      ctx,
		cancel:   cancel,
		done:     make(chan struct{}),
		sessions: make(map[*yamux.Session]*peerAuth),
	}, nil
}

// Serve accepts connections until ctx is done or Close is called, then
// closes the server and returns nil. A failing listener returns its error;
// the caller should then Close.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return errors.New("transport: Serve called twice")
	}
	s.serving = true
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return nil
	}

	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()

	var backoff time.Duration
	for {
		conn, err := s.cfg.Listener.Accept()
		if err != nil {
			if s.isClosing() {
				s.Close() // wait for it
				return nil
			}
			// Like net/http: back off on EMFILE and friends.
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("mesh: accept", "err", err, "retry_in", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-s.ctx.Done():
					continue // Accept fails now; handled above
				}
			}
			return fmt.Errorf("transport: accept: %w", err)
		}
		backoff = 0

		release := func() bool { return true }
		var ev *identity.Evictable
		if s.cfg.TLS != nil {
			ev = identity.NewEvictable(conn)
			slot, reason := s.gate.Enter(conn.RemoteAddr(), ev.Evict)
			if slot == nil {
				// No goroutine, no TLS work; Debug: an attack must not
				// flood the log.
				conn.Close()
				s.m.tlsFailure(reason)
				s.log.Debug("mesh: connection refused before its handshake", "peer", conn.RemoteAddr().String(), "reason", reason)
				continue
			}
			s.m.handshakes.Inc()
			release = sync.OnceValue(func() bool { held := slot.Release(); s.m.handshakes.Dec(); return held })
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			release()
			conn.Close()
			continue
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(conn, release, ev)
	}
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Close closes the listener and every session, ends every relay and waits
// for all of the server's goroutines. It is idempotent; later calls wait for
// the first to finish.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		<-s.done
		return nil
	}
	s.closing = true
	sessions := make([]*yamux.Session, 0, len(s.sessions))
	for sess, pa := range s.sessions {
		pa.drains.end() // before Close wakes their reads, to spin (drain.go)
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()

	err := s.cfg.Listener.Close()
	// Sessions first: a relay ended by cancel would half-close its stream
	// (FIN), and the peer would take the abort for a clean end.
	for _, sess := range sessions {
		sess.Close()
	}
	s.cancel()
	s.wg.Wait()
	s.cuts.close()
	close(s.done)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("transport: close listener: %w", err)
	}
	return nil
}

// ActiveStreams returns the number of streams being served: reading a
// header, dialing or relaying.
func (s *Server) ActiveStreams() int64 {
	return s.active.Load()
}

// serveConn runs one peer's yamux session until it ends. The first stream
// must arrive within HeaderTimeout; a peer that sends anything but yamux
// frames ends its own session.
//
// release frees the connection's handshake slot (Server.gate) and reports
// false if the gate evicted it: the connection is then closed, even when
// its handshake succeeded.
func (s *Server) serveConn(conn net.Conn, release func() bool, ev *identity.Evictable) {
	defer s.wg.Done()
	log := s.log.With("peer", conn.RemoteAddr().String())

	var peer Peer
	var auth peerAuth
	if s.cfg.TLS != nil {
		batch := newRecordBatcher(conn)
		tc, err := identity.ServerHandshake(s.ctx, batch, s.cfg.TLS, s.cfg.HeaderTimeout)
		if !release() { // evicted, its cancel closing conn now or soon
			err = errors.Join(err, identity.ErrEvicted)
		}
		if err != nil {
			conn.Close()
			reason := ev.Reason(identity.HandshakeReason(err))
			if errors.Is(err, identity.ErrEvicted) {
				reason = identity.ReasonEvicted
			}
			s.m.tlsFailure(reason)
			level := slog.LevelWarn
			if reason == identity.ReasonEvicted { // its slot given to a fairer source; Debug: an attack must not flood the log
				level = slog.LevelDebug
			}
			log.Log(s.ctx, level, "mesh: TLS handshake refused", "reason", reason, "err", err)
			return
		}
		id, err := identity.PeerID(tc.ConnectionState())
		site, node, ok := identity.ParseNodeID(id)
		if err != nil || !ok { // the authorizer allows node IDs only
			tc.Close()
			s.m.tlsFailure(identity.ReasonUnauthorized)
			log.Warn("mesh: peer is not a node", "id", id.String(), "err", err)
			return
		}
		peer = Peer{ID: id, Site: site, Node: node}
		auth = authOf(id, tc.ConnectionState())
		conn = &tlsFrameConn{Conn: tc, batch: batch}
		log = log.With("peerId", id.String())
	} else {
		var served bool
		if conn, served = s.plainConn(conn, log); served {
			return
		}
	}

	key := peerStreamsKey(conn, peer)
	pc := s.limit.joinSession(key)
	if pc == nil {
		conn.Close()
		log.Warn("mesh: session refused", "err", errPeerSessions)
		return
	}
	defer s.limit.leave(key, pc, true)

	sess, refused, err := s.yamuxServer(conn, &auth, pc)
	if err != nil { // only for a bad config
		conn.Close()
		log.Error("mesh: start session", "err", err)
		return
	}
	if !s.trackSession(sess, &auth) {
		sess.Close()
		return
	}
	defer s.untrackSession(sess)
	pc.yamux.add(sess, &auth, refused) // for the buffer budget, until the session ends or is cut
	defer pc.yamux.remove(sess)
	budget := s.limit.bufferStreams(s.cfg.StreamWindow)
	if d := auth.untilExpiry(); d >= 0 {
		defer afterFuncWaited(d, func() { s.cutIfInvalid(sess, &auth) })()
	}

	// Streams of this session end with it: once the peer is gone, their
	// yamux reads return a plain EOF that must not look like a clean end.
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	if s.cfg.TLS != nil {
		ctx = ContextWithPeer(ctx, peer)
	}

	opening := make(chan struct{}, maxOpening)
	hctx, hcancel := context.WithTimeout(ctx, s.cfg.HeaderTimeout)
	st, err := sess.AcceptStreamWithContext(hctx)
	hcancel()
	for err == nil {
		// Checked per stream: the deny list may have changed, or the
		// chain expired, before Revalidate or the timer closed sess.
		if s.cutIfInvalid(sess, &auth) {
			st.Close()
			return
		}
		v := s.overBuffer(sess, &auth, pc, budget, log)
		if v == bufferCut {
			st.Close()
			return
		}
		sc := newStreamConn(st)
		sc.cause, sc.refuse = auth.cause, refused
		if v == bufferRefuse || !s.limit.acquire(pc) {
			s.refuseOverLimit(sc, pc, v, budget)
			s.drainRefused(sc)
			st, err = sess.AcceptStreamWithContext(ctx)
			continue
		}
		// At most maxOpening streams of the session wait for their
		// header at once: a peer that opens streams and sends nothing
		// (12 bytes of SYN each) then fills yamux's backlog and its opens
		// block, instead of the agent holding a goroutine and a stream
		// for each. Streams past their header are not counted.
		select {
		case opening <- struct{}{}:
		case <-ctx.Done():
			s.limit.release(pc)
			pc.yamux.unserve()
			st.Close()
			err = ctx.Err()
			continue
		case <-sess.CloseChan():
			s.limit.release(pc)
			pc.yamux.unserve()
			st.Close()
			err = yamux.ErrSessionShutdown
			continue
		}
		s.wg.Add(1) // the counter is > 0: serveConn holds one
		go func() { defer pc.yamux.unserve(); s.serveStreamThen(ctx, sc, nil, pc, func() { <-opening }) }()
		st, err = sess.AcceptStreamWithContext(ctx)
	}
	if ctx.Err() == nil || errors.Is(err, context.DeadlineExceeded) {
		log.Debug("mesh: session ended", "err", err)
	}
}

func (s *Server) trackSession(sess *yamux.Session, auth *peerAuth) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.sessions[sess] = auth
	s.m.sessions.Inc()
	return true
}

func (s *Server) untrackSession(sess *yamux.Session) {
	sess.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, sess)
	s.m.sessions.Dec()
}
