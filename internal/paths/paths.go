// Package paths finds and keeps an agent's path to each peer agent: a
// direct TCP connection where the peer's address is reachable, a UDP path
// punched through both NATs carrying the mesh over QUIC, or a session
// relayed by a relay both agents keep a connection to. Peers are node
// identities, not addresses: two sites may use the same private subnet.
//
// A first Dial to a peer races a direct attempt against the relay (which
// starts DirectHeadStart later, or as soon as the direct attempt fails)
// and uses whichever connects first; meanwhile, when the path is not
// direct, it punches in the background and moves new streams to the
// punched path once it works (the relayed session is retired, its open
// streams keep going). A path that breaks is dropped and the next Dial
// finds another. Every carrier runs the same mesh stream header and the
// agents' own TLS end to end: a relay forwards bytes it cannot read.
package paths

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/netseam"
	"github.com/fogmesh/fogmesh/internal/punch"
	"github.com/fogmesh/fogmesh/internal/relay"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// Kind is how a path reaches its peer.
type Kind string

// The kinds of path, best first.
const (
	Direct  Kind = "direct"
	Punched Kind = "punched"
	Relayed Kind = "relayed"
)

// Defaults of Config.
const (
	DefaultDirectHeadStart = 300 * time.Millisecond
	DefaultRetryAfter      = 30 * time.Second
)

// Peer is a peer agent as the registry knows it.
type Peer struct {
	// Name is the node's name: the key of its path.
	Name string
	// ID is its node SPIFFE ID (zero in insecure mode: no check).
	ID spiffeid.ID
	// Addr is the mesh address it advertises (TCP host:port); it may be
	// a private address of another site, unreachable or even this
	// site's own.
	Addr string
}

// Config configures a Manager. Without Relays it is a plain TCP mesh
// client (what the agent was before paths): every peer is dialed at its
// advertised address.
type Config struct {
	// Self is this node's name; SelfID its SPIFFE ID (secure mode).
	Self   string
	SelfID spiffeid.ID
	// TLS is the mesh client configuration (nil: insecure mode, direct
	// paths only). ServerTLS, Dialer and TrustedSourceID serve the
	// streams peers open over punched paths, as the TCP mesh port does.
	TLS             *tls.Config
	ServerTLS       *tls.Config
	Dialer          transport.Dialer
	TrustedSourceID func(spiffeid.ID) bool
	// Network carries direct TCP paths (default the OS's).
	Network netseam.Network
	Logger  *slog.Logger
	Metrics *metrics.Set
	// PingInterval and DialTimeout are the TCP mesh client's.
	PingInterval, DialTimeout time.Duration

	// Relays are the relays' addresses (host:port, TCP; a relay answers
	// reflexive UDP requests on the same address). Several: the nearest
	// by RTT is home, the others take over when it is lost.
	Relays []string
	// RelayTLS is the client configuration for the relays (their
	// certificates come from the mesh CA; relay.AuthorizeRelay).
	RelayTLS *tls.Config
	// UDPAddr is the socket punched paths use ("0.0.0.0:0" for any port);
	// "" or "off": no punching, relayed paths only.
	UDPAddr string
	// KeepAlive is how often punched paths and relay connections are
	// refreshed to hold NAT mappings (default 20 s, below the common
	// 30 s UDP timeout).
	KeepAlive time.Duration
	// DirectHeadStart is how long a first direct attempt runs alone
	// before the relay is tried beside it (default 300 ms).
	DirectHeadStart time.Duration
	// RetryAfter is how long a peer whose direct attempt or punch failed
	// is not tried that way again (default 30 s).
	RetryAfter time.Duration
}

// Manager opens mesh streams to peer agents over the best path it found.
type Manager struct {
	cfg  Config
	log  *slog.Logger
	tcp  *transport.Client
	pool *relay.Pool // nil without relays
	udp  *udpSide    // nil until punching is ready (or without it)
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu    sync.Mutex
	peers map[string]*peerState // by node name
	byUDP map[string]string     // punched UDP address -> node name
	punch punchState            // why punching is or is not available

	mDials map[Kind]*metrics.Counter
	mUp    *metrics.Counter
}

// punchState says why punching is or is not running, for Status.
type punchState struct {
	ready  bool
	reason string
	cands  []string
}

// peerState is what the manager knows of one peer.
type peerState struct {
	Peer
	kind       Kind   // the path new streams take; "" before the first
	relay      string // the relay of a relayed path
	since      time.Time
	punched    *punch.Path // a working punched path, if any
	punchAt    time.Time   // earliest next punch attempt
	punchOn    bool        // a punch is in progress
	noDirUntil time.Time
	viaRelay   string // the relay of the last relayed session opened
	lastErr    string
	bytes      *byteCount // of the TCP paths (direct and relayed)
}

type byteCount struct{ out, in atomic.Uint64 }

// New starts a manager: it connects to the relays and, once one answers,
// opens the punching socket and learns its candidates, in the background.
func New(cfg Config) (*Manager, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet()
	}
	if cfg.DirectHeadStart <= 0 {
		cfg.DirectHeadStart = DefaultDirectHeadStart
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = DefaultRetryAfter
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = punch.DefaultKeepAlive
	}
	cfg.Network = netseam.Or(cfg.Network)
	if len(cfg.Relays) > 0 && (cfg.TLS == nil || cfg.RelayTLS == nil || cfg.SelfID.IsZero()) {
		return nil, errors.New("paths: relays need secure mode (node certificate and mesh TLS)")
	}
	ctx, stop := context.WithCancel(context.Background())
	m := &Manager{cfg: cfg, log: cfg.Logger, ctx: ctx, stop: stop,
		peers: map[string]*peerState{}, byUDP: map[string]string{}, mDials: map[Kind]*metrics.Counter{}}
	m.tcp = transport.NewClient(transport.ClientConfig{SourceNode: cfg.Self, Network: (*pathNetwork)(m),
		Logger: cfg.Logger, Metrics: cfg.Metrics, PingInterval: cfg.PingInterval, DialTimeout: cfg.DialTimeout,
		TLS: cfg.TLS, PeerID: m.expectedID})
	for _, k := range []Kind{Direct, Punched, Relayed} {
		m.mDials[k] = cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_path_streams_total{kind=%q}`, k))
		cfg.Metrics.GetOrCreateGauge(fmt.Sprintf(`fogmesh_paths{kind=%q}`, k), func() float64 { return float64(m.count(k)) })
	}
	m.mUp = cfg.Metrics.GetOrCreateCounter(`fogmesh_path_upgrades_total`)
	m.punch.reason = "no relays configured"
	if len(cfg.Relays) > 0 {
		pool, err := relay.NewPool(relay.PoolConfig{Relays: cfg.Relays, TLS: cfg.RelayTLS, KeepAlive: cfg.KeepAlive,
			Dial: cfg.Network.Dial, Metrics: cfg.Metrics})
		if err != nil {
			stop()
			return nil, fmt.Errorf("paths: %w", err)
		}
		m.pool = pool
		m.punch.reason = "waiting for a relay"
		if cfg.UDPAddr == "" || cfg.UDPAddr == "off" {
			m.punch.reason = "punching off (udpAddr)"
		} else {
			m.wg.Add(1)
			go m.startPunching()
		}
	}
	return m, nil
}

// Close closes every path, the relay connections and the punching socket.
func (m *Manager) Close() error {
	m.stop()
	m.mu.Lock() // a maybePunch that missed the stop has added to wg by now
	m.mu.Unlock()
	if m.pool != nil {
		m.pool.Close()
	}
	m.tcp.Close()
	m.wg.Wait()
	m.mu.Lock()
	for _, st := range m.peers {
		if st.punched != nil {
			st.punched.Close()
		}
	}
	u := m.udp
	m.mu.Unlock()
	if u != nil {
		u.close()
	}
	return nil
}

// count is the number of peers whose path is of kind k.
func (m *Manager) count(k Kind) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, st := range m.peers {
		if st.kind == k {
			n++
		}
	}
	return n
}

// state returns the peer's state, recording its identity and address.
func (m *Manager) state(p Peer) *peerState {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.peers[p.Name]
	if st == nil {
		st = &peerState{Peer: p, bytes: &byteCount{}}
		m.peers[p.Name] = st
	}
	if p.Addr != st.Addr || p.ID != st.ID {
		// Not st.Peer = p: Name never changes, and is read without mu.
		st.Addr, st.ID = p.Addr, p.ID
		st.noDirUntil = time.Time{}
	}
	return st
}

// Keys of the TCP client's sessions: one per peer and TCP path kind.
func directKey(name string) string { return "direct|" + name }
func relayKey(name string) string  { return "relay|" + name }

// keyPeer splits a session key.
func keyPeer(key string) (Kind, string) {
	for _, k := range []struct {
		prefix string
		kind   Kind
	}{{"direct|", Direct}, {"relay|", Relayed}} {
		if len(key) > len(k.prefix) && key[:len(k.prefix)] == k.prefix {
			return k.kind, key[len(k.prefix):]
		}
	}
	return "", ""
}

// expectedID is the identity the TCP client requires at a session key:
// always the named peer's, so a direct dial that lands on another node
// (an overlapping subnet) is refused by the TLS check.
func (m *Manager) expectedID(key string) spiffeid.ID {
	_, name := keyPeer(key)
	m.mu.Lock()
	defer m.mu.Unlock()
	if st := m.peers[name]; st != nil {
		return st.ID
	}
	return spiffeid.ID{}
}

// peerAnswered reports whether err is a refusal from the peer agent
// itself (the path worked; another path would get the same answer).
func peerAnswered(err error) bool {
	return errors.Is(err, transport.ErrRefused) || errors.Is(err, transport.ErrDialFailed) || errors.Is(err, transport.ErrDenied)
}

// gaveUp reports whether the caller cancelled ctx (its client went
// away): unlike a deadline, which a path too slow for it also hits, that
// says nothing of the path.
func gaveUp(ctx context.Context) bool { return errors.Is(ctx.Err(), context.Canceled) }

// noVerdict reports whether a dial on the TCP session key that failed
// without the peer's answer says nothing of the path: the caller gave
// up, or its deadline passed while the session was up (a slow peer or
// workload).
func (m *Manager) noVerdict(ctx context.Context, key string) bool {
	return gaveUp(ctx) || ctx.Err() != nil && m.tcp.Live(key)
}

// Dial opens a stream to p for h over the best working path.
func (m *Manager) Dial(ctx context.Context, p Peer, h transport.Header) (net.Conn, error) {
	st := m.state(p)
	if m.pool == nil {
		c, err := m.tcp.Dial(ctx, directKey(p.Name), h)
		if err == nil || peerAnswered(err) {
			m.used(st, Direct)
		}
		return c, err
	}
	if c, err, done := m.dialPunched(ctx, st, h); done {
		return c, err
	}
	m.mu.Lock()
	kind := st.kind
	m.mu.Unlock()
	if kind == Direct || kind == Relayed {
		key := directKey(p.Name)
		if kind == Relayed {
			key = relayKey(p.Name)
		}
		c, err := m.tcp.Dial(ctx, key, h)
		if err == nil || peerAnswered(err) {
			m.used(st, kind) // a new session may have taken another relay
			m.maybePunch(st)
			return c, err
		}
		if m.noVerdict(ctx, key) {
			return nil, err
		}
		m.log.Info("paths: path to peer lost", "peer", p.Name, "kind", kind, "err", err)
		m.mu.Lock()
		if st.kind == kind {
			st.kind, st.lastErr = "", err.Error()
		}
		m.mu.Unlock()
	}
	c, err := m.race(ctx, st, h)
	m.maybePunch(st)
	return c, err
}

// used records that st's new streams take kind (a relayed one through the
// relay its session was opened by).
func (m *Manager) used(st *peerState, kind Kind) {
	m.mu.Lock()
	if kind == Relayed && st.punched != nil {
		// A punch was installed while this stream was opened on the
		// relay: new streams take the punched path, and the relayed
		// session (maybe a fresh one) is retired like the one before.
		m.mu.Unlock()
		m.tcp.Retire(relayKey(st.Name))
		m.mDials[kind].Inc()
		return
	}
	via := ""
	if kind == Relayed {
		via = st.viaRelay
	}
	if st.kind != kind || st.relay != via {
		st.kind, st.relay, st.since = kind, via, time.Now()
		m.log.Info("paths: path to peer", "peer", st.Name, "kind", kind, "relay", via)
	}
	m.mu.Unlock()
	m.mDials[kind].Inc()
}

type raceResult struct {
	kind Kind
	conn net.Conn
	err  error
}

// race tries the direct path (unless it failed lately) and, after
// DirectHeadStart or as soon as the direct one fails, the relay; the
// first stream opened wins. A peer's refusal ends the race: it answered.
func (m *Manager) race(ctx context.Context, st *peerState, h transport.Header) (net.Conn, error) {
	caller := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.mu.Lock()
	tryDirect := st.Addr != "" && time.Now().After(st.noDirUntil)
	m.mu.Unlock()
	results := make(chan raceResult, 2)
	attempt := func(kind Kind, key string) {
		c, err := m.tcp.Dial(ctx, key, h)
		results <- raceResult{kind, c, err}
	}
	pending := 0
	relayStarted := false
	startRelay := func() {
		if !relayStarted {
			relayStarted = true
			pending++
			go attempt(Relayed, relayKey(st.Name))
		}
	}
	var head <-chan time.Time
	if tryDirect {
		pending++
		go attempt(Direct, directKey(st.Name))
		t := time.NewTimer(m.cfg.DirectHeadStart)
		defer t.Stop()
		head = t.C
	} else {
		startRelay()
	}
	var errs []error
	var won net.Conn
	var winErr error
	for pending > 0 {
		select {
		case <-head:
			startRelay()
		case r := <-results:
			pending--
			switch {
			case won != nil || winErr != nil:
				// Lost the race: its stream is not needed, and a session
				// it opened to a worse path neither.
				if r.conn != nil {
					r.conn.Close()
				}
				if r.kind == Relayed && r.err == nil {
					m.tcp.Retire(relayKey(st.Name))
				}
			case r.err == nil:
				won = r.conn
				m.used(st, r.kind)
				cancel() // the other attempt is not needed
			case peerAnswered(r.err):
				winErr = r.err
				m.used(st, r.kind)
				cancel()
			default:
				errs = append(errs, fmt.Errorf("%s: %w", r.kind, r.err))
				if r.kind == Direct && !m.noVerdict(caller, directKey(st.Name)) {
					m.mu.Lock()
					st.noDirUntil = time.Now().Add(m.cfg.RetryAfter)
					m.mu.Unlock()
					startRelay()
				}
			}
		}
	}
	if won != nil || winErr != nil {
		return won, winErr
	}
	err := fmt.Errorf("paths: no path to %s: %w", st.Name, errors.Join(errs...))
	m.mu.Lock()
	st.lastErr = err.Error()
	m.mu.Unlock()
	return nil, err
}

// RTT is the smoothed round-trip time to the peer over its current path.
func (m *Manager) RTT(name string) (time.Duration, bool) {
	m.mu.Lock()
	st := m.peers[name]
	var kind Kind
	var udp string
	if st != nil {
		kind = st.kind
		if st.punched != nil {
			kind, udp = Punched, st.punched.MeshAddr()
		}
	}
	u := m.udp
	m.mu.Unlock()
	switch kind {
	case Punched:
		if u != nil {
			return u.client.RTT(udp)
		}
	case Direct:
		return m.tcp.RTT(directKey(name))
	case Relayed:
		return m.tcp.RTT(relayKey(name))
	}
	return 0, false
}

// DropNode closes every path to the node (gossip declared it dead): its
// streams fail at once; the next Dial finds a path again.
func (m *Manager) DropNode(name string) {
	m.tcp.DropSession(directKey(name))
	m.tcp.DropSession(relayKey(name))
	m.mu.Lock()
	st := m.peers[name]
	var pa *punch.Path
	if st != nil {
		pa, st.punched, st.kind = st.punched, nil, ""
		if pa != nil {
			delete(m.byUDP, pa.MeshAddr())
		}
	}
	u := m.udp
	m.mu.Unlock()
	if pa != nil {
		if u != nil {
			u.client.DropSession(pa.MeshAddr())
		}
		pa.Close()
	}
}

// DropPeer closes every path whose TLS peer is id (a revoked node).
func (m *Manager) DropPeer(id spiffeid.ID) int {
	n := m.tcp.DropPeer(id)
	m.mu.Lock()
	u := m.udp
	m.mu.Unlock()
	if u != nil {
		n += u.client.DropPeer(id) + u.server.DropPeer(id)
	}
	return n
}

// Sessions is the number of open TCP sessions and QUIC connections.
func (m *Manager) Sessions() int {
	n := m.tcp.Sessions()
	m.mu.Lock()
	u := m.udp
	m.mu.Unlock()
	if u != nil {
		n += u.client.Sessions()
	}
	return n
}

// PathStatus is one peer's path, for `fogmesh get paths`.
type PathStatus struct {
	Peer     string    `json:"peer"`
	Kind     Kind      `json:"kind"`
	Relay    string    `json:"relay,omitempty"`
	Remote   string    `json:"remote,omitempty"`
	RTTMs    float64   `json:"rttMs,omitempty"`
	BytesOut uint64    `json:"bytesOut"`
	BytesIn  uint64    `json:"bytesIn"`
	Since    time.Time `json:"since"`
	LastErr  string    `json:"lastError,omitempty"`
}

// Status is the manager's view: every peer's path, the relays, and
// whether punching runs.
type Status struct {
	Paths      []PathStatus        `json:"paths"`
	Relays     []relay.RelayStatus `json:"relays,omitempty"`
	Punching   bool                `json:"punching"`
	PunchNote  string              `json:"punchNote,omitempty"`
	Candidates []string            `json:"candidates,omitempty"`
}

// Status reports every peer's path.
func (m *Manager) Status() Status {
	m.mu.Lock()
	var s Status
	s.Punching, s.PunchNote, s.Candidates = m.punch.ready, m.punch.reason, m.punch.cands
	type row struct {
		PathStatus
		udp string
	}
	var rows []row
	for name, st := range m.peers {
		if st.kind == "" && st.punched == nil {
			continue
		}
		r := row{PathStatus: PathStatus{Peer: name, Kind: st.kind, Relay: st.relay, Since: st.since, LastErr: st.lastErr,
			BytesOut: st.bytes.out.Load(), BytesIn: st.bytes.in.Load()}}
		switch {
		case st.punched != nil && st.kind != Direct:
			r.Kind, r.Relay, r.Remote, r.udp = Punched, "", st.punched.MeshAddr(), st.punched.MeshAddr()
		case st.kind == Direct:
			r.Remote = st.Addr
		case st.kind == Relayed:
			r.Remote = st.relay
		}
		rows = append(rows, r)
	}
	u := m.udp
	m.mu.Unlock()
	for _, r := range rows {
		if rtt, ok := m.RTT(r.Peer); ok {
			r.RTTMs = float64(rtt) / float64(time.Millisecond)
		}
		if r.udp != "" && u != nil {
			out, in := u.client.Bytes(r.udp)
			r.BytesOut += out
			r.BytesIn += in
		}
		s.Paths = append(s.Paths, r.PathStatus)
	}
	sort.Slice(s.Paths, func(i, j int) bool { return s.Paths[i].Peer < s.Paths[j].Peer })
	if m.pool != nil {
		s.Relays = m.pool.Status()
	}
	return s
}
