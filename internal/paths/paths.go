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
	"errors"
	"fmt"
	"log/slog"
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

	mu      sync.Mutex
	closed  bool
	peers   map[string]*peerState // by node name
	answers int                   // answer goroutines running (maxAnswers)
	byUDP   map[string]string     // punched UDP address -> node name
	punch   punchState            // why punching is or is not available

	mDials        map[Kind]*metrics.Counter
	mUp           *metrics.Counter
	mIntroDropped *metrics.Counter
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
	punchFails int         // punches failed in a row (punchBackoff)
	punchOn    bool        // a punch is in progress
	answerAt   time.Time   // earliest next answer to its introductions
	relUDP     *udpRelayed // a relayed path over UDP, if any (relayudp.go)
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
		TLS: cfg.TLS, PeerID: m.expectedID, StreamWindow: cfg.StreamWindow, PeerCheck: cfg.PeerCheck, OnCut: cfg.OnCut,
		DirectStreams: cfg.DirectStreams, DirectBytes: m.directBytes})
	for _, k := range []Kind{Direct, Punched, Relayed} {
		m.mDials[k] = cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_path_streams_total{kind=%q}`, k))
		cfg.Metrics.GetOrCreateGauge(fmt.Sprintf(`fogmesh_paths{kind=%q}`, k), func() float64 { return float64(m.count(k)) })
	}
	m.mUp = cfg.Metrics.GetOrCreateCounter(`fogmesh_path_upgrades_total`)
	m.mIntroDropped = cfg.Metrics.GetOrCreateCounter(`fogmesh_path_introductions_dropped_total`)
	for _, r := range punchRefusals {
		cfg.Metrics.GetOrCreateGauge(fmt.Sprintf(`fogmesh_punch_refused_total{reason=%q}`, r.reason),
			func() float64 { return float64(r.count(m.punchStats())) })
	}
	cfg.Metrics.GetOrCreateGauge(`fogmesh_punch_nonces_evicted_total`, func() float64 { return float64(m.punchStats().NoncesEvicted) })
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
	m.mu.Lock()
	m.closed = true // no goroutine starts after this
	m.mu.Unlock()
	m.stop()
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
		if st.current() == k {
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
		st = m.newPeerLocked(p)
	}
	if p.Addr != st.Addr || p.ID != st.ID { // Name never changes: read unlocked
		st.Addr, st.ID = p.Addr, p.ID
		st.noDirUntil = time.Time{}
	}
	return st
}

// newPeerLocked records a peer and its metrics: which kind of path it is
// on (1 for the current kind) and the RTT over it.
func (m *Manager) newPeerLocked(p Peer) *peerState {
	st := &peerState{Peer: p, bytes: &byteCount{}}
	m.peers[p.Name] = st
	for _, k := range []Kind{Direct, Punched, Relayed} {
		m.cfg.Metrics.GetOrCreateGauge(fmt.Sprintf(`fogmesh_path{peer=%q,kind=%q}`, p.Name, k), func() float64 {
			m.mu.Lock()
			defer m.mu.Unlock()
			if st.current() == k {
				return 1
			}
			return 0
		})
	}
	m.cfg.Metrics.GetOrCreateGauge(fmt.Sprintf(`fogmesh_path_rtt_seconds{peer=%q}`, p.Name), func() float64 {
		rtt, _ := m.RTT(p.Name)
		return rtt.Seconds()
	})
	return st
}

// current is the kind of path new streams to the peer take (m.mu held).
// A peer whose introduction punched a path before this node dialed it
// shows that path; the first Dial's race decides which one it takes.
func (st *peerState) current() Kind {
	if st.kind == "" && st.punched != nil {
		return Punched
	}
	return st.kind
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

// RTT is the smoothed round-trip time to the peer over its current path.
func (m *Manager) RTT(name string) (time.Duration, bool) {
	m.mu.Lock()
	st := m.peers[name]
	var kind Kind
	var udp string
	var probeRTT time.Duration
	var ru *udpRelayed
	if st != nil {
		kind = st.current()
		if kind == Punched && st.punched != nil {
			udp, probeRTT = st.punched.MeshAddr(), st.punched.RTT
		}
		if kind == Relayed {
			ru = st.relUDP
		}
	}
	u := m.udp
	m.mu.Unlock()
	if ru != nil {
		return ru.client.RTT(ru.addr())
	}
	switch kind {
	case Punched:
		if u != nil {
			if d, ok := u.client.RTT(udp); ok {
				return d, true
			}
		}
		// No QUIC connection of ours on it yet (the peer dialed, or no
		// stream used it): the punch's probe round trip.
		return probeRTT, probeRTT > 0
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
	var ru *udpRelayed
	if st != nil {
		pa, st.punched, st.kind = st.punched, nil, ""
		ru, st.relUDP = st.relUDP, nil
		if pa != nil {
			delete(m.byUDP, pa.MeshAddr())
			// The peer may have answered our last introduction just
			// now; it answers one per answerGap.
			st.punchAt = time.Now().Add(2 * answerGap)
		}
	}
	u := m.udp
	m.mu.Unlock()
	if ru != nil {
		ru.close()
	}
	if pa != nil {
		if u != nil {
			u.client.DropSession(pa.MeshAddr())
		}
		pa.Close()
	}
}

// Forget drops every path to a node that left the registry and
// everything kept about it, its metrics included.
func (m *Manager) Forget(name string) {
	m.DropNode(name)
	m.mu.Lock()
	delete(m.peers, name)
	m.mu.Unlock()
	for _, k := range []Kind{Direct, Punched, Relayed} {
		m.cfg.Metrics.UnregisterMetric(fmt.Sprintf(`fogmesh_path{peer=%q,kind=%q}`, name, k))
	}
	m.cfg.Metrics.UnregisterMetric(fmt.Sprintf(`fogmesh_path_rtt_seconds{peer=%q}`, name))
}

// DropPeer closes every path whose TLS peer is id (a revoked node).
func (m *Manager) DropPeer(id spiffeid.ID) int {
	n := m.tcp.DropPeer(id)
	m.mu.Lock()
	u := m.udp
	var rus []*udpRelayed
	for _, st := range m.peers {
		if st.relUDP != nil && st.ID == id {
			rus = append(rus, st.relUDP)
			st.relUDP = nil
		}
	}
	m.mu.Unlock()
	for _, ru := range rus {
		ru.close()
		n++
	}
	if u != nil {
		n += u.client.DropPeer(id) + u.server.DropPeer(id)
	}
	return n
}

// udpMeshes returns the punching side's QUIC mesh and every relayed UDP
// one: each a client and a server.
func (m *Manager) udpMeshes() (clients []*transport.QUICClient, servers []*transport.QUICServer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.udp != nil {
		clients, servers = append(clients, m.udp.client), append(servers, m.udp.server)
	}
	for _, st := range m.peers {
		if st.relUDP != nil {
			clients, servers = append(clients, st.relUDP.client), append(servers, st.relUDP.server)
		}
	}
	return clients, servers
}

// Revalidate checks the peer of every session on every path again
// (transport.Client.Revalidate) and returns how many it cut: the agent
// calls it when the deny list changes. The TCP mesh server (direct and
// relayed sessions peers opened) is the agent's to revalidate.
func (m *Manager) Revalidate() int {
	n := m.tcp.Revalidate()
	clients, servers := m.udpMeshes()
	for _, c := range clients {
		n += c.Revalidate()
	}
	for _, s := range servers {
		n += s.Revalidate()
	}
	return n
}

// RetireAll retires every session this node opened, on every path
// (transport.Client.RetireAll): its own certificate was renewed.
func (m *Manager) RetireAll() int {
	n := m.tcp.RetireAll()
	clients, _ := m.udpMeshes()
	for _, c := range clients {
		n += c.RetireAll()
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

// punchRefusals are the punching socket's refusals (punch.Stats) as the
// reasons of fogmesh_punch_refused_total.
var punchRefusals = []struct {
	reason string
	count  func(punch.Stats) uint64
}{
	{"not_probe", func(s punch.Stats) uint64 { return s.NotProbe }},
	{"malformed", func(s punch.Stats) uint64 { return s.Malformed }},
	{"unknown_session", func(s punch.Stats) uint64 { return s.UnknownSession }},
	{"bad_mac", func(s punch.Stats) uint64 { return s.BadMAC }},
	{"replayed", func(s punch.Stats) uint64 { return s.Replayed }},
	{"reflected", func(s punch.Stats) uint64 { return s.Reflected }},
	{"unsolicited", func(s punch.Stats) uint64 { return s.Unsolicited }},
	{"introduction_replayed", func(s punch.Stats) uint64 { return s.IntroReplayed }},
	{"candidate_scope", func(s punch.Stats) uint64 { return s.CandidateRefused }},
	{"probe_budget", func(s punch.Stats) uint64 { return s.OverBudget }},
}

// punchStats are the punching socket's counters (zero while it is not
// open).
func (m *Manager) punchStats() punch.Stats {
	m.mu.Lock()
	u := m.udp
	m.mu.Unlock()
	if u == nil {
		return punch.Stats{}
	}
	return u.puncher.Stats()
}
