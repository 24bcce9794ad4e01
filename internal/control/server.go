// Package control is the fogmesh control plane: it keeps nodes, services and
// endpoints in the embedded store, allocates service virtual IPs, serves the
// admin API used by the CLI, and streams configuration to agents with the
// sync protocol of internal/wire.
package control

import (
	"cmp"
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/netseam"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/syncproto"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Config configures a control plane. The zero value works except StateDir.
type Config struct {
	// StateDir holds the store file (fogmesh.db). Required.
	StateDir string
	// AdminAddr is the admin API, /healthz and /metrics listen address
	// (default 127.0.0.1:7070).
	AdminAddr string
	// SyncAddr is where agents connect (default 127.0.0.1:7071).
	SyncAddr string
	// AdminListener and SyncListener, if set, are listeners bound already
	// (AdminAddr and SyncAddr are then not used): the process bound them
	// while it waited for a shared store, to answer /healthz meanwhile.
	// The server closes them.
	AdminListener, SyncListener net.Listener
	// Network is where the sync port listens (default netseam.OS{}: a TCP
	// socket). Tests pass an in-memory network; the admin API always
	// listens on a TCP socket, for the CLI and browsers.
	Network netseam.Network
	// HeartbeatInterval is how often agents send heartbeats (default 5s).
	HeartbeatInterval time.Duration
	// NodeTimeout is how long a node may miss heartbeats before it is marked
	// unreachable (expiry.go; default 3 × HeartbeatInterval).
	NodeTimeout time.Duration
	// NodeExpiry is how long past NodeTimeout a silent node, marked
	// unreachable, keeps its endpoints routable unless a peer still
	// reports traffic from it (expiry.go; default 5m).
	NodeExpiry time.Duration
	// ReconnectGrace is added to NodeTimeout for the nodes this control
	// plane has not heard from since it started (or became the leader):
	// after a restart the whole fleet reconnects, with jittered backoffs
	// of up to 15 s and thousands of TLS handshakes, and marking the late
	// ones not ready (and ready again at their first heartbeat) is two
	// writes per node in the storm and a flap of their endpoints for every
	// agent (default 30s).
	ReconnectGrace time.Duration
	// MaxEndpointsPerNode bounds the endpoints one node's agent may
	// register (its workloads; default 1024): past it the rest of its
	// list is refused (endpointcap.go). Only the 32 MiB frame bounded it,
	// and every endpoint is stored and sent to every agent.
	MaxEndpointsPerNode int
	// SyncMaxHandshakes and SyncMaxHandshakesPerSource bound the sync
	// port's TLS handshakes in progress at once, in all and from one
	// source IP address (an IPv6 /64): a connection over either is closed
	// at once, before any TLS work, and counted as reason "busy" or
	// "source_busy" of fogmesh_tls_handshake_failures_total{port="sync"}
	// (identity.HandshakeGate); the agent retries after its backoff. A
	// full gate gives the busiest source's oldest handshake to a source
	// holding fewer (minus one), closing it as reason "evicted".
	// Authenticated streams do not count. 0: the default,
	// DefaultSyncMaxHandshakes (1024) and DefaultSyncMaxHandshakesPerSource
	// (256); negative: no bound (as AuditArchivesPerNode).
	SyncMaxHandshakes, SyncMaxHandshakesPerSource int
	// SyncHandshakeTimeout bounds an agent's (or relay's, region's,
	// joining node's) TLS handshake on the sync port, and the wait for an
	// agent's hello after it (at least the stream's read timeout):
	// a handshake not done within it is closed and counted as reason
	// "timeout" (default DefaultSyncHandshakeTimeout, 10s). Raise it for
	// slow links (satellite, 2G), where a handshake carrying a certificate
	// chain takes longer; it also bounds how long a silent connection
	// holds a handshake slot. A regional plane's join, its link to the
	// global plane and the wait for a region's hello take it too, but never
	// less than the default (outboundHandshake): a bound lowered to free
	// slots sooner does not cut a region's link over a WAN.
	SyncHandshakeTimeout time.Duration
	// AdminMaxHandshakes and AdminMaxHandshakesPerSource bound the admin
	// API's TLS handshakes in progress at once (HTTPS; not in Insecure
	// mode), in all and from one source IP address (an IPv6 /64), as the
	// Sync ones bound the sync port's: a connection over either is closed
	// at once, before any TLS work, and counted as reason "busy" or
	// "source_busy" of fogmesh_tls_handshake_failures_total{port="admin"}
	// (a full gate evicts as the sync port's does: "evicted"); a
	// handshake not done within adminHandshakeTimeout (5 s) is closed.
	// 0: the default, DefaultAdminMaxHandshakes (256) and
	// DefaultAdminMaxHandshakesPerSource (64); negative: no bound.
	AdminMaxHandshakes, AdminMaxHandshakesPerSource int
	// AuditArchivesPerNode bounds the archived audit chains kept of one
	// node (default 16; negative: no bound). A node restarts its chain at
	// will (a reset state dir), at most one archive a second; past the
	// bound its restart is refused and nothing held is deleted (a node must
	// not push the records it reported out by restarting): its new chain
	// waits on the node until an operator removes archives
	// (DELETE /v1/audit/{archive}, auditarchive.go).
	AuditArchivesPerNode int
	// IstioRootNamespace is Istio's root namespace for the Istio documents
	// applied (default api.IstioRootNamespace): an AuthorizationPolicy
	// there applies mesh-wide.
	IstioRootNamespace string
	// VIPRange is the default virtual IP range, mapped by VIP index
	// (default 127.77.0.0/16: all of 127/8 routes to lo, so agents listen
	// there without root).
	VIPRange string
	// LogRetention is how many store changes are kept for delta resync
	// (default 10000).
	LogRetention int
	// Name is the control plane's node name in its own audit chain
	// (default "control").
	Name string
	// AuditSigner, if set, signs the checkpoints of the control plane's own
	// audit chain (the PKI provides the key). Nil: no checkpoints.
	AuditSigner crypto.Signer

	// Insecure turns off TLS on the sync port and the admin API, and
	// admin authentication: for tests and local experiments only; it is
	// logged loudly. By default (false) the control plane runs its CA.
	Insecure bool
	// TrustDomain is the SPIFFE trust domain (default
	// api.DefaultTrustDomain); fixed once the CA exists.
	TrustDomain string
	// CACertFile and CAKeyFile, if set, are an operator-provided CA
	// (see identity.CAConfig); otherwise the CA lives in StateDir/ca.
	CACertFile, CAKeyFile string
	// NodeTTL is the lifetime of node certificates (default 7 days). It
	// must be at least twice AutonomyWindow: a node renews at half its
	// certificate's life.
	NodeTTL time.Duration
	// WorkloadTTL is the lifetime of each workload SVID (default 1h).
	WorkloadTTL time.Duration
	// AutonomyWindow is how long a site cut off from every control plane
	// keeps valid workload SVIDs (default 72h): agents get them in
	// batches covering it (docs/offline.md). At most
	// wire.MaxSVIDBatch/2 workload TTLs.
	AutonomyWindow time.Duration
	// RotationOverlap is how long a rotated-out root stays trusted
	// (default 8 days; it must exceed NodeTTL).
	RotationOverlap time.Duration
	// ServerNames are extra DNS names or IP addresses for the control
	// plane's certificate, besides localhost, 127.0.0.1, ::1 and the
	// listen addresses, for admin clients that check host names.
	ServerNames []string

	// Mode is ModeGlobal (default: the top of the hierarchy, or the only
	// control plane) or ModeRegional: a control plane for one Region that
	// replicates with the global one at Upstreams (docs/regions.md). In
	// secure mode a regional plane's CA is an intermediate of the global
	// plane, got with RegionJoinToken on first start and kept in
	// StateDir/region.
	Mode string
	// Region is a regional control plane's region (required with
	// ModeRegional): it owns what it registers, and serves agents of that
	// region only.
	Region string
	// Upstreams are the global control plane's sync addresses (its
	// replicas), tried in order; the next one when a link fails. Required
	// with ModeRegional.
	Upstreams []string
	// VIPIndexMin and VIPIndexMax bound the virtual IP indexes this control
	// plane allocates (default: the whole VIPRange). Give each control
	// plane of a hierarchy its own block, so services exported between
	// regions never share an index.
	VIPIndexMin, VIPIndexMax uint32
	// RegionJoinToken is the region token of a regional plane's first
	// start (identity.TokenRegion); not needed once StateDir/region holds
	// the region's identity.
	RegionJoinToken string
	// RegionCATTL is the lifetime of the intermediates and region client
	// certificates a global plane signs (default
	// identity.DefaultIntermediateTTL, 30 days); renewed at half-life.
	RegionCATTL time.Duration
	// regionLimits bound the chunks of updates on region links (zero:
	// syncproto.DefaultLimits); tests shrink them.
	regionLimits syncproto.Limits
	// Store, if set, is the store to use instead of the bbolt file in
	// StateDir: a shared one (etcdstore) for replicas. The server closes it.
	Store store.Backend

	Logger  *slog.Logger // nil = discard
	Metrics *metrics.Set // nil = a private set
}

func (c *Config) validate() error {
	if c.StateDir == "" {
		return errors.New("control: stateDir is required")
	}
	if c.AdminAddr == "" {
		c.AdminAddr = DefaultAdminAddr
	}
	if c.SyncAddr == "" {
		c.SyncAddr = DefaultSyncAddr
	}
	c.Network = netseam.Or(c.Network)
	if err := c.checkNegativeDurations(); err != nil {
		return err
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 5 * time.Second
	}
	if c.NodeTimeout <= 0 {
		c.NodeTimeout = 3 * c.HeartbeatInterval
	}
	if c.NodeExpiry <= 0 {
		c.NodeExpiry = 5 * time.Minute
	}
	if c.ReconnectGrace <= 0 {
		c.ReconnectGrace = 30 * time.Second
	}
	if c.MaxEndpointsPerNode <= 0 {
		c.MaxEndpointsPerNode = DefaultMaxEndpointsPerNode
	}
	if c.SyncMaxHandshakes == 0 {
		c.SyncMaxHandshakes = DefaultSyncMaxHandshakes
	}
	if c.SyncMaxHandshakesPerSource == 0 {
		c.SyncMaxHandshakesPerSource = DefaultSyncMaxHandshakesPerSource
	}
	if c.SyncHandshakeTimeout == 0 {
		c.SyncHandshakeTimeout = DefaultSyncHandshakeTimeout
	}
	if c.AdminMaxHandshakes == 0 {
		c.AdminMaxHandshakes = DefaultAdminMaxHandshakes
	}
	if c.AdminMaxHandshakesPerSource == 0 {
		c.AdminMaxHandshakesPerSource = DefaultAdminMaxHandshakesPerSource
	}
	if c.AuditArchivesPerNode == 0 {
		c.AuditArchivesPerNode = DefaultAuditArchivesPerNode
	}
	if c.VIPRange == "" {
		c.VIPRange = "127.77.0.0/16"
	}
	p, err := netip.ParsePrefix(c.VIPRange)
	if err != nil {
		return fmt.Errorf("control: vipRange: %w", err)
	}
	if !p.Addr().Is4() {
		// VIP indexes map into 32 bits, as agents' ranges (IPv4 only).
		return fmt.Errorf("control: vipRange %s is not an IPv4 prefix", p)
	}
	if p.Bits() > 30 {
		return fmt.Errorf("control: vipRange %s is too small", p)
	}
	if c.Name == "" {
		c.Name = "control"
		if n := ownChainNode(c.StateDir); c.Mode == ModeRegional && c.Region != "" && n != "control" {
			// Its chain goes up beside other regions' (docs/regions.md):
			// a name of its own. A chain begun under the old default
			// keeps it, so the plane still opens it.
			c.Name = "control-" + c.Region
		}
	}
	if err := c.validateLifetimes(); err != nil {
		return err
	}
	if err := c.validateHierarchy(p); err != nil {
		return err
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = metrics.NewSet()
	}
	return nil
}

// checkNegativeDurations refuses a negative duration, naming its field as
// the config file does: 0 is the default, and no duration here gives a
// negative one a meaning (a negative limit, as AuditArchivesPerNode's, is
// a count, not a duration).
func (c *Config) checkNegativeDurations() error {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"heartbeatInterval", c.HeartbeatInterval},
		{"nodeTimeout", c.NodeTimeout},
		{"nodeExpiry", c.NodeExpiry},
		{"reconnectGrace", c.ReconnectGrace},
		{"nodeTTL", c.NodeTTL},
		{"workloadTTL", c.WorkloadTTL},
		{"autonomyWindow", c.AutonomyWindow},
		{"rotationOverlap", c.RotationOverlap},
		{"regionCATTL", c.RegionCATTL},
		{"syncHandshakeTimeout", c.SyncHandshakeTimeout},
	} {
		if d.v < 0 {
			return fmt.Errorf("control: %s %s is negative (0 or unset: the default)", d.name, d.v)
		}
	}
	return nil
}

// CheckConfig validates a config as New would, without opening or binding
// anything (it may read the first line of the state dir's own audit chain).
func CheckConfig(cfg Config) error {
	cfg.ServerNames = slices.Clone(cfg.ServerNames)
	cfg.Upstreams = slices.Clone(cfg.Upstreams)
	return cfg.validate()
}

// DefaultSyncMaxHandshakes is Config.SyncMaxHandshakes's default: the sync
// port serves the whole fleet, which reconnects at once after a restart
// (jittered over 15 s, see ReconnectGrace), so it allows as many
// handshakes at once as the relay; each holds a goroutine, buffers and a
// signature until done or timed out, a few tens of MiB at most.
const DefaultSyncMaxHandshakes = 1024

// DefaultSyncHandshakeTimeout is Config.SyncHandshakeTimeout's default:
// a handshake takes a few round trips, well under a second on most links.
const DefaultSyncHandshakeTimeout = 10 * time.Second

// DefaultSyncMaxHandshakesPerSource is Config.SyncMaxHandshakesPerSource's
// default: a site's nodes behind one NAT share its address and reconnect
// together, over links where a handshake takes a few round trips of
// hundreds of milliseconds; a quarter of the port's handshakes.
const DefaultSyncMaxHandshakesPerSource = 256

// DefaultAdminMaxHandshakes and DefaultAdminMaxHandshakesPerSource are
// Config.AdminMaxHandshakes(PerSource)'s defaults. The admin API has few
// clients (the CLI, browsers on the web UI with a handful of connections
// each, a Prometheus scraper, peer replicas), far fewer than the sync
// port's fleet: the mesh port's bounds, 256 in all and 64 from one
// address, are well above what they open at once.
const (
	DefaultAdminMaxHandshakes          = 256
	DefaultAdminMaxHandshakesPerSource = 64
)

// adminHandshakeTimeout bounds an admin connection's TLS handshake: it is
// what net/http allowed before (the least of the admin server's read
// header, read and write timeouts), now applied by the gated listener
// that runs the handshake (adminhandshake.go).
const adminHandshakeTimeout = 5 * time.Second

// The default listen addresses.
const (
	DefaultAdminAddr = "127.0.0.1:7070"
	DefaultSyncAddr  = "127.0.0.1:7071"
)

// liveNode is what the control plane knows of a node between store writes.
type liveNode struct {
	lastHeartbeat time.Time
	load          float64
	epLoad        map[string]float64   // endpoint key -> in-flight, from the last heartbeat
	paths         []wire.PathReport    // the node's paths to its peers, from the last heartbeat
	vipFailures   []api.VIPBindFailure // VIP:ports its agent cannot bind, from the last heartbeat
	acked         uint64
	conns         int // open sync streams
}

// Server is a control plane.
type Server struct {
	cfg   Config
	log   *slog.Logger
	st    store.Backend
	reg   *registry
	admin *http.Server
	adminLn,
	syncLn net.Listener
	started time.Time

	sec *security // nil in insecure mode
	ui  uiState   // the web UI's scrapes and recent denials (ui.go)
	// stats: golden counters from heartbeats (stats.go)
	stats statsState
	ha    haState // replicas on a shared store (ha.go)
	// cluster is the last state a cluster source synced (cluster.go).
	cluster clusterState
	// regions binds nodes to their regions (noderegion.go).
	regions nodeRegions

	mu   sync.Mutex // guards the following
	live map[string]*liveNode
	// up is the regional control plane's link to the global one (nil in
	// ModeGlobal); down the global one's links to regions (upstream.go,
	// downstream.go).
	up   *upLink
	down map[string]*downLink
	// audit's replicas and keys (audit.go).
	audit auditState
	// streams are open sync connections (with their node once known),
	// closed on shutdown or when their node is revoked.
	streams map[net.Conn]string
	loads   loadSum // the agents' endpoint loads summed (load.go)
	// witness is when a peer's heartbeat last showed traffic from a node
	// (expiry.go).
	witness map[string]time.Time
	// trustStreams are the agent streams that take the trust message
	// (sender.go).
	trustStreams trustStreams
	expiry       expiryMetrics // the rule's figures in /metrics (expiry.go)

	wg        sync.WaitGroup
	closeOnce sync.Once
	cancel    context.CancelFunc // under mu
	closed    bool               // under mu: set by shutdown, so a Serve that starts after it returns at once

	mStreams   *metrics.Counter
	mBadFrames *metrics.Counter
	mOldAgents *metrics.Counter // agents refused for lacking wire.CapPolicy2
	mApplies   *metrics.Counter
	mUpdates   *metrics.Counter
	// mSnapshots and mDeltas split the updates sent to agents by kind.
	mSnapshots, mDeltas *metrics.Counter
	mChunks             *metrics.Counter // frames of updates sent in chunks
	mAuditUp            *metrics.Counter // audit batches a regional plane sent up
	mAuditUpRecords     *metrics.Counter // and their records
	// authFails throttles clients whose admin credentials were refused
	// (authlimit.go); mAuthThrottled counts the requests it answered 429.
	authFails      *authLimiter
	mAuthThrottled *metrics.Counter
	maxFrame       atomic.Int64 // the largest sync frame body written to an agent
	timing         timing       // write path histograms (timing.go)
}

// New opens the store and binds both listeners; Serve starts serving.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("control: state dir: %w", err)
	}
	var err error
	st := cfg.Store
	if st == nil {
		bst, err := store.Open(filepath.Join(cfg.StateDir, "fogmesh.db"), store.Options{LogRetention: cfg.LogRetention})
		if err != nil {
			return nil, err
		}
		st = bst
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger, st: st,
		reg: &registry{st: st, vipBase: netip.MustParsePrefix(cfg.VIPRange), owner: cfg.Region,
			vipMin: cfg.VIPIndexMin, vipMax: cfg.VIPIndexMax, maxPerNode: cfg.MaxEndpointsPerNode},
		live:      map[string]*liveNode{},
		streams:   map[net.Conn]string{},
		started:   time.Now(),
		authFails: newAuthLimiter(),
	}
	s.initMetrics()
	if cfg.Mode == ModeRegional {
		s.up = newUpLink(s)
	}
	if cfg.Insecure {
		cfg.Logger.Warn("control: INSECURE MODE: sync stream and admin API in plaintext, admin API unauthenticated; for tests and local development only")
	} else if s.sec, err = newSecurity(s); err != nil {
		st.Close()
		return nil, err
	} else if s.cfg.AuditSigner == nil {
		if s.cfg.AuditSigner, err = auditKey(cfg.StateDir); err != nil {
			st.Close()
			return nil, err
		}
	}
	if err := s.openAudit(); err != nil {
		st.Close()
		return nil, err
	}
	s.loadDenials()
	if s.adminLn = cfg.AdminListener; s.adminLn == nil {
		s.adminLn, err = net.Listen("tcp", cfg.AdminAddr)
	}
	if err != nil {
		s.closeAudit()
		st.Close()
		if cfg.SyncListener != nil {
			cfg.SyncListener.Close()
		}
		return nil, fmt.Errorf("control: admin listen: %w", err)
	}
	if s.syncLn = cfg.SyncListener; s.syncLn == nil {
		s.syncLn, err = cfg.Network.Listen(context.Background(), "tcp", cfg.SyncAddr)
	}
	if err != nil {
		s.adminLn.Close()
		s.closeAudit()
		st.Close()
		return nil, fmt.Errorf("control: sync listen: %w", err)
	}
	if s.sec != nil {
		if err := s.sec.issueServing(); err != nil {
			s.adminLn.Close()
			s.syncLn.Close()
			s.closeAudit()
			st.Close()
			return nil, err
		}
		s.adminLn = newGatedTLSListener(s.adminLn, s.sec.adminTLS(), s.sec.adminGate, adminHandshakeTimeout,
			s.sec.adminTLSFailure, s.log)
	}
	s.admin = &http.Server{
		Handler:           s.adminHandler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	return s, nil
}

func (s *Server) initMetrics() {
	m := s.cfg.Metrics
	s.mStreams = m.NewCounter(`fogmesh_control_sync_streams_total`)
	s.mBadFrames = m.NewCounter(`fogmesh_control_sync_bad_frames_total`)
	s.regions.mRefused = m.NewCounter(`fogmesh_control_node_region_refusals_total`)
	s.mOldAgents = m.NewCounter(`fogmesh_control_sync_old_agents_total`)
	s.mApplies = m.NewCounter(`fogmesh_control_applies_total`)
	s.mAuthThrottled = m.NewCounter(`fogmesh_control_admin_auth_throttled_total`)
	// sessions evicted past maxSessionsPerService (sessions.go)
	s.reg.mSessionEvictions = m.NewCounter(`fogmesh_control_session_evictions_total`)
	// agents' sessions of services that do not exist or pin none (sessions.go)
	s.reg.mSessionsDropped = m.NewCounter(`fogmesh_control_agent_sessions_dropped_total`)
	// endpoints refused past MaxEndpointsPerNode (endpointcap.go)
	s.reg.mEndpointsRefused = m.NewCounter(`fogmesh_control_endpoints_refused_total`)
	s.mUpdates = m.NewCounter(`fogmesh_control_updates_sent_total`)
	s.mSnapshots = m.NewCounter(`fogmesh_control_sync_snapshots_sent_total`)
	s.mDeltas = m.NewCounter(`fogmesh_control_sync_deltas_sent_total`)
	s.mChunks = m.NewCounter(`fogmesh_control_update_chunks_sent_total`)
	s.mAuditUp = m.NewCounter(`fogmesh_control_region_audit_batches_sent_total`)
	s.mAuditUpRecords = m.NewCounter(`fogmesh_control_region_audit_records_sent_total`)
	s.initTiming()
	s.initExpiryMetrics()
	// The largest frame sent on a sync stream: with chunked updates it
	// stays near wire.ChunkBytes however large the snapshot.
	m.NewGauge(`fogmesh_control_sync_frame_bytes_max`, func() float64 { return float64(s.maxFrame.Load()) })
	m.NewGauge(`fogmesh_control_nodes_connected`, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		n := 0
		for _, l := range s.live {
			if l.conns > 0 {
				n++
			}
		}
		return float64(n)
	})
	m.NewGauge(`fogmesh_control_store_revision`, func() float64 {
		r, _ := s.st.Rev()
		return float64(r)
	})
	s.initHA()
}

// AdminAddr returns the bound admin address.
func (s *Server) AdminAddr() string { return s.adminLn.Addr().String() }

// SyncAddr returns the bound sync address.
func (s *Server) SyncAddr() string { return s.syncLn.Addr().String() }

// StoreID returns the store's identity.
func (s *Server) StoreID() string { return s.st.ID() }

// Serve runs until ctx is done or Close is called. It returns nil on a clean
// shutdown.
func (s *Server) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	// Every goroutine below is counted before Close can wait for them
	// (under mu, with the closed check): an Add racing shutdown's Wait
	// (Close right as Serve starts) could be missed by it.
	n := 3
	if s.sec != nil {
		n++
		if s.sec.region != nil {
			n++
		}
	}
	if s.up != nil {
		n++
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		return nil // Close ran first: nothing to serve, nothing would end it
	}
	s.cancel = cancel
	s.wg.Add(n)
	s.mu.Unlock()
	defer cancel()
	s.log.Info("control: serving", "admin", s.AdminAddr(), "sync", s.SyncAddr(), "store", s.st.ID())
	errc := make(chan error, 2)
	if s.sec != nil {
		go func() {
			defer s.wg.Done()
			s.sec.maintain(ctx)
		}()
		if s.sec.region != nil {
			go func() {
				defer s.wg.Done()
				s.sec.region.run(ctx)
			}()
		}
	}
	if s.up != nil {
		go func() {
			defer s.wg.Done()
			s.up.run(ctx)
		}()
	}
	go func() {
		defer s.wg.Done()
		if err := s.admin.Serve(s.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("control: admin: %w", err)
		}
	}()
	go func() {
		defer s.wg.Done()
		if err := s.acceptSync(ctx); err != nil {
			errc <- err
		}
	}()
	go func() {
		defer s.wg.Done()
		s.watchHeartbeats(ctx)
	}()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.shutdown()
	return err
}

// Close stops serving and closes the store; it is idempotent and waits.
func (s *Server) Close() error {
	s.shutdown() // cancels Serve's context first
	return nil
}

func (s *Server) shutdown() {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		if s.cancel != nil {
			s.cancel() // watchHeartbeats and streams end on it; wg.Wait below needs that
		}
		s.mu.Unlock()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.admin.Shutdown(sctx)
		// Shutdown closes only a listener Serve took: without Serve (Close
		// before it, or Serve after Close, which serves nothing) the admin
		// port stayed bound. After Shutdown, a Serve ending or starting now
		// returns http.ErrServerClosed.
		s.adminLn.Close()
		s.syncLn.Close()
		s.mu.Lock()
		for c := range s.streams {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
		s.closeAudit()
		s.st.Close()
		s.log.Info("control: stopped")
	})
}

// watchHeartbeats marks nodes unreachable, then not ready, when they miss
// heartbeats (expiry.go). A node
// known from the store but not yet heard from since start gets NodeTimeout
// plus ReconnectGrace from the start, so a control plane restart does not
// flap every node, nor the ones that reconnect last in a large fleet.
func (s *Server) watchHeartbeats(ctx context.Context) {
	t := time.NewTicker(s.cfg.HeartbeatInterval / 2)
	defer t.Stop()
	// heardAny: the nodes another replica said it had a stream from, and
	// when it last said so (they are not "unseen" once they go silent).
	heardAny := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		heard, witnessed, leaderSince := s.replicaHeartbeats()
		for n, at := range heard {
			if at.After(heardAny[n]) {
				heardAny[n] = at
			}
		}
		if !s.st.Leader() {
			s.expiry.witnessed.Store(0) // the leader's figure
			continue                    // the leader expires nodes (ha.go)
		}
		nodes, _, err := s.reg.list(api.KindNode)
		if err != nil {
			s.log.Error("control: list nodes", "err", err)
			continue
		}
		s.pruneLive(nodes)
		now := time.Now()
		kept := 0 // unreachable, kept routable by a peer's witness
		for _, o := range nodes {
			n := o.(*api.Node)
			if !n.Status.Ready || n.Meta.Owner != s.reg.owner {
				continue // another control plane's node: its readiness is the owner's
			}
			if last := s.lastSign(n.Meta.Name, heardAny, leaderSince); now.Sub(last) > s.cfg.NodeTimeout {
				if s.expireNode(n, last, witnessed, now) { // unreachable, then not ready (expiry.go)
					kept++
				}
			}
		}
		s.expiry.witnessed.Store(int64(kept))
	}
}

// lastSign is when node was last known alive, for the NodeTimeout check:
// its last heartbeat (or stream opened) here or on another replica, else
// this control plane's start or leadership plus ReconnectGrace.
func (s *Server) lastSign(node string, heardAny map[string]time.Time, leaderSince time.Time) time.Time {
	s.mu.Lock()
	var last time.Time
	if l := s.live[node]; l != nil {
		last = l.lastHeartbeat
	}
	s.mu.Unlock()
	if t := heardAny[node]; t.After(last) {
		last = t
	}
	if !last.IsZero() {
		return maxTime(last, s.started, leaderSince)
	}
	return maxTime(s.started, leaderSince).Add(s.cfg.ReconnectGrace)
}

func maxTime(ts ...time.Time) time.Time {
	var m time.Time
	for _, t := range ts {
		if t.After(m) {
			m = t
		}
	}
	return m
}

// heartbeat records liveness and load; a node that was not ready or
// unreachable becomes ready again.
func (s *Server) heartbeat(node string, load float64, epLoad map[string]float64, paths []wire.PathReport, vipFailures []api.VIPBindFailure) {
	s.mu.Lock()
	l := s.liveLocked(node)
	l.lastHeartbeat = time.Now()
	l.load = load
	l.epLoad = epLoad
	s.noteWitnessLocked(l.paths, paths, l.lastHeartbeat)
	l.paths = paths
	l.vipFailures = vipFailures
	s.mu.Unlock()
	if err := s.reg.setNodeReady(node, true); err != nil {
		s.log.Error("control: mark ready", "node", node, "err", err)
	}
}

// NodePath is one node's path to a peer, as its last heartbeat said.
type NodePath struct {
	Node string `json:"node"`
	wire.PathReport
}

// Paths returns the paths every node reported in its last fresh heartbeat
// (within NodeTimeout), by node then peer.
func (s *Server) Paths() []NodePath {
	s.mu.Lock()
	out := []NodePath{}
	fresh := time.Now().Add(-s.cfg.NodeTimeout)
	for name, l := range s.live {
		if l.lastHeartbeat.Before(fresh) {
			continue
		}
		for _, p := range l.paths {
			out = append(out, NodePath{Node: name, PathReport: p})
		}
	}
	s.mu.Unlock() // sorted without holding up heartbeats
	slices.SortFunc(out, func(a, b NodePath) int {
		return cmp.Or(strings.Compare(a.Node, b.Node), strings.Compare(a.Peer, b.Peer))
	})
	return out
}

// othersLoad sums the endpoint loads reported by every agent but node whose
// heartbeat is fresh (within NodeTimeout). The sum over all agents is
// made at most once per loadEvery and shared (load.go): summing every
// agent for each heartbeat cost O(N²) per interval.
func (s *Server) othersLoad(node string) map[string]float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loads.others(s.live, node, time.Now(), s.cfg.NodeTimeout)
}

func (s *Server) liveLocked(node string) *liveNode {
	l := s.live[node]
	if l == nil {
		l = &liveNode{}
		s.live[node] = l
	}
	return l
}

// fillLive copies the in-memory status into a node for display.
func (s *Server) fillLive(n *api.Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.live[n.Meta.Name]; l != nil {
		n.Status.LastHeartbeat = l.lastHeartbeat.UTC()
		n.Status.Load = l.load
		n.Status.AckedVersion = l.acked
		n.Status.Connected = l.conns > 0
		if l.conns > 0 {
			n.Status.VIPBindFailures = l.vipFailures
		}
	}
}

// outboundHandshake bounds a regional plane's join and link to the global
// plane and the global plane's wait for a region's hello:
// SyncHandshakeTimeout, at least DefaultSyncHandshakeTimeout.
func (s *Server) outboundHandshake() time.Duration {
	return max(s.cfg.SyncHandshakeTimeout, DefaultSyncHandshakeTimeout)
}
