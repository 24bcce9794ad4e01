package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/gateway"
	"github.com/fogmesh/fogmesh/internal/meshdns"
	"github.com/fogmesh/fogmesh/internal/netseam"
	"github.com/fogmesh/fogmesh/internal/pathnorm"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// Config configures an agent. Zero values take the defaults in comments.
type Config struct {
	// Node describes this node. Name, Site and Region are required.
	Node NodeConfig `json:"node"`
	// Control lists control plane sync addresses (host:port), tried in order.
	// Empty: the agent runs from its cache and local workloads only.
	Control []string `json:"control,omitempty"`
	// ControlHandshakeTimeout bounds the TLS handshake with a control
	// plane and the wait for its welcome after the hello (default 10s).
	// Raise it, with the control plane's syncHandshakeTimeout, on slow
	// links (satellite, 2G) where a handshake takes longer.
	ControlHandshakeTimeout Duration `json:"controlHandshakeTimeout,omitempty"`
	// Scope lists the services this agent's workloads use, "namespace/name"
	// or "namespace/*" (as the hosts of an Istio Sidecar's egress): the
	// agent then receives only these, the services of its own workloads,
	// and those it learns on a miss (a DNS query for a name it does not
	// hold, a mirror destination, a caller's namespace; scope.go).
	// Empty (the default): every service.
	Scope []string `json:"scope,omitempty"`
	// MeshAddr is the mesh port listen address (default 127.0.0.1:7072).
	MeshAddr string `json:"meshAddr,omitempty"`
	// MeshAdvertise is the address peers dial (default MeshAddr; required
	// when MeshAddr's host is unspecified, e.g. 0.0.0.0 or [::]).
	MeshAdvertise string `json:"meshAdvertise,omitempty"`
	// GossipAddr, if set, runs liveness gossip with the agents of this
	// node's site on this host:port (UDP and TCP), so a dead peer is routed
	// around in under a second without the control plane. The host is the
	// address the site's peers reach this node at: not a wildcard. Off by
	// default.
	GossipAddr string `json:"gossipAddr,omitempty"`
	// DNSAddr is where mesh DNS listens, UDP and TCP (default 127.0.0.1:5353).
	DNSAddr string `json:"dnsAddr,omitempty"`
	// MeshDomain is the DNS domain of mesh names, <svc>.<ns>.<MeshDomain>
	// and <svc>.<MeshDomain> (default "mesh").
	MeshDomain string `json:"meshDomain,omitempty"`
	// ClusterDomain is the Kubernetes cluster domain: DNS also answers
	// <svc>.<ns>.svc.<ClusterDomain> for the services the agent knows
	// (default "cluster.local"; "-" turns cluster names off).
	ClusterDomain string `json:"clusterDomain,omitempty"`
	// Capture redirects connections to services' ClusterIPs into the
	// agent with nftables (off by default; see CaptureConfig).
	Capture CaptureConfig `json:"capture,omitzero"`
	// FastPath hands same-node TCP pairs to a BPF sockmap once they are
	// authorized (off by default; see FastPathConfig).
	FastPath FastPathConfig `json:"fastPath,omitzero"`
	// AdminAddr serves /healthz, /metrics and the local API (default
	// 127.0.0.1:7073).
	AdminAddr string `json:"adminAddr,omitempty"`
	// AdminAdvertise is the admin API address the node registers
	// (adminAddress: where `fogmesh check` and `fogmesh stat -agents` reach
	// it), e.g. a port forwarded through a site's NAT. Default: the bound
	// address, or MeshAdvertise's host with its port when bound to all
	// addresses. The control plane's rates come from heartbeats, not from
	// this address.
	AdminAdvertise string `json:"adminAdvertise,omitempty"`
	// VIPRange is where service virtual IPv4 addresses live on this node
	// (default 127.77.0.0/16). A service's VIP is its VIP index in this range.
	VIPRange string `json:"vipRange,omitempty"`
	// VIP6Range, if set, gives services virtual IPv6 addresses too (AAAA
	// answers and listeners). The range must be routed to this host, e.g.
	// `ip -6 route add local fd6d:6573:6800::/64 dev lo` (needs root once).
	VIP6Range string `json:"vip6Range,omitempty"`
	// StateDir holds the configuration cache and registered workloads
	// (default /var/lib/fogmesh/agent).
	StateDir string `json:"stateDir,omitempty"`
	// Upstreams resolve non-mesh names (default: /etc/resolv.conf).
	Upstreams []string `json:"upstreams,omitempty"`
	// DNSForwardRate: queries/s one client IP address may forward to the
	// upstreams, bursts of twice that; beyond, TC or REFUSED (default 1000;
	// negative: no limit). Mesh names are not limited.
	DNSForwardRate int `json:"dnsForwardRate,omitempty"`
	// Workloads are local service instances registered from the config file.
	Workloads []Workload `json:"workloads,omitempty"`
	// HealthInterval is the active health check period (default 2s).
	HealthInterval Duration `json:"healthInterval,omitempty"`
	// MaxRequests is how many L7 requests the agent proxies at once before
	// it sheds by traffic class (default 1024).
	MaxRequests int `json:"maxRequests,omitempty"`
	// MaxRequestsPerClient is how many L7 requests one client (source
	// address) may have in flight, each until its response body is done;
	// more are answered 429 (default 256; negative: no limit). It keeps
	// one client from holding the upstream connections everyone shares.
	MaxRequestsPerClient int `json:"maxRequestsPerClient,omitempty"`
	// MaxStreamsPerPeer is how many mesh streams one peer agent may have
	// open here at once, over all its paths (each holds a connection to a
	// workload; a udp flow a UDP socket and its buffers); more are
	// refused at once and the peer tries another endpoint (default 1024;
	// negative: no limit, nor on its 64 sessions). In insecure mode a
	// peer is an IP address.
	MaxStreamsPerPeer int `json:"maxStreamsPerPeer,omitempty"`
	// MeshPeerBuffer bounds, in bytes, the stream windows (MeshStreamWindow
	// each) one peer agent's mesh streams over TCP (yamux) may hold here: a
	// stream while the peer has that many being served is refused as over
	// MaxStreamsPerPeer, and a peer that leaves refused or ended streams
	// open past it loses its session (default 0: twice MaxStreamsPerPeer's
	// windows, none when that is negative; negative: refused by validate;
	// transport.NewPeerStreams).
	MeshPeerBuffer int `json:"meshPeerBuffer,omitempty"`
	// MeshMaxHandshakes(PerSource) bound the mesh port's TLS handshakes in progress, in all and from one
	// IP address (default 256, 64; negative: no bound; transport.ServerConfig): more connections are closed at once. Each
	// QUIC mesh server (punched and relayed UDP paths) has the same bounds (transport.QUICServerConfig).
	MeshMaxHandshakes          int `json:"meshMaxHandshakes,omitempty"`
	MeshMaxHandshakesPerSource int `json:"meshMaxHandshakesPerSource,omitempty"`
	// MeshPingInterval is how often the agent pings each peer agent it has
	// a mesh session with, to measure the RTT the edge-aware balancer
	// counts as distance (default 5s).
	MeshPingInterval Duration `json:"meshPingInterval,omitempty"`
	// MeshStreamWindow is the receive window of each mesh stream over TCP,
	// in bytes (default 1 MiB, 262144 to 16777216): the most one busy
	// stream buffers in this agent, and, divided by the RTT, the fastest
	// one stream can go (1 MiB: about 400 Mbit/s at 20 ms). Raise it for
	// single streams over long fat links.
	MeshStreamWindow int `json:"meshStreamWindow,omitempty"`
	// MeshDirectStreams, in insecure mode, gives each relayed TCP
	// connection to a remote endpoint, and each pooled upstream connection
	// of the HTTP proxy, a TCP connection of its own to the peer agent
	// instead of a stream of the shared yamux session, so that both agents
	// relay it socket to socket (default true; one TCP handshake per
	// connection). Secure mode always multiplexes inside mutual TLS.
	MeshDirectStreams *bool `json:"meshDirectStreams,omitempty"`
	// Relays are relay addresses (host:port; each answers reflexive UDP
	// requests on the same address), e.g. one per region. With relays the
	// agent reaches peers behind NATs: directly where the peer's address
	// answers, over a UDP path punched through both NATs (QUIC), or
	// through a relay. Needs secure mode. Empty: peers are dialed at
	// their advertised mesh address only.
	Relays []string `json:"relays,omitempty"`
	// PunchAddr is the UDP socket of punched paths (default 0.0.0.0:0,
	// any port; "off": relayed paths only).
	PunchAddr string `json:"punchAddr,omitempty"`
	// RelayUDP: a peer that cannot be punched (a symmetric NAT) is
	// reached over the relay's UDP (QUIC end to end through a relay UDP
	// channel) rather than a relayed TCP session. Off by default: slower
	// for bulk on the bench (BENCHMARKS.md §10).
	RelayUDP bool `json:"relayUDP,omitempty"`
	// PathKeepAlive is how often punched paths and relay connections are
	// refreshed to hold NAT mappings (default 20s, below the common 30s
	// UDP timeout).
	PathKeepAlive Duration `json:"pathKeepAlive,omitempty"`
	// GatewayAddr, if set, makes this agent its site's gateway: on this
	// address (host:port on the site's network) it forwards HTTP CONNECT
	// requests from the site's other agents to this agent's control
	// planes and relays, and nowhere else. For a site where only this
	// node may connect out.
	GatewayAddr string `json:"gatewayAddr,omitempty"`
	// ViaGateway is the site gateway (another agent's GatewayAddr) this
	// agent reaches its control planes and relays through. Peers in the
	// site are still dialed directly.
	ViaGateway string `json:"viaGateway,omitempty"`
	// EjectFor is how long an endpoint that refused a connection is skipped
	// (default 10s); a local one returns as soon as its check passes.
	EjectFor Duration `json:"ejectFor,omitempty"`
	// PathNormalization is how the path of every HTTP request is
	// normalised before it is routed, authorized and sent on (the same
	// path for all three): Istio's MeshConfig pathNormalization options
	// NONE, BASE (default: RFC 3986 dot segments, '\' to '/', escaped
	// unreserved characters decoded), MERGE_SLASHES (also "//" to "/") and
	// DECODE_AND_MERGE_SLASHES (also %2F and %5C decoded first). Also
	// accepted in Istio's form {normalization: NAME}. See internal/pathnorm.
	PathNormalization pathnorm.Mode `json:"pathNormalization,omitempty"`
	// Audit configures the node's audit log, kept in StateDir/audit and
	// shipped to the control plane (default: record denied authorization
	// decisions only; see AuditConfig).
	Audit AuditConfig `json:"audit,omitempty"`
	// UDP bounds the proxying of udp service ports (flows per port, queues,
	// datagram size); see UDPConfig.
	UDP UDPConfig `json:"udp,omitzero"`

	// Insecure runs the sync stream and the mesh port in plaintext, with
	// no identities: for tests and local experiments only, logged loudly.
	// By default (false) the agent holds a node certificate and uses
	// mutual TLS 1.3 for both.
	Insecure bool `json:"insecure,omitempty"`
	// JoinToken (from 'fogmesh token create --site SITE') gets the node
	// its certificate when the state directory holds no usable one. It is
	// used once; later starts use the saved certificate and renew it.
	JoinToken string `json:"joinToken,omitempty"`
	// WorkloadAPISocket is the Unix socket of the SPIFFE Workload API,
	// where attested local processes fetch their SVIDs (default
	// <StateDir>-public/workload.sock, see DefaultWorkloadAPISocket; "off"
	// disables it). The socket is mode 0666: attestation, not file
	// permissions, decides who gets what; a custom path's directory must
	// let the workloads reach it.
	WorkloadAPISocket string `json:"workloadAPISocket,omitempty"`
	// SVIDIssuer signs workload SVIDs (set by the control plane client;
	// nil: workloads get no SVIDs).
	SVIDIssuer SVIDIssuer `json:"-"`
	// Network carries the mesh port (its listener and the dials to peer
	// agents) and the links to the control plane (sync and join). nil =
	// netseam.OS{}: TCP sockets. Tests pass an in-memory network
	// (netseam/memnet). DNS, the admin API, service VIPs and workloads
	// always use real sockets: applications reach them.
	Network netseam.Network `json:"-"`
	// Tracing exports a span per L7 request and hop to an OTLP collector
	// (off by default; observe.go).
	Tracing TracingConfig `json:"tracing,omitempty"`
	// AccessLog writes a JSON line per L7 request (off by default).
	AccessLog AccessLogConfig `json:"accessLog,omitempty"`

	Logger  *slog.Logger `json:"-"` // nil = discard
	Metrics *metrics.Set `json:"-"` // nil = a private set
	// DecisionLogger receives every authorization decision on a
	// destination a policy selects. nil = the Logger: debug for allowed,
	// info for denied.
	DecisionLogger DecisionLogger `json:"-"`
}

// NodeConfig is what the agent registers about its node.
type NodeConfig struct {
	Name        string            `json:"name"`
	Site        string            `json:"site"`
	Region      string            `json:"region"`
	Zone        string            `json:"zone,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Capacity    float64           `json:"capacity,omitempty"`
	Coordinates *api.Coordinates  `json:"coordinates,omitempty"`
	Addresses   []string          `json:"addresses,omitempty"`
}

// Duration is a time.Duration written as "2s" in config files.
type Duration time.Duration

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	if v < 0 {
		return errors.New("negative duration")
	}
	*d = Duration(v)
	return nil
}

func (c *Config) validate() error {
	if err := c.Tracing.validate(); err != nil {
		return err
	}
	if err := c.AccessLog.validate(); err != nil {
		return err
	}
	n := api.Node{Meta: api.Meta{Name: c.Node.Name}, Spec: api.NodeSpec{
		Site: c.Node.Site, Region: c.Node.Region, Zone: c.Node.Zone, Capacity: c.Node.Capacity,
		Coordinates: c.Node.Coordinates, Addresses: c.Node.Addresses}}
	if err := n.Validate(); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&c.MeshAddr, "127.0.0.1:7072")
	def(&c.DNSAddr, "127.0.0.1:5353")
	def(&c.AdminAddr, "127.0.0.1:7073")
	def(&c.VIPRange, "127.77.0.0/16")
	def(&c.StateDir, "/var/lib/fogmesh/agent")
	def(&c.WorkloadAPISocket, DefaultWorkloadAPISocket(c.StateDir))
	if err := c.UDP.validate(); err != nil {
		return err
	}
	def(&c.MeshDomain, "mesh")
	def(&c.ClusterDomain, "cluster.local")
	c.MeshDomain = strings.ToLower(strings.TrimSuffix(c.MeshDomain, "."))
	c.ClusterDomain = strings.ToLower(strings.TrimSuffix(c.ClusterDomain, "."))
	if err := (meshdns.Config{Zone: c.MeshDomain, ClusterDomain: c.ClusterDomain}).Check(); err != nil {
		return fmt.Errorf("meshDomain, clusterDomain: %w", err)
	}
	if err := c.FastPath.validate(); err != nil {
		return err
	}
	if err := c.Capture.validate(); err != nil {
		return err
	}
	for i, a := range c.Control {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("control[%d]: %q: %w", i, a, err)
		}
	}
	if len(c.Scope) > maxScopeEntries {
		return fmt.Errorf("scope: %d entries, at most %d", len(c.Scope), maxScopeEntries)
	}
	for i, e := range c.Scope {
		if !validScopeEntry(e) {
			return fmt.Errorf("scope[%d]: %q is not namespace/name or namespace/*", i, e)
		}
	}
	if p, err := netip.ParsePrefix(c.VIPRange); err != nil || !p.Addr().Is4() {
		return fmt.Errorf("vipRange: %q is not an IPv4 prefix", c.VIPRange)
	}
	if c.VIP6Range != "" {
		if p, err := netip.ParsePrefix(c.VIP6Range); err != nil || !p.Addr().Is6() {
			return fmt.Errorf("vip6Range: %q is not an IPv6 prefix", c.VIP6Range)
		}
	}
	if c.MeshAdvertise == "" {
		ap, err := netip.ParseAddrPort(c.MeshAddr)
		if err != nil {
			return fmt.Errorf("meshAddr: %q: %w", c.MeshAddr, err)
		}
		if ap.Addr().IsUnspecified() {
			return fmt.Errorf("meshAdvertise: required when meshAddr %s listens on all addresses", c.MeshAddr)
		}
		c.MeshAdvertise = c.MeshAddr
	}
	if _, err := netip.ParseAddrPort(c.MeshAdvertise); err != nil {
		return fmt.Errorf("meshAdvertise: %q: %w", c.MeshAdvertise, err)
	}
	if c.AdminAdvertise != "" {
		if _, err := netip.ParseAddrPort(c.AdminAdvertise); err != nil {
			return fmt.Errorf("adminAdvertise: %q is not ip:port: %w", c.AdminAdvertise, err)
		}
	}
	for i, a := range c.Relays {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("relays[%d]: %q: %w", i, a, err)
		}
		if slices.Contains(c.Relays[:i], a) {
			return fmt.Errorf("relays[%d]: %q listed twice", i, a)
		}
	}
	if len(c.Relays) > 0 && c.Insecure {
		return errors.New("relays: need secure mode (the relay and the peers authenticate this node by its certificate)")
	}
	def(&c.PunchAddr, "0.0.0.0:0")
	for name, a := range map[string]string{"gatewayAddr": c.GatewayAddr, "viaGateway": c.ViaGateway} {
		if a == "" {
			continue
		}
		if _, err := netip.ParseAddrPort(a); err != nil {
			return fmt.Errorf("%s: %q: %w (want ip:port)", name, a, err)
		}
	}
	if c.GatewayAddr != "" && len(c.Control)+len(c.Relays) == 0 {
		return errors.New("gatewayAddr: a gateway needs control or relays to forward to")
	}
	if c.ViaGateway != "" && c.GatewayAddr != "" {
		return errors.New("viaGateway and gatewayAddr: an agent is a site's gateway or uses one, not both")
	}
	if c.PunchAddr != "off" {
		if _, err := netip.ParseAddrPort(c.PunchAddr); err != nil {
			return fmt.Errorf("punchAddr: %q: %w (want host:port, or off)", c.PunchAddr, err)
		}
	}
	if c.PathKeepAlive < 0 {
		return fmt.Errorf("pathKeepAlive: negative")
	}
	if w := c.MeshStreamWindow; w != 0 && (w < transport.MinStreamWindow || w > transport.MaxStreamWindow) {
		return fmt.Errorf("meshStreamWindow: %d bytes: want %d (256 KiB) to %d (16 MiB)", w, transport.MinStreamWindow, transport.MaxStreamWindow)
	}
	if c.MeshPeerBuffer < 0 { // a budget is lifted with the stream cap, not on its own
		return fmt.Errorf("meshPeerBuffer: %d bytes is negative (0 or unset: 2 × maxStreamsPerPeer × meshStreamWindow)", c.MeshPeerBuffer)
	}
	if c.JoinToken != "" && len(c.Control) == 0 {
		return errors.New("joinToken: needs a control plane address (control)")
	}
	if c.ControlHandshakeTimeout < 0 {
		return fmt.Errorf("controlHandshakeTimeout: %s is negative (0 or unset: 10s)", time.Duration(c.ControlHandshakeTimeout))
	}
	if c.ControlHandshakeTimeout == 0 {
		c.ControlHandshakeTimeout = Duration(10 * time.Second)
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = Duration(2 * time.Second)
	}
	if c.MaxRequests <= 0 {
		c.MaxRequests = 1024
	}
	if c.MaxRequestsPerClient == 0 {
		c.MaxRequestsPerClient = defaultMaxPerClient
	}
	if c.EjectFor <= 0 {
		c.EjectFor = Duration(10 * time.Second)
	}
	if c.PathNormalization > pathnorm.DecodeAndMergeSlashes {
		return fmt.Errorf("pathNormalization: %v is not an option", c.PathNormalization)
	}
	if err := c.Audit.validate(); err != nil {
		return err
	}
	seen := map[string]int{}
	for i := range c.Workloads {
		if err := c.Workloads[i].normalize(c.Node.Name); err != nil {
			return fmt.Errorf("workloads[%d]: %w", i, err)
		}
		// The agent keys its workloads by name: a second one of the same
		// name (in another namespace too) would silently replace the first.
		if j, dup := seen[c.Workloads[i].Name]; dup {
			return fmt.Errorf("workloads[%d]: name %q is already used by workloads[%d]; workload names are unique per node", i, c.Workloads[i].Name, j)
		}
		seen[c.Workloads[i].Name] = i
	}
	c.Network = netseam.Or(c.Network)
	if c.ViaGateway != "" { // the control planes and relays are reached through it
		c.Network = gateway.Network{Gateway: c.ViaGateway, Via: append(slices.Clone(c.Control), c.Relays...), Base: c.Network}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = metrics.NewSet()
	}
	return nil
}

// CheckConfig validates a config as New would, without binding anything.
func CheckConfig(cfg Config) error {
	cfg.Workloads = append([]Workload(nil), cfg.Workloads...)
	return cfg.validate()
}

// ConfigError is returned by New for an invalid Config.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }
