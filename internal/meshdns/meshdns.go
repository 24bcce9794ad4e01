// Package meshdns is the node agent's DNS server. It exists so that
// unmodified workloads can find mesh services by name: the agent gives every
// service a virtual IP on the node, and this server maps service names in the
// mesh zone to those addresses (A, AAAA) and ports (SRV), while passing every
// other name on to the node's ordinary resolvers.
//
// # Names
//
// Names are case-insensitive. With the default zone "mesh":
//
//	<svc>.<ns>.mesh                 A, AAAA, SRV (one SRV per port)
//	<svc>.mesh                      same, in Config.DefaultNamespace
//	_<port>._tcp.<svc>.<ns>.mesh    SRV for the port named <port>
//	_<port>._tcp.<svc>.mesh         same, in Config.DefaultNamespace
//
// Beside the mesh zone, the server answers Kubernetes cluster names of the
// services it knows, under Config.ClusterDomain (default "cluster.local"):
//
//	<svc>.<ns>.svc.cluster.local              A, AAAA, SRV
//	_<port>._tcp.<svc>.<ns>.svc.cluster.local SRV for the port named <port>
//	<host>.<svc>.<ns>.svc.cluster.local       A, AAAA of a headless service's instance
//
// A headless service (Record.Headless) has no virtual IP: its names answer
// with the addresses of its ready instances, one A or AAAA record each,
// and an instance with a hostname also has a name of its own
// (<host>.<svc>.<ns>.svc.<cluster domain>, <host>.<svc>.<ns>.<zone>). Its
// SRV records, per port, target each named instance, and the service's
// own name for the instances without a hostname.
//
// The short forms <svc>.<ns> and <svc>.<ns>.svc are the stub resolver's
// work: a workload's resolv.conf searches "<ns>.svc.cluster.local
// svc.cluster.local cluster.local" (as kubelet writes it), which expands
// them to the long form. The server is not authoritative for the cluster
// domain: a name there that is not a service it knows (another service,
// a pod name, a malformed name) is forwarded upstream, where the cluster's
// own DNS may know it.
//
// Every port is TCP on the wire (tcp, http, http2, grpc and mqtt all are), so
// only "_tcp" names exist. SRV targets are always the long form
// <svc>.<ns>.<zone>, and the SRV answer carries the target's A and AAAA
// records in the additional section.
//
// A name the Resolver knows but which has no record of the asked type (an
// AAAA query for a service without an IPv6 address, an MX query, an A query
// for an SRV name) gets NODATA: NOERROR, no answer, the zone's SOA in the
// authority section. A name the Resolver does not know gets NXDOMAIN (a
// Resolver that is a Fetcher is asked first and may fetch it, or answer
// SERVFAIL when it cannot tell in time). The
// zone apex answers SOA queries with a synthetic SOA and every other type
// with NODATA; the server does not publish NS records, as it is never
// delegated to. All answers from the zone are authoritative (AA set).
//
// Because the Resolver can only say whether one service exists, a name that
// is merely a namespace ("demo.mesh") gets NXDOMAIN even when services exist
// below it, which RFC 8020 forbids. Stub resolvers querying the agent
// directly don't care; a caching resolver with aggressive NXDOMAIN cuts in
// front of it would.
//
// # Forwarding
//
// Names outside the zone are forwarded unchanged to the upstream resolvers
// in order (UDP, then TCP if the answer was truncated), and the first usable
// answer is relayed. If no upstream answers, or none is configured, the
// client gets SERVFAIL.
//
// Each client (source IP address: a pod's own, not its node's IPv6 /64) may have
// Config.ForwardRate queries per second forwarded, in bursts of twice as
// many; a query beyond is answered
// at once (over UDP empty with TC set, so that a spoofed flood cannot deny
// a client names it then asks over TCP, which has a budget of its own;
// over TCP REFUSED) and counted (result="ratelimited"), so that one
// workload flooding names outside the zone neither takes the forwarding
// capacity of the others nor hammers the upstreams. Names the server
// answers itself are never limited. At most maxForwardClients clients are
// tracked (ratelimit.go). Within its rate, one client may have at most a
// quarter of the forwards in flight (maxForwards/8 over UDP and as many
// over TCP): a flood of names a slow upstream takes seconds to answer
// leaves the rest to the others.
package meshdns

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"

	"github.com/VictoriaMetrics/metrics"
	"github.com/miekg/dns"
)

// Port is one service port.
type Port struct {
	Name     string // port name, matched by _<Name>._tcp SRV queries; case-insensitive
	Protocol string // tcp, http, http2, grpc or mqtt; all are TCP on the wire
	Port     int    // 1..65535
}

// Record is what the agent knows of one service.
type Record struct {
	V4    netip.Addr // virtual IPv4 address on this node; zero means no A record
	V6    netip.Addr // virtual IPv6 address on this node; zero means no AAAA record
	Ports []Port
	// Unavailable, when set, says why this node cannot serve the service's
	// virtual IP now (another process holds an address and port of it):
	// the server answers SERVFAIL with this text as an extended DNS error
	// (RFC 8914) instead of an address whose connections would reach that
	// process.
	Unavailable string
	// Headless marks a service without a virtual IP (a headless
	// Kubernetes Service): its names answer with the addresses of
	// Endpoints instead of V4 and V6, which are ignored.
	Headless bool
	// Endpoints are a headless service's ready instances.
	Endpoints []Endpoint
}

// Endpoint is one ready instance of a headless service.
type Endpoint struct {
	Addr netip.Addr
	// Hostname, when set, also names the instance alone:
	// <Hostname>.<svc>.<ns>.svc.<cluster domain> and
	// <Hostname>.<svc>.<ns>.<zone>. Lowercase [a-z0-9-]; others are ignored.
	Hostname string
}

// Resolver is the agent's view of the mesh's services.
//
// Implementations must be safe for concurrent use and must not block: the
// server calls LookupService once per query, on the query's goroutine.
type Resolver interface {
	// LookupService returns the record for service name in namespace, with
	// ok=false if the service is unknown. Both arguments are lowercase DNS
	// labels ([a-z0-9-]). The server does not modify the returned Record.
	LookupService(namespace, name string) (rec Record, ok bool)
}

// Fetcher is an optional interface of a Resolver that holds only part of
// the mesh's services (a scoped agent). When LookupService does not know a
// name, the server calls FetchService, which may ask for the service and
// wait for it, at most until ctx ends. ok=false with a nil error means the
// service does not exist (NXDOMAIN); an error means the Resolver could not
// tell (SERVFAIL, which resolvers retry and do not cache as a negative
// answer).
type Fetcher interface {
	FetchService(ctx context.Context, namespace, name string) (rec Record, ok bool, err error)
}

// Config configures a Server. The zero value serves zone "mesh" on
// 127.0.0.1:53 and forwards other names to the resolvers in /etc/resolv.conf.
type Config struct {
	// Addr is the host:port both the UDP and the TCP socket listen on.
	// Port 0 picks a free port, the same for UDP and TCP.
	// Default "127.0.0.1:53".
	Addr string

	// Zone is the domain the server is authoritative for, the mesh
	// domain. Default "mesh".
	Zone string

	// ClusterDomain is the Kubernetes cluster domain whose service names
	// (<svc>.<ns>.svc.<ClusterDomain>) the server answers for the services
	// it knows. Default "cluster.local"; "-" answers no cluster names.
	ClusterDomain string

	// TTL is the time to live, in seconds, of every record the server
	// synthesises, and the negative-caching TTL of its SOA. Default 5.
	TTL uint32

	// Upstreams are the host:port addresses of the resolvers that names
	// outside Zone are forwarded to, tried in order. Nil means the
	// nameservers in /etc/resolv.conf; an empty non-nil slice means no
	// forwarding: such names get SERVFAIL.
	Upstreams []string

	// DefaultNamespace is the namespace of short names (<svc>.<zone>).
	// Default "default".
	DefaultNamespace string

	// ForwardRate is how many queries per second one client (source IP
	// address) may have forwarded upstream, in bursts of up to twice as
	// many; a query beyond is answered at once, over UDP empty with TC
	// set, over TCP REFUSED. Names the server
	// answers itself are not limited. Default 1000; negative: no limit.
	ForwardRate int

	// Logger receives the server's few log lines. Nil discards them.
	Logger *slog.Logger

	// Metrics is where the server registers its counters (see metrics.go).
	// Nil means a private set.
	Metrics *metrics.Set
}

// Defaults for Config fields and the server's fixed limits.
const (
	defaultAddr    = "127.0.0.1:53"
	defaultZone    = "mesh"
	defaultCluster = "cluster.local"
	// NoClusterDomain as Config.ClusterDomain turns cluster names off.
	NoClusterDomain  = "-"
	defaultTTL       = 5
	defaultNamespace = "default"
	// defaultForwardRate is Config.ForwardRate's default, in queries per
	// second per client; the burst is twice the rate (ratelimit.go).
	defaultForwardRate = 1000
	resolvConfPath     = "/etc/resolv.conf"
)

// Check reports whether c would be accepted by New, without binding or
// reading anything (for a caller's config check).
func (c Config) Check() error {
	if c.Addr == "" {
		c.Addr = defaultAddr
	}
	return c.validate()
}

// validate checks c and fills in defaults. It does not read resolv.conf.
func (c *Config) validate() error {
	if c.Addr == "" {
		c.Addr = defaultAddr
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("addr %q: %w", c.Addr, err)
	}
	if c.Zone == "" {
		c.Zone = defaultZone
	}
	c.Zone = strings.ToLower(dns.Fqdn(c.Zone))
	if c.Zone == "." {
		return fmt.Errorf("zone %q: the root cannot be the mesh zone", c.Zone)
	}
	if _, ok := dns.IsDomainName(c.Zone); !ok || strings.Contains(c.Zone, `\`) {
		return fmt.Errorf("zone %q: not a plain domain name", c.Zone)
	}
	switch c.ClusterDomain {
	case NoClusterDomain:
		c.ClusterDomain = ""
	case "":
		c.ClusterDomain = defaultCluster
		fallthrough
	default:
		c.ClusterDomain = strings.ToLower(dns.Fqdn(c.ClusterDomain))
		if _, ok := dns.IsDomainName(c.ClusterDomain); !ok || c.ClusterDomain == "." || strings.Contains(c.ClusterDomain, `\`) {
			return fmt.Errorf("cluster domain %q: not a plain domain name", c.ClusterDomain)
		}
		if dns.IsSubDomain(c.Zone, c.ClusterDomain) || dns.IsSubDomain(c.ClusterDomain, c.Zone) {
			return fmt.Errorf("cluster domain %q and mesh zone %q: one contains the other", c.ClusterDomain, c.Zone)
		}
	}
	if c.TTL == 0 {
		c.TTL = defaultTTL
	}
	if c.DefaultNamespace == "" {
		c.DefaultNamespace = defaultNamespace
	}
	if c.ForwardRate == 0 {
		c.ForwardRate = defaultForwardRate
	}
	c.DefaultNamespace = strings.ToLower(c.DefaultNamespace)
	if !isLabel(c.DefaultNamespace) {
		return fmt.Errorf("default namespace %q: not a DNS label of [a-z0-9-]", c.DefaultNamespace)
	}
	for _, u := range c.Upstreams {
		if _, _, err := net.SplitHostPort(u); err != nil {
			return fmt.Errorf("upstream %q: %w", u, err)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = metrics.NewSet()
	}
	return nil
}

// systemUpstreams returns the nameservers of the resolv.conf at path as
// host:port addresses.
func systemUpstreams(path string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	ups := make([]string, 0, len(cc.Servers))
	for _, s := range cc.Servers {
		ups = append(ups, net.JoinHostPort(s, cc.Port))
	}
	return ups, nil
}
