package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/agent"
	"github.com/fogmesh/fogmesh/internal/memtrim"
	"github.com/fogmesh/fogmesh/internal/procs"
)

// RunAgent runs `fogmesh agent`: flags override the config file.
func RunAgent(prog string, args []string) error {
	fs := flag.NewFlagSet(prog+" agent", flag.ContinueOnError)
	var (
		configPath = fs.String("config", "", "config file (YAML or JSON)")
		name       = fs.String("name", "", "node name (default: hostname)")
		site       = fs.String("site", "", "site of this node")
		region     = fs.String("region", "", "region of this node")
		zone       = fs.String("zone", "", "zone of this node")
		control    = fs.String("control", "", "control plane sync addresses, comma separated (host:port)")
		meshAddr   = fs.String("mesh-addr", "", "mesh port listen address (default 127.0.0.1:7072)")
		meshAdv    = fs.String("mesh-advertise", "", "mesh address peers dial (default -mesh-addr)")
		gossipAddr = fs.String("gossip-addr", "", "liveness gossip with the site's agents on this host:port (off by default)")
		dnsAddr    = fs.String("dns-addr", "", "DNS listen address, UDP and TCP (default 127.0.0.1:5353)")
		adminAddr  = fs.String("admin-addr", "", "health, metrics and local API address (default 127.0.0.1:7073)")
		vipRange   = fs.String("vip-range", "", "virtual IPv4 range for services (default 127.77.0.0/16)")
		vip6Range  = fs.String("vip6-range", "", "virtual IPv6 range for services (off by default; must be routed to lo)")
		stateDir   = fs.String("state-dir", "", "directory for the configuration cache (default /var/lib/fogmesh/agent)")
		addrFile   = fs.String("addr-file", "", "write the bound addresses (dns, mesh, admin, gossip) as JSON to this file once listening; with port 0 in an address, this is how to learn the port")
		insecure   = fs.Bool("insecure", false, "plaintext sync and mesh port, no identities: tests and local experiments only")
		pathNorm   = fs.String("path-normalization", "", "HTTP path normalisation, Istio's options: NONE, BASE (default), MERGE_SLASHES, DECODE_AND_MERGE_SLASHES")
		joinToken  = fs.String("join-token", os.Getenv("FOGMESH_JOIN_TOKEN"), "join token from 'fogmesh token create -site SITE' ($FOGMESH_JOIN_TOKEN); needed once, when the state dir holds no certificate")
		joinFile   = fs.String("join-token-file", "", "read the join token from this file if it exists (a missing file is no token: a DaemonSet mounts a Secret keyed by node name, and a joined node needs none)")
		relays     = fs.String("relays", "", "relay addresses, comma separated (host:port): reach peers behind NATs (secure mode)")
		punchAddr  = fs.String("punch-addr", "", "UDP address of punched paths (default 0.0.0.0:0; off: relayed paths only)")
		gwAddr     = fs.String("gateway-addr", "", "be the site's gateway: forward the site's agents to this agent's control planes and relays on this ip:port")
		viaGW      = fs.String("via-gateway", "", "reach the control planes and relays through this site gateway (ip:port)")
		meshDomain = fs.String("mesh-domain", "", "DNS domain of mesh names, <svc>.<ns>.DOMAIN (default mesh)")
		clusterDom = fs.String("cluster-domain", "", "Kubernetes cluster domain: DNS also answers <svc>.<ns>.svc.DOMAIN (default cluster.local; - for off)")
		captureM   = fs.String("capture", "", "transparent capture of ClusterIP traffic with nftables: off (default), auto (fall back to virtual IPs when not permitted), required")
		fastPathM  = fs.String("fast-path", "", "kernel fast path for same-node tcp ports (BPF sockmap, root): off (default), auto (relay in the agent when the kernel does not allow it), required")
		captureA   = fs.String("capture-addr", "", "capture listener, every IPv4 address (default 0.0.0.0:15001)")
		captureA6  = fs.String("capture-addr6", "", "IPv6 capture listener (default [::]:15001; off: IPv6 ClusterIPs not captured)")
		scope      = fs.String("scope", "", "services this node's workloads use, comma separated (ns/name or ns/*): receive only these, the node's own and those asked for on a miss (default: every service)")
		logf       LogFlags

		traceEndpoint = fs.String("trace-endpoint", "", "OTLP collector for traces: http://host:4318 (http/protobuf) or host:4317 (grpc); off by default")
		traceProtocol = fs.String("trace-protocol", "", "OTLP protocol: http/protobuf (default) or grpc")
		traceRatio    = fs.Float64("trace-sample-ratio", 0, "share of new traces sampled, 0 to 1 (default 0.01; incoming sampled traces are always continued)")
		accessLog     = fs.String("access-log", "", "write a JSON line per HTTP request to this file (off by default; rotated at 100 MiB, 5 kept)")
		accessRatio   = fs.Float64("access-log-sample-ratio", 0, "share of requests logged, 0 to 1 (default 1)")
		accessFields  = fs.String("access-log-fields", "", "fields of an access-log line, comma separated (default all)")
	)
	logf.Register(fs)
	if err := fs.Parse(args); err != nil {
		return &UsageError{Err: err}
	}
	if fs.NArg() > 0 {
		return Usagef("agent: unexpected argument %q", fs.Arg(0))
	}
	var cfg agent.Config
	if *configPath != "" {
		if err := LoadConfigFile(*configPath, &cfg); err != nil {
			return err
		}
	}
	set := FlagsSet(fs)
	override := func(flagName string, dst *string, v string) {
		if set[flagName] {
			*dst = v
		}
	}
	override("name", &cfg.Node.Name, *name)
	override("site", &cfg.Node.Site, *site)
	override("region", &cfg.Node.Region, *region)
	override("zone", &cfg.Node.Zone, *zone)
	override("mesh-addr", &cfg.MeshAddr, *meshAddr)
	override("mesh-advertise", &cfg.MeshAdvertise, *meshAdv)
	override("dns-addr", &cfg.DNSAddr, *dnsAddr)
	override("gossip-addr", &cfg.GossipAddr, *gossipAddr)
	override("admin-addr", &cfg.AdminAddr, *adminAddr)
	override("vip-range", &cfg.VIPRange, *vipRange)
	override("vip6-range", &cfg.VIP6Range, *vip6Range)
	override("state-dir", &cfg.StateDir, *stateDir)
	override("mesh-domain", &cfg.MeshDomain, *meshDomain)
	override("cluster-domain", &cfg.ClusterDomain, *clusterDom)
	override("capture", &cfg.Capture.Mode, *captureM)
	override("fast-path", &cfg.FastPath.Mode, *fastPathM)
	override("capture-addr", &cfg.Capture.Addr, *captureA)
	override("capture-addr6", &cfg.Capture.Addr6, *captureA6)
	if set["path-normalization"] {
		if err := cfg.PathNormalization.UnmarshalText([]byte(*pathNorm)); err != nil {
			return &UsageError{Err: fmt.Errorf("agent: -path-normalization: %w", err)}
		}
	}
	if set["insecure"] {
		cfg.Insecure = *insecure
	}
	if *joinToken != "" {
		cfg.JoinToken = *joinToken
	} else if *joinFile != "" {
		tok, err := readJoinTokenFile(*joinFile)
		if err != nil {
			return err
		}
		cfg.JoinToken = tok
	}
	if set["control"] {
		cfg.Control = splitList(*control)
	}
	if set["scope"] {
		cfg.Scope = splitList(*scope)
	}
	if set["relays"] {
		cfg.Relays = splitList(*relays)
	}
	override("trace-endpoint", &cfg.Tracing.Endpoint, *traceEndpoint)
	override("trace-protocol", &cfg.Tracing.Protocol, *traceProtocol)
	if set["trace-sample-ratio"] {
		cfg.Tracing.SampleRatio = traceRatio
	}
	override("access-log", &cfg.AccessLog.Path, *accessLog)
	if set["access-log-sample-ratio"] {
		cfg.AccessLog.SampleRatio = accessRatio
	}
	if set["access-log-fields"] {
		cfg.AccessLog.Fields = splitList(*accessFields)
	}
	override("punch-addr", &cfg.PunchAddr, *punchAddr)
	override("gateway-addr", &cfg.GatewayAddr, *gwAddr)
	override("via-gateway", &cfg.ViaGateway, *viaGW)
	if cfg.Node.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return Usagef("agent: -name not given and no hostname: %v", err)
		}
		cfg.Node.Name = strings.ToLower(h)
	}
	log, err := logf.Logger(os.Stderr)
	if err != nil {
		return err
	}
	cfg.Logger = log
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.NewSet() // the agent's /metrics; the pacer counts into it too
	}
	a, err := agent.New(cfg)
	if err != nil {
		var ce *agent.ConfigError
		if errors.As(err, &ce) {
			return &UsageError{Err: err}
		}
		return err
	}
	ctx, stop := SignalContext()
	defer stop()
	// Give the heap a load left behind back to the OS once the agent is
	// idle again (internal/memtrim), with the idle connections and buffers
	// the load left (Agent.ReleaseIdle); FOGMESH_MEMTRIM=off leaves it to the
	// runtime (for comparisons).
	if os.Getenv("FOGMESH_MEMTRIM") != "off" {
		// Under load the GC may let the heap grow FOGMESH_GC_HEADROOM
		// (16 MiB) above its live part between collections, and goes back
		// to GOGC's pace at the first idle tick (memtrim's pace.go).
		headroom, why := memtrim.HeadroomFromEnv()
		switch v := strings.TrimSpace(os.Getenv("FOGMESH_GC_HEADROOM")); {
		case headroom != 0 || v == "":
		case v == "off" || v == "0":
			log.Info("agent: the GC is not paced to the load", "why", why)
		default:
			log.Warn("agent: the GC is not paced to the load", "why", why)
		}
		cfg.Metrics.GetOrCreateGauge("fogmesh_agent_gc_percent", func() float64 { return float64(memtrim.GCPercent()) })
		tctx, stopTrim := context.WithCancel(ctx)
		waitTrim := memtrim.Start(tctx, memtrim.Config{
			Headroom: headroom,
			OnPace: func(from, to int) {
				log.Debug("agent: GC percent paced to the load", "from", from, "to", to)
			},
			Release: func() { a.ReleaseIdle() },
			Settled: func() {
				// Start-up's code pages (config parse, first sync) are
				// not used again: unmap them once.
				if n, err := memtrim.ReleaseCode(); err != nil {
					log.Warn("agent: start-up's code pages stay mapped", "err", err)
				} else {
					log.Debug("agent: start-up's code pages unmapped", "bytes", n)
				}
			},
		})
		defer func() { stopTrim(); waitTrim() }()
	}
	// FOGMESH_PROCS=auto: one scheduler P while the agent uses well
	// under a core, every P as soon as it needs more (internal/procs).
	if on, why := procs.Wanted(); on {
		changes := cfg.Metrics.NewCounter("fogmesh_agent_procs_changes_total")
		pctx, stopProcs := context.WithCancel(ctx)
		waitProcs := procs.Start(pctx, procs.Config{OnChange: func(from, to int) {
			changes.Inc()
			log.Debug("agent: scheduler processors (GOMAXPROCS) paced to the load", "from", from, "to", to)
		}})
		defer func() { stopProcs(); waitProcs() }()
	} else if v := os.Getenv("FOGMESH_PROCS"); v != "" && v != "fixed" {
		log.Warn("agent: GOMAXPROCS not paced", "why", why)
	}
	fmt.Fprintf(os.Stderr, "fogmesh agent %s: dns %s, mesh %s, admin %s\n", cfg.Node.Name, a.DNSAddr(), a.MeshAddr(), a.AdminAddr())
	if cs := a.CaptureStatus(); cs.Active {
		fmt.Fprintf(os.Stderr, "fogmesh agent %s: transparent capture on (nftables table inet fogmesh, listener %s)\n", cfg.Node.Name, cs.Addr)
	} else if cs.Mode != agent.CaptureOff {
		fmt.Fprintf(os.Stderr, "fogmesh agent %s: %s\n", cfg.Node.Name, cs.Note)
	}
	addrs := map[string]string{"dns": a.DNSAddr(), "mesh": a.MeshAddr(), "admin": a.AdminAddr()}
	if g := a.GossipAddr(); g != "" {
		addrs["gossip"] = g
	}
	if g := a.GatewayAddr(); g != "" {
		addrs["gateway"] = g
	}
	if err := WriteAddrFile(*addrFile, addrs); err != nil {
		a.Close()
		return err
	}
	return a.Run(ctx)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
