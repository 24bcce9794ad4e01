// Package agent is the per-node fogmesh agent: it registers its node with the
// control plane and keeps the configuration it streams (cached on disk for
// offline starts), serves mesh DNS, listens on every service virtual IP,
// picks the nearest healthy endpoint for each connection, reaches remote
// endpoints through their node's agent over the mesh port, and health-checks
// its own workloads.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/balance"
	"github.com/fogmesh/fogmesh/internal/gateway"
	"github.com/fogmesh/fogmesh/internal/gossip"
	"github.com/fogmesh/fogmesh/internal/meshdns"
	"github.com/fogmesh/fogmesh/internal/outlier"
	"github.com/fogmesh/fogmesh/internal/paths"
	"github.com/fogmesh/fogmesh/internal/retry"
	"github.com/fogmesh/fogmesh/internal/svid"
	"github.com/fogmesh/fogmesh/internal/transport"
	"github.com/fogmesh/fogmesh/internal/wire"
	"github.com/fogmesh/fogmesh/internal/workloadapi"
)

// Agent is one node's agent.
type Agent struct {
	cfg        Config
	log        *slog.Logger
	self       *api.Node
	vip4, vip6 netip.Prefix
	cachePath  string
	wlPath     string

	view atomic.Pointer[view]
	// serving is set by Run once the VIP listeners of the view built by New
	// are bound: until then Routes and LookupService show no service, as
	// none of their VIPs would accept a connection yet.
	serving atomic.Bool

	applyMu sync.Mutex // serialises applyUpdate (sync.go; see there)

	mu sync.Mutex // guards the following
	// res and cfgVersion/storeID are the control plane's configuration.
	res        *resources
	storeID    string
	cfgVersion uint64
	// workloads are local instances: from the config file (fromConfig) or
	// registered through the local API (saved to wlPath; workloads.go).
	workloads map[string]*workloadState
	listeners map[netip.AddrPort]*vipListener
	// bindFail are the VIP:ports that failed to bind (vipbind.go), guarded
	// by mu; bindFailSnap is its snapshot for readers without mu, bindKick
	// wakes the retry loop.
	bindFail     map[netip.AddrPort]*bindFailure
	bindFailSnap atomic.Pointer[[]api.VIPBindFailure]
	bindKick     chan struct{}
	udp          udpState // udp service ports (udp.go); its ports guarded by mu
	// localSessions are session bindings this agent decided, used until
	// the control plane has one; pendingSessions are those not yet sent
	// upstream. Both bounded, zero values empty (session.go).
	localSessions   localBindings
	pendingSessions pendingBindings

	// outliers: outlier detection and the quarantine of unreachable
	// endpoints (outlier.go).
	outliers outlier.Set
	// balancers by name, with round robin's counters (internal/balance;
	// the agent picks through them in balance.go).
	balancers balance.Set
	// statsByEP holds what this agent measures per endpoint: in-flight
	// count and peak-EWMA latency (balance.go).
	statsByEP sync.Map // endpoint key -> *epStats
	// peerLoads is the other agents' in-flight counts per endpoint, from
	// the control plane's last heartbeat answer.
	peerLoads atomic.Pointer[peerLoads]
	// mq: MQTT per-topic counters and unreleased QoS 2 topics (mqtt.go).
	mq mqttState
	// reqMetrics caches request series per endpoint (l7metrics.go).
	reqMetrics sync.Map // metricsKey -> *endpointMetrics
	// goldenRows sums them per row of the heartbeat's stats (statsreport.go).
	goldenRows statTable
	// srvMetrics caches the destination side's request series
	// (l7metrics.go), srvSeries counts them.
	srvMetrics sync.Map // serverKey -> *endpointMetrics
	srvSeries  atomic.Int64
	// grpcCounters caches gRPC response counters (l7metrics.go).
	grpcCounters sync.Map // grpcCounterKey -> *metrics.Counter
	// svcCounters count in-flight connections/requests per service (circuit breaking).
	svcCounters sync.Map // "ns/name|conn" or "|req" -> *atomic.Int64
	active      atomic.Int64
	l7Inflight  atomic.Int64 // L7 requests being proxied (traffic-class admission)
	// localChanged and sessionsChanged wake the sync loop to send local
	// endpoints and session bindings.
	localChanged, sessionsChanged chan struct{}
	connected                     atomic.Bool
	// scope is what a scoped agent subscribes to (scope.go).
	scope *scopeSet
	// observeUpdate, when set before Run, sees every update the agent
	// applies (tests).
	observeUpdate func(*wire.Message)

	// audit is the node's audit log (audit.go); auditWritten wakes the
	// shipper after each write; auditShipped is the last seq the control
	// plane acknowledged.
	audit        *audit.Log
	auditWritten chan struct{}
	auditShipped atomic.Uint64
	auditRefused *metrics.Counter
	auditDamaged *metrics.Counter // records unreadable on disk, skipped (a damage marker shipped instead)

	ident *nodeIdentity // nil in insecure mode
	l7    *l7
	obs   *observer // traces and access log (observe.go); nil when both are off
	svids *svid.Store
	// svidIssuer asks the control plane for workload SVIDs (secure mode,
	// when Config.SVIDIssuer is not set).
	svidIssuer *syncIssuer
	// localToken guards the local API's changes (secure mode; "" = none).
	localToken string
	wlAPI      *workloadapi.Server // nil when off
	wlLn       net.Listener
	// authzHTTP serves mesh streams whose HTTP requests are authorized one
	// by one (authzserver.go); authzSeries caches
	// fogmesh_authz_decisions_total (authz.go).
	authzHTTP   *authzServer
	authzSeries sync.Map
	gossip      *gossip.Gossip  // nil when off
	gateway     *gateway.Server // nil unless GatewayAddr
	gatewayLn   net.Listener
	// gossipDead holds nodes gossip says are dead (node name -> true);
	// gv, how gossip's word is checked (gossip.go).
	gossipDead sync.Map
	gv         gossipVerdicts
	// nodeWatches: attempts in flight per remote node, cancelled when gossip
	// declares the node dead (gossip.go).
	watchMu     sync.Mutex
	nodeWatches map[string]map[*int]context.CancelCauseFunc
	retries     *retry.Budget
	capture     captureState  // transparent capture (capture.go)
	fast        fastPathState // kernel fast path (fastpath.go)
	dns         *meshdns.Server
	mesh        *transport.Server
	peers       *paths.Manager
	admin       *http.Server
	adminLn,
	meshLn net.Listener

	wg        sync.WaitGroup
	closeOnce sync.Once
	cancel    context.CancelFunc // guarded by mu
	runCtx    context.Context    // guarded by mu; set by Run
	closed    bool               // guarded by mu; set by shutdown before it waits

	m agentMetrics // set by initMetrics (metrics.go)
}

type workloadState struct {
	w          Workload
	fromConfig bool
	healthy    bool
	stop       context.CancelFunc
	// wake asks the checker to check now (after a passive failure).
	wake chan struct{}
}

// New validates the config, loads the cache and binds every listener (DNS,
// mesh, admin) so the addresses are known; Run serves.
func New(cfg Config) (*Agent, error) {
	if err := cfg.validate(); err != nil {
		return nil, &ConfigError{Err: fmt.Errorf("agent: config: %w", err)}
	}
	if err := makeStateDir(cfg.StateDir); err != nil { // wlsocket.go
		return nil, fmt.Errorf("agent: state dir: %w", err)
	}
	a := &Agent{
		cfg:             cfg,
		log:             cfg.Logger,
		cachePath:       filepath.Join(cfg.StateDir, "config-cache.json"),
		wlPath:          filepath.Join(cfg.StateDir, "workloads.json"),
		workloads:       map[string]*workloadState{},
		listeners:       map[netip.AddrPort]*vipListener{},
		bindFail:        map[netip.AddrPort]*bindFailure{},
		bindKick:        make(chan struct{}, 1),
		localChanged:    make(chan struct{}, 1),
		sessionsChanged: make(chan struct{}, 1),
		nodeWatches:     map[string]map[*int]context.CancelCauseFunc{},
		svids:           svid.NewStore(cfg.Logger),
	}
	a.vip4 = netip.MustParsePrefix(cfg.VIPRange)
	if cfg.VIP6Range != "" {
		a.vip6 = netip.MustParsePrefix(cfg.VIP6Range)
	}
	var err error
	if a.meshLn, err = cfg.Network.Listen(context.Background(), "tcp", cfg.MeshAddr); err != nil {
		return nil, fmt.Errorf("agent: mesh listen: %w", err)
	}
	if ap := netip.MustParseAddrPort(cfg.MeshAdvertise); ap.Port() == 0 {
		// Advertised from a port-0 listen address: advertise the bound port.
		bound, err := netip.ParseAddrPort(a.meshLn.Addr().String())
		if err != nil {
			a.meshLn.Close()
			return nil, fmt.Errorf("agent: mesh listen: bound address: %w", err)
		}
		cfg.MeshAdvertise = netip.AddrPortFrom(ap.Addr(), bound.Port()).String()
		a.cfg.MeshAdvertise = cfg.MeshAdvertise
	}
	a.self = &api.Node{Meta: api.Meta{Name: cfg.Node.Name, Labels: cfg.Node.Labels}, Spec: api.NodeSpec{
		Site: cfg.Node.Site, Region: cfg.Node.Region, Zone: cfg.Node.Zone, MeshAddress: cfg.MeshAdvertise,
		Addresses: cfg.Node.Addresses, Capacity: cfg.Node.Capacity, Coordinates: cfg.Node.Coordinates}}
	if err := a.self.Validate(); err != nil {
		a.meshLn.Close()
		return nil, &ConfigError{Err: fmt.Errorf("agent: node: %w", err)}
	}
	a.scope = newScopeSet(cfg.Scope, a.log.Warn)
	a.initMetrics()
	if cfg.Insecure {
		a.log.Warn("agent: INSECURE MODE: sync stream and mesh port in plaintext, peers unauthenticated; for tests and local development only")
	} else if err := a.initIdentity(context.Background()); err != nil {
		a.meshLn.Close()
		return nil, err
	} else {
		if cfg.SVIDIssuer == nil {
			a.svidIssuer = newSyncIssuer()
		}
		// Workload SVIDs are kept beside the node key, so a restart while
		// cut off still serves them (docs/offline.md).
		if err := a.svids.Persist(a.statePath(svidsFile)); err != nil {
			a.log.Error("agent: saved workload SVIDs unreadable; asking for new ones", "err", err)
		}
		if err := a.initLocalToken(); err != nil {
			a.meshLn.Close()
			return nil, err
		}
	}
	if err := a.openAudit(); err != nil {
		a.meshLn.Close()
		return nil, err
	}

	c, res, err := loadCache(a.cachePath)
	if err != nil {
		// A damaged cache must not keep the node from starting: start empty
		// and let the control plane fill it.
		a.log.Error("agent: cache unreadable, starting empty", "err", err)
		c, res = &config{}, newResources()
	}
	a.res, a.storeID, a.cfgVersion = res, c.StoreID, c.Version
	if c.Version > 0 {
		a.log.Info("agent: loaded cached configuration", "version", c.Version, "resources", len(c.Resources))
	}
	for _, w := range cfg.Workloads {
		a.workloads[w.Name] = &workloadState{w: w, fromConfig: true, healthy: true}
	}
	if err := a.loadRegistered(); err != nil {
		a.log.Error("agent: registered workloads unreadable", "err", err)
	}
	a.rebuild()

	ok := false
	defer func() {
		if !ok {
			a.closeKernelPaths()
			a.closeListeners()
			a.audit.Close()
			if a.peers != nil {
				a.peers.Close()
			}
		}
	}()
	a.dns, err = meshdns.New(meshdns.Config{Addr: cfg.DNSAddr, Upstreams: cfg.Upstreams,
		Zone: cfg.MeshDomain, ClusterDomain: cfg.ClusterDomain, ForwardRate: cfg.DNSForwardRate,
		Logger: a.log.With("sub", "dns"), Metrics: cfg.Metrics}, a)
	if err != nil {
		return nil, fmt.Errorf("agent: dns: %w", err)
	}
	if err := a.initMesh(cfg); err != nil {
		return nil, err
	}
	if a.adminLn, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
		return nil, fmt.Errorf("agent: admin listen: %w", err)
	}
	if err := a.initKernelPaths(); err != nil { // fastpath.go
		return nil, err
	}
	a.self.Spec.AdminAddress = advertisedAdmin(a.adminLn.Addr().String(), cfg.MeshAdvertise)
	if cfg.AdminAdvertise != "" {
		a.self.Spec.AdminAddress = cfg.AdminAdvertise
	}
	if err := a.initGossip(); err != nil { // gossip.go
		return nil, err
	}
	if cfg.WorkloadAPISocket != "off" {
		if a.wlLn, err = a.listenWorkloadAPI(); err != nil { // wlsocket.go
			return nil, fmt.Errorf("agent: %w", err)
		}
		a.wlAPI = workloadapi.New(a.svids, a.log.With("sub", "workloadapi"))
	}
	a.l7 = newL7(a)
	a.authzHTTP = newAuthzServer(a)
	a.retries = retry.NewBudget()
	a.balancers = balance.NewSet(balance.SharedRand{})
	if a.obs, err = newObserver(a); err != nil {
		return nil, err
	}
	a.admin = &http.Server{Handler: a.adminHandler(), ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		ErrorLog: a.serverErrorLog()}
	ok = true
	return a, nil
}

func (a *Agent) closeListeners() {
	if a.gossip != nil {
		a.gossip.Close()
	}
	if a.dns != nil {
		a.dns.Close()
	}
	if a.mesh != nil {
		a.mesh.Close()
	} else if a.meshLn != nil {
		a.meshLn.Close()
	}
	if a.adminLn != nil {
		a.adminLn.Close()
	}
	if a.gatewayLn != nil {
		a.gatewayLn.Close()
	}
	if a.wlLn != nil {
		a.wlLn.Close()
	}
}

// Name returns the node name.
func (a *Agent) Name() string { return a.cfg.Node.Name }

// Run serves until ctx is done; it returns nil on a clean shutdown.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	a.mu.Lock()
	if a.closed { // Close ran first: start nothing, nothing would end it
		a.mu.Unlock()
		cancel()
		return nil
	}
	a.cancel, a.runCtx = cancel, ctx
	a.reconcileListenersLocked(a.view.Load())
	a.syncCaptureLocked(a.view.Load()) // its UDP sockets need runCtx
	a.serving.Store(true)
	for _, ws := range a.workloads {
		a.startCheckLocked(ctx, ws)
	}
	a.wg.Add(1) // Run's own, under mu: shutdown's wait covers the Adds below
	a.mu.Unlock()
	defer cancel()
	a.joinSitePeers()
	a.log.Info("agent: running", "node", a.cfg.Node.Name, "site", a.cfg.Node.Site, "region", a.cfg.Node.Region,
		"dns", a.DNSAddr(), "mesh", a.MeshAddr(), "admin", a.AdminAddr())
	errc := make(chan error, 3)
	run := func(name string, f func() error) {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if err := f(); err != nil {
				select { // the first error ends Run; the others must not block Close's wait
				case errc <- fmt.Errorf("agent: %s: %w", name, err):
				default:
				}
			}
		}()
	}
	run("dns", func() error { return a.dns.Serve(ctx) })
	run("mesh", func() error { return a.mesh.Serve(ctx) })
	run("admin", func() error {
		if err := a.admin.Serve(a.adminLn); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	run("sync", func() error { a.syncLoop(ctx); return nil })
	run("vip rebind", func() error { a.retryBinds(ctx); return nil })
	if a.gateway != nil {
		run("site gateway", func() error { return a.gateway.Serve(a.gatewayLn) })
	}
	run("l7", a.l7.serve)
	run("capture", func() error { return a.captureLoop(ctx, a.capture.ln) })
	run("capture6", func() error { return a.captureLoop(ctx, a.capture.ln6) })
	run("authz", a.authzHTTP.run)
	if a.wlAPI != nil {
		run("workload API", func() error { return a.wlAPI.Serve(a.wlLn) })
	}
	if !a.cfg.Insecure { // secure: a.ident is set
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.watchNodeCert(ctx) }()
	}
	if iss := a.cfg.SVIDIssuer; iss != nil || a.svidIssuer != nil {
		if iss == nil {
			iss = a.svidIssuer
		}
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.svids.Run(ctx, iss) }()
	}
	a.wg.Done()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	a.shutdown()
	return err
}

// Close stops the agent; idempotent, waits for its goroutines.
func (a *Agent) Close() error {
	a.shutdown() // cancels Run's context first
	return nil
}

func (a *Agent) shutdown() {
	a.closeOnce.Do(func() {
		a.closeCapture() // the rules go first: ClusterIPs are kube-proxy's again
		a.mu.Lock()
		a.closed = true
		if a.cancel != nil {
			a.cancel()
		}
		for k, l := range a.listeners {
			l.close()
			delete(a.listeners, k)
		}
		a.closeUDPLocked()
		a.mu.Unlock()
		if a.gossip != nil {
			a.gv.close()     // before gossip stops: a ping that fails then is not a death
			a.gossip.Close() // peers learn at once that this node leaves
		}
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		a.admin.Shutdown(sctx)
		a.l7.close()
		a.authzHTTP.close()
		a.obs.close() // after the servers: their last requests' spans and lines go out
		a.dns.Close()
		a.mesh.Close()
		a.peers.Close()
		a.closeHTTPServers() // listeners.go
		a.wg.Wait()
		a.closeFastPath() // after the relays: none uses it any more
		if err := a.audit.Close(); err != nil {
			a.log.Error("agent: audit log close", "err", err)
		}
		a.log.Info("agent: stopped", "node", a.cfg.Node.Name)
	})
}

// rebuild recomputes the routing view from resources and local workloads.
func (a *Agent) rebuild() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rebuildLocked()
}

// rebuildLocked binds the VIP listeners of the new view before it publishes
// it: a client that resolves a name or reads the routes may connect at once.
func (a *Agent) rebuildLocked() {
	a.scopeLocalLocked()
	v := buildView(a.self, a.res, a.localEndpointsLocked(), a.vip4, a.vip6, a.svids.TrustDomain())
	v.attest = localAttestations(a.workloads)
	a.syncOutliers(v) // before requests can see v: its destinations' detectors exist
	a.openListenersLocked(v)
	a.noteInvalidPolicies(a.view.Swap(v), v)
	a.scope.viewChanged() // a DNS query may wait for an endpoint of v (FetchService)
	a.syncCaptureLocked(v)
	a.serveListenersLocked(v)
	a.svids.SetWorkloads(svidHolders(a.workloads))
	if a.retries != nil { // nil while New builds the first view
		a.retries.Forget(func(svc string) bool { return v.services[svc] != nil })
	}
	a.pruneLimiters(v)
}
