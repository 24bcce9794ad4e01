// Package api defines fogmesh's resource types (Node, Service, Endpoint), their
// validation, and the document format users write for `fogmesh apply`.
//
// The shape follows Kubernetes habits: apiVersion, kind, metadata, spec, status.
// JSON is the canonical encoding; YAML is accepted as an adapter (see Decode).
package api

// Over 500 lines: the resource types users write (Node, Service, Endpoint and their specs); one file is their reference.

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// APIVersion is the apiVersion of every fogmesh document.
const APIVersion = "fogmesh.io/v1alpha1"

// Resource kinds.
const (
	KindNode     = "Node"
	KindService  = "Service"
	KindEndpoint = "Endpoint"
)

// DefaultNamespace is used when a document names none, and is the namespace
// served under the short DNS form `<service>.mesh`.
const DefaultNamespace = "default"

// Protocols a service port may declare.
var Protocols = map[string]bool{"tcp": true, "http": true, "http2": true, "grpc": true, "mqtt": true, "auto": true, "udp": true}

// Meta is the metadata every resource carries.
type Meta struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace,omitempty"` // services and endpoints; "" means "default"
	Labels    map[string]string `json:"labels,omitempty"`
	// Version is the store revision at which the object last changed. Set by
	// the control plane; ignored on apply.
	Version uint64 `json:"version,omitempty"`
	// Owner is the control plane that owns the object: a region's name for
	// what a regional control plane registered or took in, empty for the
	// global control plane (and for a control plane that runs alone). Only
	// the owner changes the object; the others hold replicas (see
	// docs/regions.md). Set by the control plane; ignored on apply.
	Owner string `json:"owner,omitempty"`
}

// Node is one machine running an agent.
type Node struct {
	APIVersion string     `json:"apiVersion,omitempty"`
	Kind       string     `json:"kind,omitempty"`
	Meta       Meta       `json:"metadata"`
	Spec       NodeSpec   `json:"spec"`
	Status     NodeStatus `json:"status,omitempty"`
}

// NodeSpec is what an agent registers about its node.
type NodeSpec struct {
	Site   string `json:"site"`
	Region string `json:"region"`
	Zone   string `json:"zone,omitempty"`
	// MeshAddress is host:port of the agent's mesh port, where peers open
	// streams to this node's workloads. IPv4 or IPv6.
	MeshAddress string `json:"meshAddress"`
	// GossipAddress is host:port of the agent's gossip member, which the
	// agents of the same site join to learn of each other's death fast.
	GossipAddress string `json:"gossipAddress,omitempty"`
	// AdminAddress is host:port of the agent's local API (plain HTTP:
	// /metrics, /v1/status), as the agent bound it, so `fogmesh check`,
	// `fogmesh top` and the control plane's web UI can find its metrics.
	// Reachable only where the operator exposes it (default loopback).
	AdminAddress string `json:"adminAddress,omitempty"`
	// Addresses are the node's own IP addresses (informational today).
	Addresses []string `json:"addresses,omitempty"`
	// Capacity is a relative capacity weight (default 1).
	Capacity    float64      `json:"capacity,omitempty"`
	Coordinates *Coordinates `json:"coordinates,omitempty"`
	// Pods are the pods a cluster source (-kube) runs on this node, with
	// their addresses and service accounts: the node's agent knows a
	// client connection from such an address as that account's identity,
	// and peers accept that claim from this node only. Set by the control
	// plane from the cluster, never taken from an agent's registration;
	// at most MaxNodePods.
	Pods []PodIdentity `json:"pods,omitempty"`
}

// MaxNodePods bounds NodeSpec.Pods (Kubernetes runs at most 110 pods a
// node by default).
const MaxNodePods = 1024

// PodIdentity is a pod's address and service account.
type PodIdentity struct {
	Address        string `json:"address"`
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
}

// Coordinates place a node on the map (degrees).
type Coordinates struct {
	Lat float64 `json:"lat"`
	Lon float64 `json:"lon"`
}

// NodeStatus is kept by the control plane.
type NodeStatus struct {
	Ready         bool      `json:"ready"`
	LastHeartbeat time.Time `json:"lastHeartbeat,omitzero"`
	// Load is the agent's last reported load (open proxied connections).
	Load float64 `json:"load,omitempty"`
	// AckedVersion is the last configuration version the agent acknowledged.
	AckedVersion uint64 `json:"ackedVersion,omitempty"`
	Connected    bool   `json:"connected"`
	// Unreachable: the control plane has had no heartbeat from the node
	// for its node timeout, but has not withdrawn it: Ready stays true and
	// agents keep its endpoints (see control's expiry.go for the rule).
	Unreachable bool `json:"unreachable,omitempty"`
	// UnreachableSince is its last sign of life when marked unreachable.
	UnreachableSince time.Time `json:"unreachableSince,omitzero"`
	// VIPBindFailures are the virtual IP addresses and ports the node's
	// agent cannot bind (another process holds them), from its last
	// heartbeat: clients there reach that process, not the mesh. The
	// agent retries with backoff; DNS there does not hand the address out.
	VIPBindFailures []VIPBindFailure `json:"vipBindFailures,omitempty"`
}

// VIPBindFailure is a virtual IP and port an agent cannot listen on.
type VIPBindFailure struct {
	Address string    `json:"address"` // VIP:port
	Service string    `json:"service"` // namespace/name
	Error   string    `json:"error"`   // the last bind error
	Since   time.Time `json:"since"`   // the first failure
}

// Service is a named set of endpoints reachable through a virtual IP.
type Service struct {
	APIVersion string        `json:"apiVersion,omitempty"`
	Kind       string        `json:"kind,omitempty"`
	Meta       Meta          `json:"metadata"`
	Spec       ServiceSpec   `json:"spec"`
	Status     ServiceStatus `json:"status,omitempty"`
}

// ServiceSpec declares the service's ports.
type ServiceSpec struct {
	Ports []ServicePort `json:"ports"`
	// Balancer within a locality tier: "edge-aware" (default: weight
	// capacity/load·e^(−λ·distance), then power of two choices over peak-EWMA
	// latency), "round-robin", "least-conn", "random", or by HashKey:
	// "consistent-hash" (rendezvous hashing) or "maglev" (a Maglev lookup
	// table of 65537 entries).
	Balancer string `json:"balancer,omitempty"`
	// MinHealthyShare moves traffic to the next locality tier when the
	// healthy share of a tier's capacity falls below it (0-1; default 0:
	// only when no endpoint of the tier is healthy).
	MinHealthyShare float64 `json:"minHealthyShare,omitempty"`
	// Locality: "tiers" (default) prefers the nearest locality tier (node >
	// site > region > any); "none" balances over every healthy endpoint
	// as one tier, as Istio does without outlier detection.
	Locality string `json:"locality,omitempty"`
	// Timeouts bound connecting to an endpoint and, on http/http2/grpc
	// ports, a whole request (time to response headers) and the wait for
	// its body.
	Timeouts Timeouts `json:"timeouts,omitzero"`
	// Retries apply to http/http2/grpc ports. A failed connect is always
	// tried on the next endpoint; other failures only for idempotent
	// requests without a body.
	Retries RetryPolicy `json:"retries,omitzero"`
	// Outlier ejection: see OutlierDetection.
	OutlierDetection OutlierDetection `json:"outlierDetection,omitzero"`
	// CircuitBreaker limits what this agent sends to the service.
	CircuitBreaker CircuitBreaker `json:"circuitBreaker,omitzero"`
	// Classes are traffic classes (e.g. 5G slices urllc, embb, mmtc). A
	// request's class comes from its route rule, else its x-fogmesh-class
	// header, else DefaultClass. It selects timeout, retries and priority:
	// when the agent is overloaded it sheds the lowest priorities first.
	Classes      []TrafficClass `json:"classes,omitempty"`
	DefaultClass string         `json:"defaultClass,omitempty"`
	// HashKey is what the consistent-hash and maglev balancers hash.
	HashKey *HashKey `json:"hashKey,omitempty"`
	// MQTTInspect keeps parsing an mqtt port's client packets after CONNECT
	// (instead of splicing) to count PUBLISH and SUBSCRIBE per topic.
	MQTTInspect bool `json:"mqttInspect,omitempty"`
	// Session pins sessions to instances (http/http2/grpc ports).
	Session *SessionAffinity `json:"session,omitempty"`
	// Identity limits the workload identities the service's endpoints may
	// have, and where agents may register them.
	Identity *ServiceIdentity `json:"identity,omitempty"`
	// Egress masks personal data in requests to endpoints at other sites
	// or regions (http/http2/grpc ports): see EgressRule.
	Egress []EgressRule `json:"egress,omitempty"`
	// Export names the other regions whose agents see the service and its
	// endpoints, or ["*"] for every region. Empty (default): the service is
	// local to the region that owns it. A service the global control plane
	// owns is seen in every region whatever Export says; Export then only
	// decides which regions get the endpoints other regions register for it.
	Export []string `json:"export,omitempty"`
	// ClusterIPs are the service's Kubernetes ClusterIPs, at most one
	// IPv4 and one IPv6 address, as a Kubernetes Service's
	// spec.clusterIPs (the Kubernetes registry sets them; "None", a
	// headless service, is the same as none). An agent that captures
	// traffic (root and nftables, see README "Transparent capture")
	// redirects connections to ClusterIP:port, for each TCP port of
	// Ports, into itself and proxies them as if made to the service's
	// virtual IP. ClusterIP is accepted as in Kubernetes: it must be
	// ClusterIPs[0] when both are set. Use ClusterAddrs to read them.
	ClusterIP  string   `json:"clusterIP,omitempty"`
	ClusterIPs []string `json:"clusterIPs,omitempty"`
}

// ClusterAddrs returns the service's ClusterIPs (ClusterIP and
// ClusterIPs merged, headless "None" dropped), as validated.
func (s *Service) ClusterAddrs() []netip.Addr {
	var out []netip.Addr
	for _, c := range append([]string{s.Spec.ClusterIP}, s.Spec.ClusterIPs...) {
		if a, err := netip.ParseAddr(c); err == nil && !slices.Contains(out, a.Unmap()) {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// ClusterIPNone is the ClusterIP of a headless Kubernetes Service.
const ClusterIPNone = "None"

// ExportAll in ServiceSpec.Export exports a service to every region.
const ExportAll = "*"

// ExportedTo reports whether the service's endpoints owned by one region are
// seen in region.
func (s *Service) ExportedTo(region string) bool {
	return slices.Contains(s.Spec.Export, ExportAll) || slices.Contains(s.Spec.Export, region)
}

// ServiceIdentity says which workload identities (service accounts) a
// service's endpoints may run as and on which sites agents may register
// them. The control plane refuses an agent's endpoint outside it, signs
// SVIDs only within it, and agents accept a source identity only within it:
// a node cannot make up an identity by registering a workload.
type ServiceIdentity struct {
	// ServiceAccounts the endpoints may have (default: only the service's
	// own name).
	ServiceAccounts []string `json:"serviceAccounts,omitempty"`
	// Sites where agents may register endpoints of the service (default:
	// any site).
	Sites []string `json:"sites,omitempty"`
}

// AllowsAccount reports whether the service's endpoints may run as sa.
func (s *Service) AllowsAccount(sa string) bool {
	if s.Spec.Identity == nil || len(s.Spec.Identity.ServiceAccounts) == 0 {
		return sa == s.Meta.Name
	}
	return slices.Contains(s.Spec.Identity.ServiceAccounts, sa)
}

// AllowsSite reports whether agents on site may register endpoints of the
// service.
func (s *Service) AllowsSite(site string) bool {
	return s.Spec.Identity == nil || len(s.Spec.Identity.Sites) == 0 || slices.Contains(s.Spec.Identity.Sites, site)
}

// HashKey: the first of these the request has (an L4 connection only has
// its source address). Without one the request is balanced edge-aware.
type HashKey struct {
	Header   string `json:"header,omitempty"`
	Cookie   string `json:"cookie,omitempty"`
	SourceIP bool   `json:"sourceIP,omitempty"`
	// MQTTClientID hashes the client id of an mqtt port's CONNECT packet,
	// so a client's session stays on one broker. An mqtt port pins by
	// client id (rendezvous hashing, or maglev with that balancer) unless
	// the hash key sets sourceIP without mqttClientID. Without a hashKey,
	// consistent-hash and maglev default to {sourceIP: true}, plus
	// mqttClientID: true when the service has an mqtt or auto port.
	MQTTClientID bool `json:"mqttClientID,omitempty"`
}

// Locality values (ServiceSpec.Locality, DestinationPolicySpec.Locality).
const (
	LocalityTiers = "tiers"
	LocalityNone  = "none"
)

// maglevTableSize is the size of the maglev balancer's lookup table (a
// prime, Maglev's and Envoy's default).
const maglevTableSize = 65537

// TrafficClass is one class of requests.
type TrafficClass struct {
	Name string `json:"name"`
	// Priority: higher is more important. Under overload, a class ranked k
	// below the top (by distinct priority) may use only (1 − 0.2·k) of the
	// agent's request capacity, so the top class always has headroom.
	Priority int          `json:"priority,omitempty"`
	Timeout  Duration     `json:"timeout,omitempty"`
	Retries  *RetryPolicy `json:"retries,omitempty"`
}

// OutlierDetection ejects an endpoint after consecutive errors, with
// Envoy's semantics (see internal/outlier): independent counters, an
// ejection time of BaseEjectionTime × a multiplier that grows by one per
// ejection and decays by one per Interval the endpoint stays back, capped
// at MaxEjectionTime. By default a failed connect also takes the endpoint
// out at once for the agent's ejectFor (ConnectFailure), as failing over
// quickly is the point at the edge. An Istio DestinationRule without
// outlierDetection becomes {consecutiveErrors: -1, connectFailure: count}:
// nothing is ever ejected for errors, as in Istio.
type OutlierDetection struct {
	// ConsecutiveErrors: 5xx responses in a row before ejection, a failed
	// connect, reset or timeout counting as one unless
	// SplitExternalLocalOriginErrors (default 5; -1 turns it off; Istio's
	// consecutive5xxErrors).
	ConsecutiveErrors int `json:"consecutiveErrors,omitempty"`
	// ConsecutiveGatewayErrors: 502, 503, 504 (and failed connects,
	// resets, timeouts unless split) in a row before ejection, counted
	// apart from ConsecutiveErrors (default 0: off; Istio's
	// consecutiveGatewayErrors).
	ConsecutiveGatewayErrors int `json:"consecutiveGatewayErrors,omitempty"`
	// GatewayErrorsOnly is the older form of ConsecutiveGatewayErrors:
	// ConsecutiveErrors then counts only gateway errors.
	GatewayErrorsOnly bool `json:"gatewayErrorsOnly,omitempty"`
	// SplitExternalLocalOriginErrors counts failed connects, resets and
	// timeouts in ConsecutiveLocalOriginFailures instead of as 503/504.
	SplitExternalLocalOriginErrors bool `json:"splitExternalLocalOriginErrors,omitempty"`
	// ConsecutiveLocalOriginFailures before ejection, with
	// SplitExternalLocalOriginErrors (default 5; -1 turns it off).
	ConsecutiveLocalOriginFailures int `json:"consecutiveLocalOriginFailures,omitempty"`
	// Interval between un-ejection checks; each one the endpoint is back
	// at decrements its multiplier (default 10s).
	Interval Duration `json:"interval,omitempty"`
	// BaseEjectionTime is multiplied by the endpoint's multiplier (default
	// 10s).
	BaseEjectionTime Duration `json:"baseEjectionTime,omitempty"`
	// MaxEjectionTime caps an ejection (default 10 × BaseEjectionTime;
	// Envoy's max_ejection_time).
	MaxEjectionTime Duration `json:"maxEjectionTime,omitempty"`
	// MaxEjectedPercent caps the share of endpoints ejected for errors at
	// once (default 50; at least one endpoint may always be ejected;
	// Istio's maxEjectionPercent).
	MaxEjectedPercent int `json:"maxEjectedPercent,omitempty"`
	// MinHealthPercent: when fewer than this share of the endpoints are
	// not ejected, ejections are ignored and every endpoint is used
	// (default 0: off; Istio's minHealthPercent).
	MinHealthPercent int `json:"minHealthPercent,omitempty"`
	// ConnectFailure is what a failed connect does besides counting as an
	// error: "eject" (default) skips the endpoint for the agent's ejectFor
	// at once (a local one until its check passes), "count" only counts it
	// (Envoy's and Istio's semantics; a local endpoint's check is run at
	// once).
	ConnectFailure string `json:"connectFailure,omitempty"`
}

// Values of OutlierDetection.ConnectFailure.
const (
	ConnectFailureEject = "eject"
	ConnectFailureCount = "count"
)

// CircuitBreaker limits, per agent, and the upstream connection pool's
// settings (Istio's connectionPool). Zero means no limit (or the default).
// The limits follow Envoy's circuit breakers
// (envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/circuit_breaking):
// on an http port (HTTP/1.1 upstream) a request occupies a connection for
// its whole exchange, so MaxConnections also bounds the requests in flight
// and the rest wait as pending requests; on http2/grpc ports requests are
// multiplexed over one connection per endpoint and only MaxRequests bounds
// them.
type CircuitBreaker struct {
	// MaxConnections open to the service: relayed connections on L4
	// ports; on http ports, upstream connections in use, hence requests
	// in flight (Envoy's max_connections: "in practice only applicable
	// to HTTP/1.1"). Idle pooled connections may add one per endpoint.
	MaxConnections int `json:"maxConnections,omitempty"`
	// MaxRequests in flight to the service (http/http2/grpc ports); more
	// wait in the pending queue, or are answered 503 at once when it is
	// full.
	MaxRequests int `json:"maxRequests,omitempty"`
	// MaxPendingRequests may wait for one of the slots MaxRequests or (on
	// http ports) MaxConnections allow, first come first served, each at
	// most its request timeout (Istio's http1MaxPendingRequests, Envoy's
	// max_pending_requests: "requests are added to the list of pending
	// requests whenever there aren't enough upstream connections
	// available"). Default 0: none wait; beyond it: 503 at once.
	MaxPendingRequests int `json:"maxPendingRequests,omitempty"`
	// PendingFor is what pending requests wait for: "requests" (default:
	// a slot as above) or "connections" (Envoy's semantics, which Istio
	// documents get): they wait only for an upstream connection
	// (MaxConnections, http ports), MaxPendingRequests 0 means no bound,
	// and a request over MaxRequests is refused at once, never queued.
	PendingFor string `json:"pendingFor,omitempty"`
	// MaxRequestsPerConnection closes an upstream HTTP/1.1 connection
	// after it carried this many requests, and an HTTP/2 one (http2 and
	// grpc ports) after this many streams (1: no reuse).
	MaxRequestsPerConnection int `json:"maxRequestsPerConnection,omitempty"`
	// ConnectTimeout overrides timeouts.connect.
	ConnectTimeout Duration `json:"connectTimeout,omitempty"`
	// TCPKeepalive of the connections this agent opens to the service's
	// workloads on its node (Istio's tcpKeepalive).
	TCPKeepalive *TCPKeepalive `json:"tcpKeepalive,omitempty"`
	// IdleTimeout closes pooled upstream connections (http/http2/grpc
	// ports) idle this long; unlike timeouts.idle it leaves client
	// connections and L4 relays alone.
	IdleTimeout Duration `json:"idleTimeout,omitempty"`
}

// TCPKeepalive turns TCP keepalive probes on; a zero field keeps the
// operating system's setting (Linux: 7200 s, 75 s, 9 probes).
type TCPKeepalive struct {
	Time     Duration `json:"time,omitempty"`     // idle before the first probe
	Interval Duration `json:"interval,omitempty"` // between probes
	Probes   int      `json:"probes,omitempty"`   // unanswered before the connection is dropped
}

// PendingFor values of CircuitBreaker.
const (
	PendingForRequests    = "requests"
	PendingForConnections = "connections"
)

// Timeouts of a service. Zero means the default.
type Timeouts struct {
	Connect Duration `json:"connect,omitempty"` // default 3s
	// Request bounds a request on http/http2/grpc ports from its header
	// to the response header, reading the request body included
	// (default none).
	Request Duration `json:"request,omitempty"`
	// RequestBody bounds each wait for the next bytes of a request body
	// until the response header arrives; a client that sends none for
	// this long gets 408 (default 60s, as nginx's client_body_timeout).
	// Raise it for client-streaming gRPC calls that pause longer.
	RequestBody Duration `json:"requestBody,omitempty"`
	// Send bounds each wait to write response bytes to a client on
	// http/http2/grpc ports: a client that reads nothing for this long is
	// cut off (default 60s, as nginx's send_timeout).
	Send Duration `json:"send,omitempty"`
	// Idle closes a connection that moved no byte for this long: on L4
	// ports (tcp, mqtt, auto-detected tcp) the relayed connection, both
	// sides; on http/http2/grpc ports the pooled upstream connections and
	// the client's keep-alive connection between requests (an HTTP/2
	// connection only when no stream is open); on udp ports a flow that
	// carried no datagram either way. Default none on L4, 90s on L7, 60s
	// on udp.
	Idle Duration `json:"idle,omitempty"`
}

// RetryPolicy of a service, a traffic class or a route rule.
type RetryPolicy struct {
	// Attempts is how many retries may follow the first attempt (0: the
	// default, 2; -1: none; at most 5). Retries also need tokens from the
	// destination service's retry budget (20% of its requests, plus a
	// reserve of 10), so a failing service cannot multiply its load, nor
	// spend another service's retries.
	Attempts int `json:"attempts,omitempty"`
	// On lists the outcomes retried, comma-separated: Envoy's retry
	// conditions (RetryConditions) and HTTP status codes, which imply
	// retriable-status-codes, as in Istio's retryOn. Default
	// "connect-failure,refused-stream,reset": no response.
	On string `json:"on,omitempty"`
	// On5xx adds gateway-error to On: 502, 503 or 504.
	On5xx bool `json:"on5xx,omitempty"`
	// Methods retried once a request may have reached an endpoint:
	// "idempotent" (the default: GET, HEAD, OPTIONS, TRACE, PUT, DELETE)
	// or "any" (as Envoy and Istio do). A failed connect or a refused
	// HTTP/2 stream reached no endpoint: any method is retried then.
	Methods string `json:"methods,omitempty"`
	// PerTryTimeout bounds each attempt's wait for response headers
	// (0: none; the request timeout still bounds them all). An attempt
	// that runs out is retried when On has 5xx, gateway-error or reset,
	// else answered 504.
	PerTryTimeout Duration `json:"perTryTimeout,omitempty"`
}

// RetryMethodsAny and RetryMethodsIdempotent are RetryPolicy.Methods values.
const (
	RetryMethodsAny        = "any"
	RetryMethodsIdempotent = "idempotent"
)

// RetryConditions are the condition names RetryPolicy.On accepts: the
// retryOn values Istio accepts (Envoy's x-envoy-retry-on and
// x-envoy-retry-grpc-on). internal/retry gives them their meaning.
var RetryConditions = []string{
	"5xx", "gateway-error", "reset", "connect-failure", "envoy-ratelimited",
	"retriable-4xx", "refused-stream", "retriable-status-codes",
	"retriable-headers", "http3-post-connect-failure",
	"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}

// validRetryOn checks a comma-separated list of retry conditions and
// status codes; f names it in errors.
func validRetryOn(f, on string) error {
	for _, tok := range strings.Split(on, ",") {
		tok = strings.TrimSpace(tok)
		if tok == "" || slices.Contains(RetryConditions, tok) {
			continue
		}
		if n, err := strconv.Atoi(tok); err == nil {
			if n < 100 || n > 599 {
				return fieldErr(f, "status code %d is not within 100 and 599", n)
			}
			continue
		}
		return fieldErr(f, "%q is not a retry condition (want one of %s, or a status code)", tok, strings.Join(RetryConditions, ", "))
	}
	return nil
}

// validate checks the policy's fields; f names it in errors.
func (p *RetryPolicy) validate(f string) error {
	if p == nil {
		return nil
	}
	if p.Attempts < -1 || p.Attempts > 5 {
		return fieldErr(f+".attempts", "%d is not within -1 and 5", p.Attempts)
	}
	if err := validRetryOn(f+".on", p.On); err != nil {
		return err
	}
	switch p.Methods {
	case "", RetryMethodsAny, RetryMethodsIdempotent:
	default:
		return fieldErr(f+".methods", "%q is not %q or %q", p.Methods, RetryMethodsIdempotent, RetryMethodsAny)
	}
	if p.PerTryTimeout < 0 {
		return fieldErr(f+".perTryTimeout", "must not be negative")
	}
	if p.PerTryTimeout > 0 && p.PerTryTimeout < Duration(time.Millisecond) {
		return fieldErr(f+".perTryTimeout", "%v is below 1ms", time.Duration(p.PerTryTimeout))
	}
	return nil
}

// Duration is a time.Duration written as "250ms" or "3s".
type Duration time.Duration

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// ServicePort is one port of a service.
type ServicePort struct {
	Name string `json:"name"`
	Port int    `json:"port"` // port on the virtual IP, 1-65535
	// Protocol: tcp (default), http, http2, grpc, mqtt, or auto: the agent
	// reads the client's first bytes (up to 500 ms) and picks http, http2,
	// mqtt or tcp. Not for protocols where the server speaks first. udp:
	// the agent proxies UDP datagrams per flow (client address and port),
	// each flow closed after timeouts.idle without a datagram (default
	// 60s); see the README, "UDP services".
	Protocol string `json:"protocol,omitempty"`
}

// ServiceStatus holds what the control plane allocated.
type ServiceStatus struct {
	// VIPIndex is the service's offset in every agent's virtual IP range
	// (1-based). An agent maps it into its own range, so agents that share a
	// machine (the dev demo) do not collide, while separate machines with the
	// default range all see the same address.
	VIPIndex uint32 `json:"vipIndex,omitempty"`
	// VIP is VIPIndex mapped into the control plane's default range.
	VIP string `json:"vip,omitempty"`
}

// Endpoint is one instance of a service.
type Endpoint struct {
	APIVersion string         `json:"apiVersion,omitempty"`
	Kind       string         `json:"kind,omitempty"`
	Meta       Meta           `json:"metadata"`
	Spec       EndpointSpec   `json:"spec"`
	Status     EndpointStatus `json:"status,omitempty"`
}

// EndpointSpec says where an instance listens.
type EndpointSpec struct {
	Service string `json:"service"`
	// Node is the node whose agent reaches the instance. Empty for a static
	// endpoint that every agent dials directly.
	Node string `json:"node,omitempty"`
	// Address is the instance's IP (v4 or v6) as seen from its node.
	Address string `json:"address"`
	// Ports maps service port names to the instance's ports.
	Ports []EndpointPort `json:"ports"`
	// Site and Region place a static endpoint (Node empty) in a locality tier.
	Site   string `json:"site,omitempty"`
	Region string `json:"region,omitempty"`
	// Weight is a relative weight (default 1).
	Weight float64 `json:"weight,omitempty"`
	// ServiceAccount names the instance's workload identity:
	// spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccount> (default:
	// the service name).
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// Hostname, for an instance of a headless service, is its own DNS
	// name below the service's (<hostname>.<svc>.<ns>.svc.<cluster
	// domain>), as a Kubernetes EndpointSlice endpoint's hostname.
	Hostname string `json:"hostname,omitempty"`
}

// EndpointPort maps a service port name to an instance port.
type EndpointPort struct {
	Name string `json:"name"`
	Port int    `json:"port"`
}

// EndpointStatus is the health as last reported by the endpoint's agent.
type EndpointStatus struct {
	// Healthy is false once the owning agent's checks fail. Static endpoints
	// are healthy unless agents see failures themselves.
	Healthy bool `json:"healthy"`
}

// Key returns "namespace/name".
func (m Meta) Key() string { return NamespaceOr(m.Namespace) + "/" + m.Name }

// NamespaceOr returns ns, or DefaultNamespace if ns is empty.
func NamespaceOr(ns string) string {
	if ns == "" {
		return DefaultNamespace
	}
	return ns
}

// PortByName returns the service port called name.
func (s *Service) PortByName(name string) (ServicePort, bool) {
	for _, p := range s.Spec.Ports {
		if p.Name == name {
			return p, true
		}
	}
	return ServicePort{}, false
}

// Port returns the endpoint's port for the service port called name.
func (e *Endpoint) Port(name string) (int, bool) {
	for _, p := range e.Spec.Ports {
		if p.Name == name {
			return p.Port, true
		}
	}
	return 0, false
}

// AddrPort returns the endpoint's address and port for service port name.
func (e *Endpoint) AddrPort(name string) (netip.AddrPort, error) {
	p, ok := e.Port(name)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("endpoint %s: no port %q", e.Meta.Key(), name)
	}
	a, err := netip.ParseAddr(e.Spec.Address)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("endpoint %s: address: %w", e.Meta.Key(), err)
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(p)), nil
}

// VIPFor maps a service's VIP index into prefix (IPv4 or IPv6).
func VIPFor(prefix netip.Prefix, index uint32) netip.Addr {
	b := prefix.Masked().Addr().AsSlice()
	for i := len(b) - 1; i >= 0 && index > 0; i-- {
		sum := uint32(b[i]) + index&0xff
		b[i] = byte(sum)
		index = index>>8 + sum>>8
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (d Duration) String() string { return time.Duration(d).String() }
