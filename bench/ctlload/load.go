package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// config is one run of the load.
type config struct {
	N, M, Services  int
	Rate            float64       // endpoint changes per second
	Duration        time.Duration // of the steady phase
	Jitter          time.Duration // reconnect backoff base (full jitter)
	Heartbeat       time.Duration
	Insecure        bool
	Bin             string   // fogmesh binary; "" runs the control plane in this process
	ControlFlags    []string // more flags for the child control plane (-control-flags)
	ControlMemLimit string   // GOMEMLIMIT of the child control plane (-control-memlimit; "": unset)
	Dir             string   // work dir (state dir under it)
	Restart         bool
	Verify          bool
	Dialers         int // first connections in flight at once
	// Scope, when > 0, is how many services each agent subscribes to
	// (wire.Scope.Services): agent i takes services i·Scope … i·Scope+Scope-1
	// (mod Services), so each service is in the scope of about
	// N·Scope/Services agents. 0: every agent subscribes to everything.
	Scope        int
	MaxRSS       int64         // abort when the control plane or this process grows past it (0: 4 GiB)
	PhaseTimeout time.Duration // bound of each wait
	Log          io.Writer
}

// result is what a run measured.
type result struct {
	N, M, Services int
	Secure         bool

	Setup        time.Duration // creating services and endpoints through the admin API
	InitialSync  time.Duration // first connection of every agent until all hold the load
	InitialCPU   float64       // cores during the initial sync
	ChangesSent  int
	Rate         float64 // achieved changes per second
	Incomplete   int     // changes some agent never applied
	P50, P99     time.Duration
	APIP50       time.Duration // the admin API's answer to a change (commit, audit record)
	APIP99       time.Duration
	Max          time.Duration
	CPU          float64 // control-plane cores during the steady phase
	RSS, HWM     int64   // control-plane bytes: max sampled in the steady phase; peak of the process
	Fds, Threads int

	Resubscribed   time.Duration // kill until every agent subscribed again
	Resync         time.Duration // kill until every agent is in sync on its new stream
	ResyncCPU      float64
	ResyncRSS      int64
	AfterRestartOK bool // a change after the restart reached every agent

	Faults []string // protocol faults and verification mismatches
	Scope  int      `json:",omitempty"` // services per agent (0: all)
	// Reach is how many agents each change had to reach (its service's
	// subscribers), on average.
	Reach float64 `json:",omitempty"`
	// FanoutP50 and FanoutP99: from the first of a change's agents to
	// apply it to the last (the push path without the write path).
	FanoutP50, FanoutP99 time.Duration
	// Plane: the control plane's own histograms over the steady phase
	// (name -> count, p50, p99): fogmesh_control_push_seconds (commit to
	// written at every stream) and the admin write's phases. Bucket upper
	// bounds (VictoriaMetrics vmrange, ≈ 12 % wide).
	Plane map[string]planeQ `json:",omitempty"`
}

// inScope tells whether agent i subscribes to service svc.
func (c *config) inScope(i, svc int) bool {
	if c.Scope <= 0 || c.Scope >= c.Services {
		return true
	}
	d := ((svc-i*c.Scope)%c.Services + c.Services) % c.Services
	return d < c.Scope
}

// scopeOf is agent i's subscription scope (nil: everything).
func (c *config) scopeOf(i int) *wire.Scope {
	if c.Scope <= 0 || c.Scope >= c.Services {
		return nil
	}
	sc := &wire.Scope{}
	for j := range c.Scope {
		sc.Services = append(sc.Services, fmt.Sprintf("%s/svc-%d", benchNS, (i*c.Scope+j)%c.Services))
	}
	return sc
}

type run struct {
	cfg    config
	p      plane
	ad     *admin
	tr     *tracker
	addr   atomic.Pointer[string]
	agents []*simAgent
	state  string

	logMu sync.Mutex // the watchdog logs progress beside the phases

	mu      sync.Mutex
	epRev   []uint64 // store revision of each endpoint's last write
	epPort  []int
	changed int
}

func (r *run) logf(format string, args ...any) {
	if r.cfg.Log != nil {
		r.logMu.Lock()
		defer r.logMu.Unlock()
		fmt.Fprintf(r.cfg.Log, time.Now().Format("15:04:05.000 ")+format+"\n", args...)
	}
}

const benchNS = "bench"

func serviceDoc(s int) map[string]any {
	return map[string]any{"apiVersion": api.APIVersion, "kind": api.KindService,
		"metadata": map[string]any{"name": fmt.Sprintf("svc-%d", s), "namespace": benchNS},
		"spec":     map[string]any{"ports": []any{map[string]any{"name": "http", "port": 80}}}}
}

func (r *run) endpointDoc(e int) map[string]any {
	return map[string]any{"apiVersion": api.APIVersion, "kind": api.KindEndpoint,
		"metadata": map[string]any{"name": fmt.Sprintf("ep-%d", e), "namespace": benchNS},
		"spec": map[string]any{"service": fmt.Sprintf("svc-%d", e%r.cfg.Services),
			"address": fmt.Sprintf("10.%d.%d.%d", e>>16&255, e>>8&255, e&255),
			"ports":   []any{map[string]any{"name": "http", "port": r.epPort[e]}}}}
}

// runLoad runs the phases: load the store, connect the agents, change
// endpoints at cfg.Rate, then (cfg.Restart) kill and restart the control
// plane and time the resync; with cfg.Verify it compares every agent's
// objects with the control plane's.
func runLoad(ctx context.Context, cfg config) (res result, err error) {
	if cfg.Services <= 0 {
		cfg.Services = max(1, cfg.M/10)
	}
	if cfg.Dialers <= 0 {
		cfg.Dialers = 64
	}
	if cfg.PhaseTimeout <= 0 {
		cfg.PhaseTimeout = 2 * time.Minute
	}
	if cfg.MaxRSS <= 0 {
		cfg.MaxRSS = 4 << 30
	}
	r := &run{cfg: cfg, tr: newTracker(cfg.N, cfg.inScope), state: filepath.Join(cfg.Dir, "state"),
		epRev: make([]uint64, cfg.M), epPort: make([]int, cfg.M)}
	res = result{N: cfg.N, M: cfg.M, Services: cfg.Services, Secure: !cfg.Insecure, Scope: cfg.Scope}
	if cfg.Bin != "" {
		r.p = &childPlane{bin: cfg.Bin, dir: cfg.Dir, hb: cfg.Heartbeat, insecure: cfg.Insecure, extra: cfg.ControlFlags, memLimit: cfg.ControlMemLimit}
	} else {
		r.p = &inProcPlane{dir: cfg.Dir, hb: cfg.Heartbeat, insecure: cfg.Insecure}
	}
	defer r.p.kill()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer func() {
		if err != nil && context.Cause(ctx) != nil && context.Cause(ctx) != ctx.Err() {
			err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
	}()
	// The watchdog writes to cfg.Log, which the caller reads once
	// runLoad has returned: it ends before that (defers run last first).
	watched := make(chan struct{})
	defer func() { cancel(nil); <-watched }()
	go func() { defer close(watched); r.watchdog(ctx, cancel) }()
	if err := r.startPlane(ctx); err != nil {
		return res, err
	}

	// Services and endpoints, in batches.
	t := time.Now()
	var docs []any
	flush := func(eps []int) error {
		if len(docs) == 0 {
			return nil
		}
		rev, err := r.ad.apply(ctx, docs)
		if err != nil {
			return fmt.Errorf("load: %w", err)
		}
		for _, e := range eps {
			r.epRev[e] = rev
		}
		docs = docs[:0]
		return nil
	}
	for s := range cfg.Services {
		docs = append(docs, serviceDoc(s))
		if len(docs) == 500 || s == cfg.Services-1 {
			if err := flush(nil); err != nil {
				return res, err
			}
		}
	}
	var batch []int
	for e := range cfg.M {
		r.epPort[e] = 1024 + e%60000
		docs, batch = append(docs, r.endpointDoc(e)), append(batch, e)
		if len(docs) == 500 || e == cfg.M-1 {
			if err := flush(batch); err != nil {
				return res, err
			}
			batch = batch[:0]
		}
	}
	res.Setup = time.Since(t)
	r.logf("loaded %d services, %d endpoints in %v", cfg.Services, cfg.M, res.Setup.Round(time.Millisecond))

	if err := r.makeAgents(); err != nil {
		return res, err
	}
	actx, cancelAgents := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancelAgents(); wg.Wait() }()
	gate := make(chan struct{}, cfg.Dialers)
	t = time.Now()
	p0, _ := readProc(r.p.pid())
	for _, a := range r.agents {
		wg.Add(1)
		go func() { defer wg.Done(); a.run(actx, cfg.Jitter, gate) }()
	}
	if err := r.waitFor(ctx, "every agent subscribed", func() bool {
		n, _, _, _ := r.tr.resync(time.Time{})
		return n == cfg.N
	}); err != nil {
		return res, err
	}
	rev, err := r.change(ctx, rand.N(cfg.M))
	if err != nil {
		return res, err
	}
	if err := r.waitApplied(ctx, rev); err != nil {
		return res, fmt.Errorf("initial sync: %w", err)
	}
	res.InitialSync = time.Since(t)
	p1, _ := readProc(r.p.pid())
	res.InitialCPU = cores(p0, p1)
	r.logf("initial sync of %d agents: %v (control plane %.2f cores, RSS %d MiB)", cfg.N, res.InitialSync.Round(time.Millisecond), res.InitialCPU, p1.rss>>20)

	// Steady phase: endpoint changes at cfg.Rate.
	if err := r.steady(ctx, &res); err != nil {
		return res, err
	}

	if cfg.Restart {
		if err := r.restart(ctx, &res); err != nil {
			return res, err
		}
	}
	if cfg.Verify {
		res.Faults = append(res.Faults, r.verify(ctx)...)
	}
	for _, a := range r.agents {
		a.mu.Lock()
		res.Faults = append(res.Faults, a.faults...)
		a.mu.Unlock()
	}
	return res, nil
}

// watchdog ends the run when the control plane or this process uses more
// memory than cfg.MaxRSS (the machine is shared), and logs progress.
func (r *run) watchdog(ctx context.Context, cancel context.CancelCauseFunc) {
	tk := time.NewTicker(250 * time.Millisecond)
	defer tk.Stop()
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		cp, _ := readProc(r.p.pid())
		self, _ := readProc(os.Getpid())
		if cp.rss > r.cfg.MaxRSS || self.rss > r.cfg.MaxRSS {
			cancel(fmt.Errorf("memory bound: control plane RSS %d MiB, load generator RSS %d MiB, limit %d MiB", cp.rss>>20, self.rss>>20, r.cfg.MaxRSS>>20))
			return
		}
		if i%40 == 0 && r.tr != nil { // every 10 s
			subs, synced, _, _ := r.tr.resync(time.Time{})
			r.logf("progress: %d agents subscribed, %d in sync on their stream, lowest version applied %d; control plane %d MiB, %d fds; load generator %d MiB",
				subs, synced, r.tr.minApplied(), cp.rss>>20, cp.fds, self.rss>>20)
		}
	}
}

func (r *run) startPlane(ctx context.Context) error {
	adminAddr, syncAddr, err := r.p.start(ctx)
	if err != nil {
		return err
	}
	r.addr.Store(&syncAddr)
	if r.ad, err = newAdmin(adminAddr, r.state, r.cfg.Insecure); err != nil {
		return err
	}
	return r.waitFor(ctx, "admin API", func() bool {
		_, _, err := r.ad.list(ctx, "services", api.KindService)
		return err == nil
	})
}

// makeAgents builds the agents; in secure mode each gets a node
// certificate signed by the control plane's own CA (its state dir).
func (r *run) makeAgents() error {
	var ca *identity.CA
	if !r.cfg.Insecure {
		var err error
		if ca, err = identity.OpenCA(identity.CAConfig{Dir: filepath.Join(r.state, "ca")}); err != nil {
			return fmt.Errorf("open the control plane's CA: %w", err)
		}
	}
	sites := r.cfg.N/100 + 1
	r.agents = make([]*simAgent, r.cfg.N)
	var (
		wg   sync.WaitGroup
		next atomic.Int64
		errs = make(chan error, 1)
	)
	t := time.Now()
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= r.cfg.N {
					return
				}
				n := &api.Node{APIVersion: api.APIVersion, Kind: api.KindNode,
					Meta: api.Meta{Name: fmt.Sprintf("n-%05d", i)},
					Spec: api.NodeSpec{Site: fmt.Sprintf("site-%d", i%sites), Region: "r1",
						MeshAddress: fmt.Sprintf("127.0.0.1:%d", 10000+i%50000)}}
				a := &simAgent{i: i, node: n, tr: r.tr, addr: &r.addr, verify: r.cfg.Verify, scope: r.cfg.scopeOf(i)}
				if ca != nil {
					cfg, err := clientTLS(ca, n.Spec.Site, n.Meta.Name)
					if err != nil {
						select {
						case errs <- err:
						default:
						}
						return
					}
					cfg.ClientSessionCache = tls.NewLRUClientSessionCache(1)
					a.tls = cfg
				}
				r.agents[i] = a
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	r.logf("%d agents ready (certificates: %v)", r.cfg.N, time.Since(t).Round(time.Millisecond))
	return nil
}

// change moves endpoint e to another port and returns the store revision.
func (r *run) change(ctx context.Context, e int) (uint64, error) {
	r.mu.Lock()
	r.epPort[e] = 1024 + (r.epPort[e]-1024+1)%60000
	doc := r.endpointDoc(e)
	r.mu.Unlock()
	rev, err := r.ad.apply(ctx, []any{doc})
	if err != nil {
		return 0, fmt.Errorf("change endpoint %d: %w", e, err)
	}
	r.mu.Lock()
	r.epRev[e] = max(r.epRev[e], rev) // two changes of e may be in flight
	r.changed++
	r.mu.Unlock()
	return rev, nil
}

func (r *run) steady(ctx context.Context, res *result) error {
	stop := make(chan struct{})
	var maxRSS atomic.Int64
	sampled := make(chan struct{})
	go func() { // sample the control plane's RSS
		defer close(sampled)
		tk := time.NewTicker(250 * time.Millisecond)
		defer tk.Stop()
		for {
			if st, err := readProc(r.p.pid()); err == nil && st.rss > maxRSS.Load() {
				maxRSS.Store(st.rss)
			}
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	p0, _ := readProc(r.p.pid())
	m0, _ := r.ad.metricsText(ctx)
	t0 := time.Now()
	r.tr.record(t0)
	// A change goes out every 1/rate whether or not the previous one was
	// answered (the admin API takes about 10 ms with its fsyncs, so one at
	// a time would fall short of 100/s); at most 32 in flight, else the
	// tick is skipped and the achieved rate says so.
	tk := time.NewTicker(time.Duration(float64(time.Second) / r.cfg.Rate))
	end := time.NewTimer(r.cfg.Duration)
	inflight := make(chan struct{}, 32)
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		werr     error
		sent     atomic.Int64
		applyMu  sync.Mutex
		applyLat []time.Duration // admin API round trips
	)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-end.C:
			break loop
		case <-tk.C:
		}
		select {
		case inflight <- struct{}{}:
		default:
			continue // 32 in flight: skip this tick
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-inflight }()
			t := time.Now()
			e := rand.N(r.cfg.M)
			rev, err := r.change(ctx, e)
			if err != nil {
				errOnce.Do(func() { werr = err })
				return
			}
			r.tr.register(t, rev, e%r.cfg.Services)
			sent.Add(1)
			applyMu.Lock()
			applyLat = append(applyLat, time.Since(t))
			applyMu.Unlock()
		}()
	}
	tk.Stop()
	wg.Wait()
	wall := time.Since(t0)
	p1, _ := readProc(r.p.pid())
	res.ChangesSent = int(sent.Load())
	slices.Sort(applyLat)
	res.APIP50, res.APIP99 = quantile(applyLat, 0.5), quantile(applyLat, 0.99)
	res.Rate = float64(res.ChangesSent) / wall.Seconds()
	res.CPU = cores(p0, p1)
	err := werr
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		close(stop)
		return err
	}
	// Let the last changes arrive (bounded).
	last := r.tr.maxRev()
	r.waitFor(ctx, "every change at every agent", func() bool { return r.tr.minApplied() >= last })
	close(stop)
	<-sampled
	if m1, err := r.ad.metricsText(ctx); err == nil {
		res.Plane = planeQuantiles(m0, m1)
	}
	p2, _ := readProc(r.p.pid())
	res.RSS, res.HWM, res.Fds, res.Threads = max(maxRSS.Load(), p2.rss), p2.hwm, p2.fds, p2.threads
	lat, fan, inc, reach := r.tr.latencies()
	res.Incomplete, res.Reach = inc, reach
	res.FanoutP50, res.FanoutP99 = quantile(fan, 0.50), quantile(fan, 0.99)
	res.P50, res.P99 = quantile(lat, 0.50), quantile(lat, 0.99)
	if len(lat) > 0 {
		res.Max = lat[len(lat)-1]
	}
	r.logf("steady: %d changes at %.1f/s; change->all agents p50 %v p99 %v max %v; %d incomplete; admin API answer p50 %v p99 %v; control plane %.2f cores, RSS %d MiB",
		res.ChangesSent, res.Rate, res.P50, res.P99, res.Max, inc, res.APIP50, res.APIP99, res.CPU, res.RSS>>20)
	if len(res.Plane) > 0 {
		r.logf("control plane's own view: %s", formatPlane(res.Plane))
	}
	return nil
}

// restart kills the control plane, starts it again on the same state dir
// and times until every agent has a new stream and holds what was
// committed when it was welcomed.
func (r *run) restart(ctx context.Context, res *result) error {
	kill := time.Now()
	if err := r.p.kill(); err != nil {
		return err
	}
	if err := r.startPlane(ctx); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	p0, _ := readProc(r.p.pid())
	r.logf("restarted in %v", time.Since(kill).Round(time.Millisecond))
	err := r.waitFor(ctx, "resync after restart", func() bool {
		_, synced, _, _ := r.tr.resync(kill)
		return synced == r.cfg.N
	})
	subs, synced, lastSub, lastSync := r.tr.resync(kill)
	if err != nil {
		return fmt.Errorf("%w (%d agents resubscribed, %d in sync)", err, subs, synced)
	}
	p1, _ := readProc(r.p.pid())
	res.Resubscribed, res.Resync = lastSub.Sub(kill), lastSync.Sub(kill)
	res.ResyncCPU, res.ResyncRSS = cores(p0, p1), p1.rss
	r.logf("resync: all %d agents resubscribed after %v, in sync after %v (control plane %.2f cores, RSS %d MiB)",
		r.cfg.N, res.Resubscribed.Round(time.Millisecond), res.Resync.Round(time.Millisecond), res.ResyncCPU, p1.rss>>20)
	rev, err := r.change(ctx, rand.N(r.cfg.M))
	if err != nil {
		return err
	}
	if err := r.waitApplied(ctx, rev); err != nil {
		return fmt.Errorf("a change after the restart: %w", err)
	}
	res.AfterRestartOK = true
	return nil
}

// verify compares what every agent holds with the control plane's objects,
// and the control plane's endpoints with the writes made.
func (r *run) verify(ctx context.Context) []string {
	var faults []string
	want := map[string]uint64{}
	var rev uint64
	for _, k := range [][2]string{{"services", api.KindService}, {"endpoints", api.KindEndpoint}, {"nodes", api.KindNode}} {
		m, v, err := r.ad.list(ctx, k[0], k[1])
		if err != nil {
			return []string{fmt.Sprintf("list %s: %v", k[0], err)}
		}
		for key, ver := range m {
			want[key] = ver
		}
		rev = max(rev, v)
	}
	// The lists may be at different revisions (a node turning ready):
	// compare once every agent holds the latest.
	if err := r.waitApplied(ctx, rev); err != nil {
		faults = append(faults, "verify: "+err.Error())
	}
	r.mu.Lock()
	for e := range r.cfg.M {
		k := fmt.Sprintf("%s/%s/ep-%d", api.KindEndpoint, benchNS, e)
		if got, ok := want[k]; !ok || got != r.epRev[e] {
			faults = append(faults, fmt.Sprintf("control plane holds %s at version %d, last written at %d", k, got, r.epRev[e]))
		}
	}
	r.mu.Unlock()
	for _, a := range r.agents {
		a.mu.Lock()
		var diff []string
		for k, v := range want {
			if !r.wants(a, k) {
				continue
			}
			if got, ok := a.objs[k]; !ok {
				diff = append(diff, "missing "+k)
			} else if got != v && !isNode(k) {
				diff = append(diff, fmt.Sprintf("%s at %d, want %d", k, got, v))
			}
		}
		for k := range a.objs {
			if _, ok := want[k]; !ok || !r.wants(a, k) {
				diff = append(diff, "extra "+k)
			}
		}
		a.mu.Unlock()
		if len(diff) > 0 {
			sort.Strings(diff)
			faults = append(faults, fmt.Sprintf("agent %s: %d differences, first %v", a.node.Meta.Name, len(diff), diff[:min(3, len(diff))]))
		}
	}
	return faults
}

// wants tells whether agent a should hold the object of key "Kind/name":
// everything, or with a scope its services, their endpoints and its own
// node (the load's endpoints are static: on no node).
func (r *run) wants(a *simAgent, key string) bool {
	if a.scope == nil {
		return true
	}
	var n int
	switch {
	case strings.HasPrefix(key, api.KindService+"/"+benchNS+"/svc-"):
		fmt.Sscanf(key, api.KindService+"/"+benchNS+"/svc-%d", &n)
		return r.cfg.inScope(a.i, n)
	case strings.HasPrefix(key, api.KindEndpoint+"/"+benchNS+"/ep-"):
		fmt.Sscanf(key, api.KindEndpoint+"/"+benchNS+"/ep-%d", &n)
		return r.cfg.inScope(a.i, n%r.cfg.Services)
	case isNode(key):
		return key == api.KindNode+"/"+a.node.Meta.Name
	}
	return true
}

// isNode: node versions move with readiness, which the agents may learn a
// moment later; their presence is compared, not their version.
func isNode(k string) bool { return len(k) > 5 && k[:5] == "Node/" }

func (r *run) waitApplied(ctx context.Context, rev uint64) error {
	return r.waitFor(ctx, fmt.Sprintf("every agent at version %d", rev), func() bool { return r.tr.minApplied() >= rev })
}

// waitFor polls cond until it holds, ctx ends or the phase timeout passes.
func (r *run) waitFor(ctx context.Context, what string, cond func() bool) error {
	deadline := time.Now().Add(r.cfg.PhaseTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v", what, r.cfg.PhaseTimeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

func cores(a, b procStat) float64 {
	if b.at.Sub(a.at) <= 0 {
		return 0
	}
	return float64(b.cpu-a.cpu) / float64(b.at.Sub(a.at))
}
