package relay

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// Refusal reasons besides identity's handshake reasons and the frame
// reasons: the reason label of fogmesh_relay_refused_total.
const (
	ReasonBadRequest      = "bad_request"             // a well-formed frame with a bad value (peer ID)
	ReasonUnexpected      = "unexpected_frame"        // a frame type not allowed here
	ReasonReplay          = "replay"                  // reused nonce or stale Introduce
	ReasonOtherDomain     = "other_trust_domain"      // the peer is in another trust domain
	ReasonDenied          = "denied"                  // Config.Policy refused
	ReasonNotConnected    = "peer_not_connected"      // the peer has no control connection
	ReasonSessionLimit    = "session_limit"           // MaxSessionsPerNode or MaxSessionsPerPair reached
	ReasonAcceptTimeout   = "accept_timeout"          // the peer did not open its side
	ReasonUnknownSession  = "unknown_session"         // Accept of a session that is not yours or gone
	ReasonSlowReader      = "slow_reader"             // a control frame could not be written in WriteTimeout
	ReasonRevokedLive     = "revoked_live"            // an open connection closed by a new revocation
	ReasonUDPShort        = "udp_short"               // UDP request shorter than the answer would be
	ReasonUDPBadToken     = "udp_bad_token"           // UDP request with an unknown token
	ReasonNonceStoreFull  = "nonce_store_full"        // too many remembered nonces
	ReasonNotNodeIdentity = "not_node_identity"       // authenticated, but not a node
	ReasonWrongALPN       = "wrong_alpn"              // no or unknown ALPN
	ReasonBusy            = identity.ReasonBusy       // MaxHandshakes connections were being authenticated
	ReasonSourceBusy      = identity.ReasonSourceBusy // MaxHandshakesPerSource of them were from its address
	ReasonEvicted         = identity.ReasonEvicted    // in its handshake, its slot given to a source holding fewer
	ReasonControlTimeout  = "control_timeout"         // a control connection silent for ControlTimeout
)

// refusalReasons is every reason label of fogmesh_relay_refused_total,
// each once, built once: New ranges over it and nothing appends to it.
var refusalReasons = slices.Clip(slices.Concat(identity.Reasons, []string{
	ReasonFrameTooLarge, ReasonFrameTrunc, ReasonFrameType, ReasonFrameBad,
	ReasonBadRequest, ReasonUnexpected, ReasonReplay, ReasonOtherDomain, ReasonDenied, ReasonNotConnected,
	ReasonSessionLimit, ReasonAcceptTimeout, ReasonUnknownSession, ReasonSlowReader, ReasonRevokedLive,
	ReasonUDPShort, ReasonUDPBadToken, ReasonNonceStoreFull, ReasonNotNodeIdentity, ReasonWrongALPN, ReasonControlTimeout,
	ReasonIntroductionLimit,
}, udpReasons))

// Server is a relay. New does not listen: connections come in through
// Serve and ServeUDP, so tests and the command choose the sockets.
type Server struct {
	cfg  Config
	tls  *tls.Config
	log  *slog.Logger
	ctx  context.Context // cancelled by Close
	stop context.CancelFunc
	wg   sync.WaitGroup

	mRefused                        map[string]*metrics.Counter
	mSessionsTotal                  *metrics.Counter
	mBytes                          *metrics.Counter
	mIntroductions                  *metrics.Counter
	mUDPAnswers                     *metrics.Counter
	mReloadErrors                   *metrics.Counter
	mUDPBytes, mUDPWrites, mUDPSent *metrics.Counter // payload forwarded; the UDP port's socket writes, their datagrams
	mUDPChannels                    *metrics.Counter
	mPairLimit                      *metrics.Counter // sessions refused by MaxSessionsPerPair (pairs.go)

	handshakes *identity.HandshakeGate // a slot per connection being authenticated
	refusals   refusalLog              // when each reason was last logged
	// tap, if set (tests), sees every byte the relay forwards.
	tap func(session string, p []byte)

	mu        sync.RWMutex // guards the following; read-locked per UDP channel datagram
	closed    bool
	listeners map[io.Closer]struct{}
	conns     map[net.Conn]connPeer // every open connection → its peer (zero before the handshake)
	nodes     map[string]*node      // by SPIFFE ID
	pending   map[string]*session   // dialed sessions waiting for Accept
	pairs     map[pair]int          // sessions (pending or open) per dialer and dialed node (pairs.go)
	active    int                   // spliced sessions
	nonces    map[string]time.Time
	nonceUse  nonceUse          // per node, in nonces (refuse.go)
	tokens    map[string]string // UDP token → node ID
	udpConns  []net.PacketConn  // the sockets ServeUDP serves, in order
	udpChans  map[[udpChanIDLen]byte]*udpChan
}

// node is what the relay knows about one node: its control connection (if
// any), its sessions and its byte budget. It lives while either exists.
type node struct {
	id          spiffeid.ID
	ctrl        *ctrlConn
	sessions    int
	udpChans    int
	bucket      *bucket
	candidates  []string
	udpObserved string
}

// New returns a relay server.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Server{
		cfg: cfg, log: cfg.Logger, ctx: ctx, stop: stop,
		tls:        cfg.Source.ServerConfig(identity.AuthorizeNode(), ALPNControl, ALPNData),
		handshakes: identity.NewHandshakeGate(cfg.MaxHandshakes, cfg.MaxHandshakesPerSource),
		mRefused:   map[string]*metrics.Counter{},
		listeners:  map[io.Closer]struct{}{},
		conns:      map[net.Conn]connPeer{},
		nodes:      map[string]*node{},
		pending:    map[string]*session{},
		pairs:      map[pair]int{},
		nonces:     map[string]time.Time{},
		tokens:     map[string]string{},
		udpChans:   map[[udpChanIDLen]byte]*udpChan{},
	}
	m := cfg.Metrics
	for _, r := range refusalReasons {
		s.mRefused[r] = m.GetOrCreateCounter(fmt.Sprintf(`fogmesh_relay_refused_total{reason=%q}`, r))
	}
	s.mSessionsTotal = m.NewCounter(`fogmesh_relay_sessions_total`)
	s.mBytes = m.NewCounter(`fogmesh_relay_bytes_total`)
	s.mIntroductions = m.NewCounter(`fogmesh_relay_introductions_total`)
	s.mUDPAnswers = m.NewCounter(`fogmesh_relay_udp_reflexive_total`)
	s.mReloadErrors = m.NewCounter(`fogmesh_relay_reload_errors_total`)
	s.mPairLimit = m.NewCounter(`fogmesh_relay_pair_session_limit_total`)
	s.udpMetrics(m)
	m.NewGauge(`fogmesh_relay_nodes_connected`, func() float64 { return float64(s.ConnectedNodes()) })
	m.NewGauge(`fogmesh_relay_sessions_active`, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return float64(s.active)
	})
	m.NewGauge(`fogmesh_relay_handshakes_in_progress`, func() float64 { return float64(s.handshakes.InProgress()) })
	m.NewGauge(`fogmesh_relay_sessions_pending`, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return float64(len(s.pending))
	})
	s.wg.Add(1)
	go s.sweepUDP()
	return s, nil
}

// refuse counts a refusal.
func (s *Server) refuse(reason string) {
	c := s.mRefused[reason]
	if c == nil {
		c = s.mRefused[identity.ReasonOther]
	}
	c.Inc()
}

// ConnectedNodes is the number of nodes with a control connection.
func (s *Server) ConnectedNodes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, nd := range s.nodes {
		if nd.ctrl != nil {
			n++
		}
	}
	return n
}

// Serve accepts TLS connections on ln until Close (returns nil) or an
// accept error (returned). It closes ln.
func (s *Server) Serve(ln net.Listener) error {
	if !s.track(ln) {
		ln.Close()
		return nil
	}
	defer s.untrack(ln)
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("relay: accept: %w", err)
		}
		if !s.trackConn(c) { // counted in wg when true
			c.Close()
			return nil
		}
		ev := identity.NewEvictable(c)
		slot, reason := s.handshakes.Enter(c.RemoteAddr(), ev.Evict)
		if slot == nil { // closed before any TLS work
			s.refuseLogged(slog.LevelDebug, reason, "remote", c.RemoteAddr().String(), "too many handshakes in progress")
			s.closeConn(c)
			s.wg.Done()
			continue
		}
		go s.serveConn(c, slot.Release, ev)
	}
}

func (s *Server) track(l io.Closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Server) untrack(l io.Closer) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
	l.Close()
}

// connPeer is who an open connection authenticated as: its SPIFFE ID and
// the certificates it presented (leaf first), so a deny list that names
// the node or a CA of its chain (a revoked region) closes it.
type connPeer struct {
	id    spiffeid.ID
	certs []*x509.Certificate
}

func (s *Server) trackConn(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = connPeer{}
	// Counted here, under mu and not closed, so Close (which sets closed
	// under mu before it waits) waits for the connection's goroutine; an
	// Add after the unlock could come once Close's wait had returned.
	s.wg.Add(1)
	return true
}

// closeConn closes c and forgets it.
func (s *Server) closeConn(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// Close stops the listeners, closes every connection and waits for every
// goroutine the server started. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	s.stop()
	var cl []io.Closer
	for l := range s.listeners {
		cl = append(cl, l)
	}
	for c := range s.conns {
		cl = append(cl, c)
	}
	s.mu.Unlock()
	for _, c := range cl {
		c.Close()
	}
	s.wg.Wait()
	return nil
}

// SetDenied replaces the deny list of revoked IDs: new handshakes of those
// nodes, or of nodes a listed CA (a region) certified, are refused, and
// their open connections are closed now.
func (s *Server) SetDenied(ids []string) {
	s.cfg.Source.SetDenied(ids)
	s.mu.Lock()
	var victims []net.Conn
	for c, p := range s.conns {
		if !p.id.IsZero() && s.cfg.Source.CheckPeer(p.id, p.certs) != nil {
			victims = append(victims, c)
		}
	}
	s.mu.Unlock()
	for _, c := range victims {
		s.refuse(ReasonRevokedLive)
		c.Close()
	}
	if len(victims) > 0 {
		s.log.Info("relay: closed connections of revoked nodes", "connections", len(victims))
	}
}

// serveConn authenticates one connection and runs it as a control or a
// data connection. release frees its handshake slot and reports false if
// the gate evicted it: the connection is then closed, even when its
// handshake succeeded.
func (s *Server) serveConn(raw net.Conn, release func() bool, ev *identity.Evictable) {
	defer s.wg.Done()
	handedOff := false
	defer func() {
		if !handedOff {
			s.closeConn(raw)
		}
	}()
	tc, err := identity.ServerHandshake(s.ctx, raw, s.tls, s.cfg.HandshakeTimeout)
	if !release() { // evicted, its cancel closing raw now or soon
		s.refuseConn(ReasonEvicted, raw.RemoteAddr().String(), errors.Join(err, identity.ErrEvicted).Error())
		return
	}
	if err != nil {
		s.refuseConn(ev.Reason(identity.HandshakeReason(err)), raw.RemoteAddr().String(), err.Error())
		return
	}
	cs := tc.ConnectionState()
	id, err := identity.PeerID(cs)
	if err != nil {
		s.refuse(ReasonNotNodeIdentity)
		return
	}
	// Wrap tc under raw's key: closing raw closes the TLS connection too.
	s.mu.Lock()
	if _, ok := s.conns[raw]; ok {
		s.conns[raw] = connPeer{id: id, certs: cs.PeerCertificates}
	}
	s.mu.Unlock()
	switch cs.NegotiatedProtocol {
	case ALPNControl:
		s.serveControl(raw, tc, id)
	case ALPNData:
		handedOff = s.serveData(raw, tc, id)
	default:
		s.refuse(ReasonWrongALPN)
	}
}

// newID returns 16 random bytes in hex.
func newID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// nodeLocked returns the node entry of id, creating it.
func (s *Server) nodeLocked(id spiffeid.ID) *node {
	n := s.nodes[id.String()]
	if n == nil {
		n = &node{id: id}
		if s.cfg.BytesPerSecond > 0 {
			n.bucket = newBucket(s.cfg.BytesPerSecond, s.cfg.Burst, s.cfg.Now)
		}
		s.nodes[id.String()] = n
	}
	return n
}

// gcLocked forgets n when nothing refers to it any more.
func (s *Server) gcLocked(n *node) {
	if n.ctrl == nil && n.sessions == 0 && n.udpChans == 0 {
		delete(s.nodes, n.id.String())
	}
}

// authorize checks that from may reach to: same trust domain, then the
// policy. It returns a refusal reason or "".
func (s *Server) authorize(from, to spiffeid.ID) string {
	if from == to {
		return ReasonBadRequest // an agent needs no relay to reach itself
	}
	if from.TrustDomain() != to.TrustDomain() {
		return ReasonOtherDomain
	}
	if _, _, ok := identity.ParseNodeID(to); !ok {
		return ReasonBadRequest
	}
	if s.cfg.Policy != nil && s.cfg.Policy(from, to) != nil {
		return ReasonDenied
	}
	return ""
}
