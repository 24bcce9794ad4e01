package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/enroll"
	"github.com/fogmesh/fogmesh/internal/kube"
	"github.com/fogmesh/fogmesh/internal/store"
)

// controlFile is the control plane's config file.
type controlFile struct {
	StateDir          string        `json:"stateDir,omitempty"`
	AdminAddr         string        `json:"adminAddr,omitempty"`
	SyncAddr          string        `json:"syncAddr,omitempty"`
	HeartbeatInterval durationValue `json:"heartbeatInterval,omitempty"`
	NodeTimeout       durationValue `json:"nodeTimeout,omitempty"`
	NodeExpiry        durationValue `json:"nodeExpiry,omitempty"`
	ReconnectGrace    durationValue `json:"reconnectGrace,omitempty"`
	VIPRange          string        `json:"vipRange,omitempty"`
	Insecure          bool          `json:"insecure,omitempty"`
	TrustDomain       string        `json:"trustDomain,omitempty"`
	CACertFile        string        `json:"caCertFile,omitempty"`
	CAKeyFile         string        `json:"caKeyFile,omitempty"`
	NodeTTL           durationValue `json:"nodeTTL,omitempty"`
	WorkloadTTL       durationValue `json:"workloadTTL,omitempty"`
	AutonomyWindow    durationValue `json:"autonomyWindow,omitempty"`
	RotationOverlap   durationValue `json:"rotationOverlap,omitempty"`
	ServerNames       []string      `json:"serverNames,omitempty"`
	// Mode, Region, Upstreams, VIPIndexes and RegionCATTL place the
	// control plane in a hierarchy: see control.Config and docs/regions.md.
	Mode        string        `json:"mode,omitempty"`
	Region      string        `json:"region,omitempty"`
	Upstreams   []string      `json:"upstreams,omitempty"`
	VIPIndexes  string        `json:"vipIndexes,omitempty"`
	RegionCATTL durationValue `json:"regionCATTL,omitempty"`

	// IstioRootNamespace: see control.Config.
	IstioRootNamespace string `json:"istioRootNamespace,omitempty"`

	// MaxEndpointsPerNode bounds the endpoints one node's agent registers
	// (default 1024): see control.Config.
	MaxEndpointsPerNode int `json:"maxEndpointsPerNode,omitempty"`
	// AuditArchivesPerNode bounds the archived audit chains kept of one
	// node (default 16, negative: no bound): see control.Config.
	AuditArchivesPerNode int `json:"auditArchivesPerNode,omitempty"`
	// SyncMaxHandshakes and SyncMaxHandshakesPerSource bound the sync
	// port's TLS handshakes in progress, in all and from one IP address
	// (default 1024 and 256; negative: no bound): see control.Config.
	SyncMaxHandshakes          int `json:"syncMaxHandshakes,omitempty"`
	SyncMaxHandshakesPerSource int `json:"syncMaxHandshakesPerSource,omitempty"`
	// SyncHandshakeTimeout bounds a sync port TLS handshake (default 10s;
	// raise it for slow links): see control.Config.
	SyncHandshakeTimeout durationValue `json:"syncHandshakeTimeout,omitempty"`
	// AdminMaxHandshakes and AdminMaxHandshakesPerSource bound the admin
	// API's TLS handshakes in progress likewise (default 256 and 64).
	AdminMaxHandshakes          int `json:"adminMaxHandshakes,omitempty"`
	AdminMaxHandshakesPerSource int `json:"adminMaxHandshakesPerSource,omitempty"`

	// Kube is a kubeconfig file, or "in-cluster": the Kubernetes API
	// (or KubeEdge metaServer, OpenYurt yurthub) whose Services,
	// EndpointSlices, Nodes, Pods and Istio and fogmesh custom resources
	// join the registry (internal/kube; README, "Kubernetes").
	Kube string `json:"kube,omitempty"`
	// KubeSiteLabels name a node's site, the first present wins
	// (default fogmesh.io/site, then OpenYurt's and KubeEdge's pool labels).
	KubeSiteLabels []string `json:"kubeSiteLabels,omitempty"`
	// KubeMaxServicePorts: a Service with more ports is refused (default 256).
	KubeMaxServicePorts int `json:"kubeMaxServicePorts,omitempty"`

	// Name is this control plane's name (its own audit chain; the
	// replica name in an election): distinct for every replica.
	Name string `json:"name,omitempty"`
	// Store is "bbolt" (default: one file in StateDir, one replica) or
	// "etcd" (replicas sharing EtcdEndpoints; see controlstore.go).
	Store         string   `json:"store,omitempty"`
	EtcdEndpoints []string `json:"etcdEndpoints,omitempty"`
	EtcdPrefix    string   `json:"etcdPrefix,omitempty"`
	// EtcdMaxTxnOps is etcd's --max-txn-ops when raised (default 128).
	EtcdMaxTxnOps int `json:"etcdMaxTxnOps,omitempty"`
	// EtcdSessionTTL bounds how long a dead leader keeps the leadership.
	EtcdSessionTTL durationValue `json:"etcdSessionTTL,omitempty"`
	EtcdCAFile     string        `json:"etcdCAFile,omitempty"`
	EtcdCertFile   string        `json:"etcdCertFile,omitempty"`
	EtcdKeyFile    string        `json:"etcdKeyFile,omitempty"`
	EtcdUsername   string        `json:"etcdUsername,omitempty"`
	// EtcdPasswordFile holds the etcd password (not in the config file).
	EtcdPasswordFile string `json:"etcdPasswordFile,omitempty"`
}

// controlConfig is the control.Config fc asks for, with the VIP index
// block parsed from fc.VIPIndexes (the store, listeners, logger, metrics
// and region join token are not in the file).
func (fc *controlFile) controlConfig(vipMin, vipMax uint32) control.Config {
	return control.Config{Name: fc.Name,
		StateDir: fc.StateDir, AdminAddr: fc.AdminAddr, SyncAddr: fc.SyncAddr,
		HeartbeatInterval: time.Duration(fc.HeartbeatInterval), NodeTimeout: time.Duration(fc.NodeTimeout), NodeExpiry: time.Duration(fc.NodeExpiry),
		ReconnectGrace: time.Duration(fc.ReconnectGrace),
		VIPRange:       fc.VIPRange, IstioRootNamespace: fc.IstioRootNamespace,
		Insecure: fc.Insecure, TrustDomain: fc.TrustDomain, CACertFile: fc.CACertFile, CAKeyFile: fc.CAKeyFile,
		NodeTTL: time.Duration(fc.NodeTTL), WorkloadTTL: time.Duration(fc.WorkloadTTL), AutonomyWindow: time.Duration(fc.AutonomyWindow),
		RotationOverlap: time.Duration(fc.RotationOverlap), ServerNames: fc.ServerNames,
		Mode: fc.Mode, Region: fc.Region, Upstreams: fc.Upstreams, RegionCATTL: time.Duration(fc.RegionCATTL),
		VIPIndexMin: vipMin, VIPIndexMax: vipMax, MaxEndpointsPerNode: fc.MaxEndpointsPerNode,
		AuditArchivesPerNode: fc.AuditArchivesPerNode,
		SyncMaxHandshakes:    fc.SyncMaxHandshakes, SyncMaxHandshakesPerSource: fc.SyncMaxHandshakesPerSource,
		SyncHandshakeTimeout: time.Duration(fc.SyncHandshakeTimeout),
		AdminMaxHandshakes:   fc.AdminMaxHandshakes, AdminMaxHandshakesPerSource: fc.AdminMaxHandshakesPerSource,
	}
}

// durationValue is a duration in the config file, written as Go writes
// durations ("5s", "1m30s").
type durationValue time.Duration

// MarshalText writes d as UnmarshalText reads it.
func (d durationValue) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *durationValue) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = durationValue(v)
	return err
}

func runControl(args []string) error {
	fs := flag.NewFlagSet("fogmesh control", flag.ContinueOnError)
	var (
		configPath = fs.String("config", "", "config file (YAML or JSON)")
		stateDir   = fs.String("state-dir", "", "directory of the store file (default /var/lib/fogmesh/control)")
		adminAddr  = fs.String("admin-addr", "", "admin API, /healthz and /metrics address (default 127.0.0.1:7070)")
		syncAddr   = fs.String("sync-addr", "", "address agents connect to (default 127.0.0.1:7071)")
		hb         = fs.Duration("heartbeat-interval", 0, "agent heartbeat interval (default 5s)")
		timeout    = fs.Duration("node-timeout", 0, "mark a node unreachable after this long without heartbeat, not ready -node-expiry later (default 3 × interval)")
		expiry     = fs.Duration("node-expiry", 0, "how long past -node-timeout an unreachable node keeps its endpoints routable when no peer reports traffic from it (default 5m)")
		grace      = fs.Duration("reconnect-grace", 0, "after a start, give nodes not heard from yet this long more than node-timeout to reconnect (default 30s)")
		syncHSTime = fs.Duration("sync-handshake-timeout", 0, "close a sync port connection whose TLS handshake takes longer (default 10s; raise it for slow links)")
		vipRange   = fs.String("vip-range", "", "default service virtual IPv4 range (default 127.77.0.0/16)")
		insecure   = fs.Bool("insecure", false, "plaintext sync and admin API, no authentication: tests and local experiments only")
		td         = fs.String("trust-domain", "", "SPIFFE trust domain (default fogmesh.local)")
		caCert     = fs.String("ca-cert", "", "operator-provided CA certificate (PEM; with -ca-key); default: a CA in the state dir")
		caKey      = fs.String("ca-key", "", "its private key (PEM, mode 0600)")
		nodeTTL    = fs.Duration("node-ttl", 0, "node certificate lifetime (default 168h; at least twice the autonomy window)")
		wlTTL      = fs.Duration("workload-ttl", 0, "workload SVID lifetime (default 1h)")
		autonomy   = fs.Duration("autonomy-window", 0, "how long a site cut off from every control plane keeps valid certificates (default 72h)")
		overlap    = fs.Duration("rotation-overlap", 0, "how long a rotated-out root stays trusted (default 192h; must exceed the node TTL)")
		names      = fs.String("server-name", "", "extra DNS names or IPs for the control plane certificate, comma separated")
		vipIndexes = fs.String("vip-indexes", "", "the block of virtual IP indexes this control plane allocates, FIRST-LAST (default: the whole range); give each control plane of a hierarchy its own")
		name       = fs.String("name", "", "this control plane's name, distinct for every replica (default control)")
		storeKind  = fs.String("store", "", "bbolt (default: a file in the state dir, one replica) or etcd (replicas sharing -etcd-endpoints)")
		etcdEPs    = fs.String("etcd-endpoints", "", "etcd client URLs, comma separated (with -store etcd)")
		etcdPrefix = fs.String("etcd-prefix", "", "key prefix in etcd (default /fogmesh/)")
		etcdTTL    = fs.Duration("etcd-session-ttl", 0, "how long a replica that stopped answering stays leader (default 10s; whole seconds)")
		etcdCA     = fs.String("etcd-ca", "", "CA bundle (PEM) verifying etcd's certificate")
		etcdCert   = fs.String("etcd-cert", "", "client certificate (PEM) for etcd, with -etcd-key")
		etcdKey    = fs.String("etcd-key", "", "its private key (PEM)")
		etcdUser   = fs.String("etcd-username", "", "etcd user (etcd auth), with -etcd-password-file")
		etcdPWFile = fs.String("etcd-password-file", "", "file holding the etcd user's password")
		addrFile   = fs.String("addr-file", "", "write the bound addresses (admin, sync) as JSON to this file once listening; with port 0 in an address, this is how to learn the port")
		kubeCfg    = fs.String("kube", "", "watch this Kubernetes API: a kubeconfig file, or in-cluster (the pod's service account); see README, Kubernetes")
		kubeSites  = fs.String("kube-site-labels", "", "node labels naming a node's site, comma separated, the first present wins (default fogmesh.io/site,apps.openyurt.io/nodepool,apps.openyurt.io/desired-nodepool,apps.kubeedge.io/belonging-to)")
		kubePorts  = fs.Int("kube-max-service-ports", 0, "refuse cluster Services with more ports than this (default 256)")
		memLimit   = fs.String("memory-limit", "", "Go soft memory limit of this process, e.g. 900MiB (as GOMEMLIMIT; default none): the GC runs more often near it instead of letting the heap double; not a hard cap")
		contention = fs.Bool("debug-contention", false, "record mutex and block profiles for /debug/pprof/mutex and /debug/pprof/block on the admin port (costs a little CPU)")
		logf       cli.LogFlags
	)
	rf := registerRegionFlags(fs)
	logf.Register(fs)
	if err := fs.Parse(args); err != nil {
		return &cli.UsageError{Err: err}
	}
	if fs.NArg() > 0 {
		return cli.Usagef("unexpected argument %q", fs.Arg(0))
	}
	if *memLimit != "" {
		n, err := parseMemoryLimit(*memLimit)
		if err != nil {
			return cli.Usagef("-memory-limit: %v", err)
		}
		debug.SetMemoryLimit(n)
	}
	if *contention {
		// One in 5 contended mutex events, and blocking of 10 µs or more.
		runtime.SetMutexProfileFraction(5)
		runtime.SetBlockProfileRate(10000)
	}
	var fc controlFile
	if *configPath != "" {
		if err := cli.LoadConfigFile(*configPath, &fc); err != nil {
			return err
		}
	}
	set := cli.FlagsSet(fs)
	if set["state-dir"] {
		fc.StateDir = *stateDir
	}
	if set["admin-addr"] {
		fc.AdminAddr = *adminAddr
	}
	if set["sync-addr"] {
		fc.SyncAddr = *syncAddr
	}
	if set["heartbeat-interval"] {
		fc.HeartbeatInterval = durationValue(*hb)
	}
	if set["node-expiry"] {
		fc.NodeExpiry = durationValue(*expiry)
	}
	if set["reconnect-grace"] {
		fc.ReconnectGrace = durationValue(*grace)
	}
	if set["sync-handshake-timeout"] {
		fc.SyncHandshakeTimeout = durationValue(*syncHSTime)
	}
	if set["node-timeout"] {
		fc.NodeTimeout = durationValue(*timeout)
	}
	if set["vip-range"] {
		fc.VIPRange = *vipRange
	}
	if set["insecure"] {
		fc.Insecure = *insecure
	}
	if set["trust-domain"] {
		fc.TrustDomain = *td
	}
	if set["ca-cert"] {
		fc.CACertFile = *caCert
	}
	if set["ca-key"] {
		fc.CAKeyFile = *caKey
	}
	if set["node-ttl"] {
		fc.NodeTTL = durationValue(*nodeTTL)
	}
	if set["workload-ttl"] {
		fc.WorkloadTTL = durationValue(*wlTTL)
	}
	if set["autonomy-window"] {
		fc.AutonomyWindow = durationValue(*autonomy)
	}
	if set["rotation-overlap"] {
		fc.RotationOverlap = durationValue(*overlap)
	}
	if set["vip-indexes"] {
		fc.VIPIndexes = *vipIndexes
	}
	vipMin, vipMax, err := parseVIPIndexes(fc.VIPIndexes)
	if err != nil {
		return cli.Usagef("vip-indexes: %v", err)
	}
	if set["server-name"] {
		fc.ServerNames = strings.Split(*names, ",")
	}
	rf.apply(set, &fc)
	if set["name"] {
		fc.Name = *name
	}
	if set["store"] {
		fc.Store = *storeKind
	}
	if set["etcd-endpoints"] {
		fc.EtcdEndpoints = strings.Split(*etcdEPs, ",")
	}
	if set["etcd-prefix"] {
		fc.EtcdPrefix = *etcdPrefix
	}
	if set["etcd-session-ttl"] {
		fc.EtcdSessionTTL = durationValue(*etcdTTL)
	}
	if set["etcd-ca"] {
		fc.EtcdCAFile = *etcdCA
	}
	if set["etcd-cert"] {
		fc.EtcdCertFile = *etcdCert
	}
	if set["etcd-key"] {
		fc.EtcdKeyFile = *etcdKey
	}
	if set["etcd-username"] {
		fc.EtcdUsername = *etcdUser
	}
	if set["etcd-password-file"] {
		fc.EtcdPasswordFile = *etcdPWFile
	}
	if set["kube"] {
		fc.Kube = *kubeCfg
	}
	if set["kube-site-labels"] {
		fc.KubeSiteLabels = strings.Split(*kubeSites, ",")
	}
	if set["kube-max-service-ports"] {
		fc.KubeMaxServicePorts = *kubePorts
	}
	if fc.KubeMaxServicePorts < 0 {
		return cli.Usagef("kube-max-service-ports: %d is negative", fc.KubeMaxServicePorts)
	}
	if fc.StateDir == "" {
		fc.StateDir = "/var/lib/fogmesh/control"
	}
	log, err := logf.Logger(os.Stderr)
	if err != nil {
		return err
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	ms := metrics.NewSet()
	eo, err := etcdOptions(&fc, log)
	if err != nil {
		return err
	}
	var st store.Backend
	var adminLn, syncLn net.Listener
	if eo != nil {
		// A replica on etcd starts while etcd is down: not ready until it
		// answers (controlwait.go).
		if adminLn, syncLn, err = listenControl(&fc); err != nil {
			return err
		}
		if err := cli.WriteAddrFile(*addrFile, map[string]string{"admin": adminLn.Addr().String(), "sync": syncLn.Addr().String()}); err != nil {
			adminLn.Close()
			syncLn.Close()
			return err
		}
		st, err = waitStore(ctx, log, adminLn, syncLn, &fc, func() (store.Backend, error) { return openEtcd(eo, &fc) })
		if err != nil || st == nil {
			adminLn.Close()
			syncLn.Close()
			return err // nil: a signal while waiting
		}
	}
	cc := fc.controlConfig(vipMin, vipMax)
	cc.Store, cc.AdminListener, cc.SyncListener = st, adminLn, syncLn
	cc.Logger, cc.Metrics, cc.RegionJoinToken = log, ms, *rf.joinToken
	s, err := control.New(cc)
	var refused *enroll.Error
	if errors.As(err, &refused) { // a refused region join: retrying cannot help
		if st != nil {
			st.Close()
		}
		return &cli.UsageError{Err: err}
	}
	if err != nil {
		if st != nil {
			st.Close()
		}
		if adminLn != nil {
			adminLn.Close()
			syncLn.Close()
		}
		return err
	}
	if fc.Insecure {
		fmt.Fprintf(os.Stderr, "fogmesh control: INSECURE: admin http://%s, sync %s (plaintext), state %s\n", s.AdminAddr(), s.SyncAddr(), fc.StateDir)
	} else {
		if fc.Mode == control.ModeRegional {
			fmt.Fprintf(os.Stderr, "fogmesh control: regional control plane of region %s, upstream %s\n", fc.Region, strings.Join(fc.Upstreams, ","))
		}
		fmt.Fprintf(os.Stderr, "fogmesh control: admin https://%s, sync %s (mTLS), state %s, CA bundle %s, admin token %s\n",
			s.AdminAddr(), s.SyncAddr(), fc.StateDir, s.BundlePath(), filepath.Join(fc.StateDir, control.AdminTokenFile))
	}
	if err := cli.WriteAddrFile(*addrFile, map[string]string{"admin": s.AdminAddr(), "sync": s.SyncAddr()}); err != nil {
		s.Close()
		return err
	}
	if fc.Kube != "" {
		src, err := kube.New(kube.Config{Kubeconfig: fc.Kube, Logger: log, Metrics: ms,
			Mapper: kube.Mapper{SiteLabels: fc.KubeSiteLabels, MaxServicePorts: fc.KubeMaxServicePorts, IstioRootNamespace: fc.IstioRootNamespace}}, s)
		if err != nil {
			s.Close()
			return &cli.UsageError{Err: err}
		}
		kctx, kstop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); src.Run(kctx) }()
		defer func() { kstop(); <-done }()
	}
	return s.Serve(ctx)
}

// listenControl binds the admin and sync addresses of fc (or the defaults).
func listenControl(fc *controlFile) (admin, sync net.Listener, err error) {
	if admin, err = net.Listen("tcp", cmpOr(fc.AdminAddr, control.DefaultAdminAddr)); err != nil {
		return nil, nil, fmt.Errorf("control: admin listen: %w", err)
	}
	if sync, err = net.Listen("tcp", cmpOr(fc.SyncAddr, control.DefaultSyncAddr)); err != nil {
		admin.Close()
		return nil, nil, fmt.Errorf("control: sync listen: %w", err)
	}
	return admin, sync, nil
}

// parseVIPIndexes parses FIRST-LAST ("" is 0, 0: the whole range).
func parseVIPIndexes(v string) (first, last uint32, err error) {
	if v == "" {
		return 0, 0, nil
	}
	a, b, ok := strings.Cut(v, "-")
	f, errA := strconv.ParseUint(a, 10, 32)
	l, errB := strconv.ParseUint(b, 10, 32)
	if !ok || errA != nil || errB != nil || f == 0 || f > l {
		return 0, 0, fmt.Errorf("%q is not FIRST-LAST with 0 < FIRST <= LAST", v)
	}
	return uint32(f), uint32(l), nil
}

// parseMemoryLimit reads a size as GOMEMLIMIT writes it: a number of bytes
// with an optional unit B, KiB, MiB, GiB or TiB.
func parseMemoryLimit(v string) (int64, error) {
	num, mult := v, int64(1)
	for i, u := range []string{"TiB", "GiB", "MiB", "KiB", "B"} {
		if strings.HasSuffix(v, u) {
			num, mult = strings.TrimSuffix(v, u), int64(1)<<(10*(4-i))
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (a positive number of bytes, B, KiB, MiB, GiB or TiB)", v)
	}
	return n * mult, nil
}
