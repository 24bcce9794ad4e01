package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/quic-go/quic-go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// QUICServerConfig configures a QUICServer: the fields of ServerConfig
// with a quic.Transport in place of the Listener. Transport, Dialer and
// TLS are required; every other zero value means the ServerConfig default.
type QUICServerConfig struct {
	// Transport is the QUIC endpoint of the mesh UDP socket
	// (NewQUICTransport). The server listens on it; the caller owns it and
	// its socket, and may dial from it with a QUICClient too.
	Transport *quic.Transport
	// Dialer connects accepted streams to local workloads, exactly as for
	// Server (StreamRelayer included).
	Dialer Dialer
	// TLS is identity.Source.ServerConfig(identity.AuthorizeNode()): the
	// same trust bundles, deny list and authorizer as the TLS mesh port.
	// Its NextProtos is replaced by ALPNMeshQUIC. Required: QUIC has no
	// plaintext mode.
	TLS *tls.Config
	// HeaderTimeout bounds the QUIC handshake and each stream's header.
	// Default 5s.
	HeaderTimeout time.Duration
	// DialTimeout bounds each Dialer.DialLocal call. Default 5s.
	DialTimeout time.Duration
	// Logger, Metrics and TrustedSourceID are as in ServerConfig. Sharing
	// Metrics with the TLS server sums both carriers' series.
	Logger          *slog.Logger
	Metrics         *metrics.Set
	TrustedSourceID func(spiffeid.ID) bool
	// Timers are the keepalive and idle timeout of accepted connections.
	Timers QUICTimers
	// PeerCheck, OnCut and PeerStreams are as in ServerConfig: pass the
	// TLS server's PeerStreams so that a peer's streams over both count
	// together.
	PeerCheck   PeerCheck
	OnCut       func(Cut)
	PeerStreams *PeerStreams
	// MaxHandshakes and MaxHandshakesPerSource bound the QUIC handshakes
	// in progress, in all and from one source IP address (an IPv6 /64),
	// as ServerConfig's bound the TLS mesh port's (the same defaults, a
	// gate of this server's own): see quichandshake.go.
	MaxHandshakes, MaxHandshakesPerSource int
}

// QUICServer accepts QUIC connections from peer agents and relays each
// stream to the local workload its header names, as Server does for
// yamux sessions.
type QUICServer struct {
	core *Server // stream handling shared with Server; never Serve'd
	ln   *quic.Listener
	tr   *quic.Transport // its handshake hooks are the server's (quichandshake.go)

	mu      sync.Mutex // guards the following
	serving bool
	conns   map[*quic.Conn]*peerAuth
}

// NewQUICServer checks cfg and starts listening on its transport; no
// connection is accepted until Serve.
func NewQUICServer(cfg QUICServerConfig) (*QUICServer, error) {
	if cfg.Transport == nil {
		return nil, errors.New("transport: QUIC server config: no Transport")
	}
	scfg := ServerConfig{
		Dialer:          cfg.Dialer,
		HeaderTimeout:   cfg.HeaderTimeout,
		DialTimeout:     cfg.DialTimeout,
		Logger:          cfg.Logger,
		Metrics:         cfg.Metrics,
		TLS:             cfg.TLS,
		TrustedSourceID: cfg.TrustedSourceID,
		PeerCheck:       cfg.PeerCheck,
		OnCut:           cfg.OnCut,
		PeerStreams:     cfg.PeerStreams,
	}
	if err := scfg.validateStreams(); err != nil {
		return nil, fmt.Errorf("transport: QUIC server config: %w", err)
	}
	if err := cfg.Timers.validate(); err != nil {
		return nil, fmt.Errorf("transport: QUIC server config: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	core := &Server{
		cfg:    scfg,
		log:    scfg.Logger,
		limit:  scfg.PeerStreams,
		m:      newMeshMetrics(scfg.Metrics, "in"),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
	}
	tlsConf, err := quicTLS(cfg.TLS, core.m)
	if err == nil {
		g := &quicGate{gate: identity.NewHandshakeGate(cfg.MaxHandshakes, cfg.MaxHandshakesPerSource), m: core.m, s: core}
		err = g.hook(cfg.Transport)
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("transport: QUIC server config: %w", err)
	}
	ln, err := cfg.Transport.Listen(tlsConf, quicConfig(cfg.Timers, scfg.HeaderTimeout))
	if err != nil {
		unhook(cfg.Transport)
		cancel()
		return nil, fmt.Errorf("transport: QUIC listen: %w", err)
	}
	return &QUICServer{core: core, ln: ln, tr: cfg.Transport, conns: make(map[*quic.Conn]*peerAuth)}, nil
}

// Serve accepts connections until ctx is done or Close is called, then
// closes the server and returns nil. A failing transport returns its
// error; the caller should then Close.
func (s *QUICServer) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return errors.New("transport: Serve called twice")
	}
	s.serving = true
	s.mu.Unlock()

	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	for {
		conn, err := s.ln.Accept(s.core.ctx)
		if err != nil {
			if s.core.ctx.Err() != nil || errors.Is(err, quic.ErrServerClosed) && s.core.isClosing() {
				s.Close()
				return nil
			}
			return fmt.Errorf("transport: QUIC accept: %w", err)
		}
		releaseSlot(conn) // its handshake is done (quichandshake.go)
		s.core.mu.Lock()
		if s.core.closing {
			s.core.mu.Unlock()
			conn.CloseWithError(quicCodeClosed, "server closing")
			continue
		}
		s.core.wg.Add(1)
		s.core.mu.Unlock()
		go s.serveConn(conn)
	}
}

// serveConn checks the peer's node identity (the certificate itself was
// verified in the handshake) and serves the connection's streams until it
// ends.
func (s *QUICServer) serveConn(conn *quic.Conn) {
	defer s.core.wg.Done()
	log := s.core.log.With("peer", conn.RemoteAddr().String())
	id, err := identity.PeerID(conn.ConnectionState().TLS)
	site, node, ok := identity.ParseNodeID(id)
	if err != nil || !ok { // the authorizer allows node IDs only
		conn.CloseWithError(quicCodeNotNode, "not a node identity")
		s.core.m.tlsFailure(identity.ReasonUnauthorized)
		log.Warn("mesh: QUIC peer is not a node", "id", id.String(), "err", err)
		return
	}
	key := id.String()
	pc := s.core.limit.joinSession(key)
	if pc == nil {
		conn.CloseWithError(quicCodeTooMany, errPeerSessions.Error())
		log.Warn("mesh: QUIC connection refused", "peerId", key, "err", errPeerSessions)
		return
	}
	defer s.core.limit.leave(key, pc, true)
	auth := authOf(id, conn.ConnectionState().TLS)
	if !s.track(conn, &auth) {
		conn.CloseWithError(quicCodeClosed, "server closing")
		return
	}
	defer s.untrack(conn)
	if d := auth.untilExpiry(); d >= 0 {
		defer afterFuncWaited(d, func() { s.cutIfInvalid(conn, &auth) })()
	}

	ctx, cancel := context.WithCancel(s.core.ctx)
	defer cancel()
	ctx = ContextWithPeer(ctx, Peer{ID: id, Site: site, Node: node})
	for {
		st, err := conn.AcceptStream(ctx)
		if err != nil {
			if ctx.Err() == nil {
				log.Debug("mesh: QUIC connection ended", "peerId", id.String(), "err", err)
			}
			return
		}
		if s.cutIfInvalid(conn, &auth) { // as in Server.serveConn
			return
		}
		if !s.core.limit.acquire(pc) {
			s.core.refuseOverCap(newQUICStreamConn(st, conn), s.core.limit.msg)
			continue
		}
		s.core.wg.Add(1) // the counter is > 0: serveConn holds one
		go s.serveStream(ctx, st, conn, pc)
	}
}

// serveStream serves one stream as Server does, and also ends it when the
// peer aborts it (Close sends STOP_SENDING): a relay waiting on a silent
// workload would otherwise outlive the stream.
func (s *QUICServer) serveStream(ctx context.Context, st *quic.Stream, conn *quic.Conn, pc *peerCount) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(st.Context(), func() {
		var se *quic.StreamError
		if errors.As(context.Cause(st.Context()), &se) && se.Remote {
			cancel()
		}
	})
	defer stop()
	s.core.serveStream(ctx, newQUICStreamConn(st, conn), pc)
}

func (s *QUICServer) track(conn *quic.Conn, auth *peerAuth) bool {
	s.core.mu.Lock()
	defer s.core.mu.Unlock()
	if s.core.closing {
		return false
	}
	s.mu.Lock()
	s.conns[conn] = auth
	s.mu.Unlock()
	s.core.m.sessions.Inc()
	return true
}

func (s *QUICServer) untrack(conn *quic.Conn) {
	conn.CloseWithError(quicCodeClosed, "")
	s.mu.Lock()
	delete(s.conns, conn)
	s.mu.Unlock()
	s.core.m.sessions.Dec()
}

// Close stops accepting, closes every connection (their streams fail at
// once on both ends), ends every relay and waits for the server's
// goroutines. It leaves the transport and its socket open. It is
// idempotent; later calls wait for the first to finish.
func (s *QUICServer) Close() error {
	s.core.mu.Lock()
	if s.core.closing {
		s.core.mu.Unlock()
		<-s.core.done
		return nil
	}
	s.core.closing = true
	s.core.mu.Unlock()

	err := s.ln.Close()
	unhook(s.tr)
	s.mu.Lock()
	conns := make([]*quic.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	// Connections first, as in Server.Close: a relay ended by cancel would
	// send FIN, and the peer would take the abort for a clean end.
	for _, c := range conns {
		c.CloseWithError(quicCodeClosed, "server closing")
	}
	s.core.cancel()
	s.core.wg.Wait()
	close(s.core.done)
	if err != nil && !errors.Is(err, quic.ErrServerClosed) {
		return fmt.Errorf("transport: close QUIC listener: %w", err)
	}
	return nil
}

// DropPeer closes every connection of the peer with SPIFFE ID id (a
// revoked node) and returns how many it closed.
func (s *QUICServer) DropPeer(id spiffeid.ID) int {
	s.mu.Lock()
	var drop []*quic.Conn
	for c, pa := range s.conns {
		if pa.id == id {
			drop = append(drop, c)
		}
	}
	s.mu.Unlock()
	for _, c := range drop {
		c.CloseWithError(quicCodeDropped, "peer dropped")
	}
	return len(drop)
}

// ActiveStreams returns the number of streams being served.
func (s *QUICServer) ActiveStreams() int64 { return s.core.ActiveStreams() }
