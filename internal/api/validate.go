package api

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"time"
)

// nameRE is a DNS label: what Kubernetes calls a DNS-1123 label.
var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// FieldError names the field that is wrong.
type FieldError struct {
	Field  string // e.g. "spec.ports[0].port"
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// ValidLabel reports whether s is a name fogmesh accepts: a lowercase DNS
// label of at most 63 characters.
func ValidLabel(s string) bool { return nameRE.MatchString(s) }

// ValidName reports whether s is a DNS label (what names of namespaces,
// services, sites and nodes must be).
func ValidName(s string) bool { return nameRE.MatchString(s) }

func validName(field, s string) error {
	if s == "" {
		return fieldErr(field, "required")
	}
	if !nameRE.MatchString(s) {
		return fieldErr(field, "%q is not a DNS label (lower case letters, digits and '-', at most 63)", s)
	}
	return nil
}

// validExport checks spec.export: region names, or "*" alone, no
// duplicates.
func validExport(export []string) error {
	seen := map[string]bool{}
	for i, r := range export {
		f := fmt.Sprintf("spec.export[%d]", i)
		if r == ExportAll {
			if len(export) > 1 {
				return fieldErr(f, `"*" exports to every region and must be alone`)
			}
			continue
		}
		if err := validName(f, r); err != nil {
			return err
		}
		if seen[r] {
			return fieldErr(f, "duplicate region %q", r)
		}
		seen[r] = true
	}
	return nil
}

func validPort(field string, p int) error {
	if p < 1 || p > 65535 {
		return fieldErr(field, "%d is out of range 1-65535", p)
	}
	return nil
}

// Validate checks a node and fills defaults.
func (n *Node) Validate() error {
	n.APIVersion, n.Kind = APIVersion, KindNode
	n.Meta.Namespace = ""
	if err := validName("metadata.name", n.Meta.Name); err != nil {
		return err
	}
	if err := validName("spec.site", n.Spec.Site); err != nil {
		return err
	}
	if err := validName("spec.region", n.Spec.Region); err != nil {
		return err
	}
	if n.Spec.Zone != "" {
		if err := validName("spec.zone", n.Spec.Zone); err != nil {
			return err
		}
	}
	if n.Spec.MeshAddress != "" {
		if err := validHostPort("spec.meshAddress", n.Spec.MeshAddress); err != nil {
			return err
		}
	}
	if n.Spec.GossipAddress != "" {
		if err := validHostPort("spec.gossipAddress", n.Spec.GossipAddress); err != nil {
			return err
		}
	}
	if n.Spec.AdminAddress != "" {
		if err := validHostPort("spec.adminAddress", n.Spec.AdminAddress); err != nil {
			return err
		}
	}
	for i, a := range n.Spec.Addresses {
		if _, err := netip.ParseAddr(a); err != nil {
			return fieldErr(fmt.Sprintf("spec.addresses[%d]", i), "%q is not an IP address", a)
		}
	}
	if len(n.Spec.Pods) > MaxNodePods {
		return fieldErr("spec.pods", "%d pods, at most %d", len(n.Spec.Pods), MaxNodePods)
	}
	for i, p := range n.Spec.Pods {
		f := fmt.Sprintf("spec.pods[%d]", i)
		if _, err := netip.ParseAddr(p.Address); err != nil {
			return fieldErr(f+".address", "%q is not an IP address", p.Address)
		}
		if err := validName(f+".namespace", p.Namespace); err != nil {
			return err
		}
		if err := validName(f+".serviceAccount", p.ServiceAccount); err != nil {
			return err
		}
	}
	if n.Spec.Capacity < 0 {
		return fieldErr("spec.capacity", "must not be negative")
	}
	if n.Spec.Capacity == 0 {
		n.Spec.Capacity = 1
	}
	if c := n.Spec.Coordinates; c != nil && (c.Lat < -90 || c.Lat > 90 || c.Lon < -180 || c.Lon > 180) {
		return fieldErr("spec.coordinates", "lat must be within ±90 and lon within ±180")
	}
	return nil
}

func validHostPort(field, s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fieldErr(field, "%q is not host:port: %v", s, err)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fieldErr(field, "%q: host must be an IP address", s)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return fieldErr(field, "%q: bad port", s)
	}
	return validPort(field, p)
}

// Validate checks a service and fills defaults.
func (s *Service) Validate() error {
	s.APIVersion, s.Kind = APIVersion, KindService
	s.Meta.Namespace = NamespaceOr(s.Meta.Namespace)
	if err := validName("metadata.name", s.Meta.Name); err != nil {
		return err
	}
	if err := validName("metadata.namespace", s.Meta.Namespace); err != nil {
		return err
	}
	if len(s.Spec.Ports) == 0 {
		return fieldErr("spec.ports", "at least one port is required")
	}
	seenName, seenPort := map[string]bool{}, map[int]bool{}
	for i := range s.Spec.Ports {
		p := &s.Spec.Ports[i]
		f := fmt.Sprintf("spec.ports[%d]", i)
		if p.Name == "" && len(s.Spec.Ports) == 1 {
			p.Name = "default"
		}
		if err := validName(f+".name", p.Name); err != nil {
			return err
		}
		if err := validPort(f+".port", p.Port); err != nil {
			return err
		}
		if p.Protocol == "" {
			p.Protocol = "tcp"
		}
		if !Protocols[p.Protocol] {
			return fieldErr(f+".protocol", "%q is not one of tcp, http, http2, grpc, mqtt, auto, udp", p.Protocol)
		}
		if seenName[p.Name] {
			return fieldErr(f+".name", "duplicate port name %q", p.Name)
		}
		if seenPort[p.Port] {
			return fieldErr(f+".port", "duplicate port %d", p.Port)
		}
		seenName[p.Name], seenPort[p.Port] = true, true
	}
	if err := s.validateClusterIPs(); err != nil {
		return err
	}
	if err := s.validateUDPOnly(); err != nil {
		return err
	}
	if err := validExport(s.Spec.Export); err != nil {
		return err
	}
	switch s.Spec.Balancer {
	case "":
		s.Spec.Balancer = "edge-aware"
	case "edge-aware", "round-robin", "least-conn", "random", "consistent-hash", "maglev":
	default:
		return fieldErr("spec.balancer", "%q is not one of edge-aware, round-robin, least-conn, random, consistent-hash, maglev", s.Spec.Balancer)
	}
	if s.Spec.Timeouts.Connect < 0 {
		return fieldErr("spec.timeouts.connect", "must not be negative")
	}
	if s.Spec.Timeouts.Request < 0 {
		return fieldErr("spec.timeouts.request", "must not be negative")
	}
	if s.Spec.Timeouts.RequestBody < 0 {
		return fieldErr("spec.timeouts.requestBody", "must not be negative")
	}
	if s.Spec.Timeouts.Send < 0 {
		return fieldErr("spec.timeouts.send", "must not be negative")
	}
	if s.Spec.Timeouts.Idle < 0 {
		return fieldErr("spec.timeouts.idle", "must not be negative")
	}
	if err := s.Spec.Retries.validate("spec.retries"); err != nil {
		return err
	}
	if s.Spec.MinHealthyShare < 0 || s.Spec.MinHealthyShare > 1 {
		return fieldErr("spec.minHealthyShare", "%g is not within 0 and 1", s.Spec.MinHealthyShare)
	}
	switch s.Spec.Locality {
	case "", LocalityTiers, LocalityNone:
	default:
		return fieldErr("spec.locality", "%q is not one of tiers, none", s.Spec.Locality)
	}
	if err := s.Spec.OutlierDetection.validate("spec.outlierDetection"); err != nil {
		return err
	}
	if err := s.Spec.CircuitBreaker.validate("spec.circuitBreaker"); err != nil {
		return err
	}
	classes := map[string]bool{}
	for i, c := range s.Spec.Classes {
		f := fmt.Sprintf("spec.classes[%d]", i)
		if err := validName(f+".name", c.Name); err != nil {
			return err
		}
		if classes[c.Name] {
			return fieldErr(f+".name", "duplicate class %q", c.Name)
		}
		classes[c.Name] = true
		if c.Timeout < 0 {
			return fieldErr(f+".timeout", "must not be negative")
		}
		if err := c.Retries.validate(f + ".retries"); err != nil {
			return err
		}
	}
	if s.Spec.DefaultClass != "" && !classes[s.Spec.DefaultClass] {
		return fieldErr("spec.defaultClass", "%q is not one of spec.classes", s.Spec.DefaultClass)
	}
	if (s.Spec.Balancer == "consistent-hash" || s.Spec.Balancer == "maglev") && s.Spec.HashKey == nil {
		s.Spec.HashKey = &HashKey{SourceIP: true}
		for _, p := range s.Spec.Ports {
			if p.Protocol == "mqtt" || p.Protocol == "auto" {
				s.Spec.HashKey.MQTTClientID = true // an MQTT session by its client id, as without a hashKey
			}
		}
	}
	if sa := s.Spec.Session; sa != nil {
		if sa.Header == "" && sa.Cookie == "" {
			return fieldErr("spec.session", "one of header or cookie is required")
		}
		switch sa.Policy {
		case "":
			sa.Policy = "stay"
		case "stay", "nearest":
		default:
			return fieldErr("spec.session.policy", "%q is not stay or nearest", sa.Policy)
		}
	}
	if s.Spec.CircuitBreaker.MaxRequests < 0 {
		return fieldErr("spec.circuitBreaker.maxRequests", "must not be negative")
	}
	if id := s.Spec.Identity; id != nil {
		for i, sa := range id.ServiceAccounts {
			if err := validName(fmt.Sprintf("spec.identity.serviceAccounts[%d]", i), sa); err != nil {
				return err
			}
		}
		for i, site := range id.Sites {
			if err := validName(fmt.Sprintf("spec.identity.sites[%d]", i), site); err != nil {
				return err
			}
		}
	}
	return validateEgress(s.Spec.Egress)
}

// Validate checks an endpoint and fills defaults.
func (e *Endpoint) Validate() error {
	e.APIVersion, e.Kind = APIVersion, KindEndpoint
	e.Meta.Namespace = NamespaceOr(e.Meta.Namespace)
	if err := validName("metadata.name", e.Meta.Name); err != nil {
		return err
	}
	if err := validName("metadata.namespace", e.Meta.Namespace); err != nil {
		return err
	}
	if err := validName("spec.service", e.Spec.Service); err != nil {
		return err
	}
	if e.Spec.Node != "" {
		if err := validName("spec.node", e.Spec.Node); err != nil {
			return err
		}
	}
	a, err := netip.ParseAddr(e.Spec.Address)
	if err != nil {
		return fieldErr("spec.address", "%q is not an IP address", e.Spec.Address)
	}
	if a.Zone() != "" {
		return fieldErr("spec.address", "%q: zoned addresses are not supported", e.Spec.Address)
	}
	if len(e.Spec.Ports) == 0 {
		return fieldErr("spec.ports", "at least one port is required")
	}
	for i := range e.Spec.Ports {
		p := &e.Spec.Ports[i]
		f := fmt.Sprintf("spec.ports[%d]", i)
		if p.Name == "" && len(e.Spec.Ports) == 1 {
			p.Name = "default"
		}
		if err := validName(f+".name", p.Name); err != nil {
			return err
		}
		if err := validPort(f+".port", p.Port); err != nil {
			return err
		}
	}
	for _, f := range []struct{ name, v string }{{"spec.site", e.Spec.Site}, {"spec.region", e.Spec.Region}, {"spec.hostname", e.Spec.Hostname}} {
		if f.v != "" {
			if err := validName(f.name, f.v); err != nil {
				return err
			}
		}
	}
	if e.Spec.Weight < 0 {
		return fieldErr("spec.weight", "must not be negative")
	}
	if e.Spec.Weight == 0 {
		e.Spec.Weight = 1
	}
	if e.Spec.ServiceAccount == "" {
		e.Spec.ServiceAccount = e.Spec.Service
	}
	return validName("spec.serviceAccount", e.Spec.ServiceAccount)
}

func (od *OutlierDetection) validate(f string) error {
	for _, c := range []struct {
		name string
		v    int
	}{{"consecutiveErrors", od.ConsecutiveErrors}, {"consecutiveGatewayErrors", od.ConsecutiveGatewayErrors},
		{"consecutiveLocalOriginFailures", od.ConsecutiveLocalOriginFailures}} {
		if c.v < -1 {
			return fieldErr(f+"."+c.name, "%d is not -1 (off), 0 (default) or a count", c.v)
		}
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{{"interval", od.Interval}, {"baseEjectionTime", od.BaseEjectionTime}, {"maxEjectionTime", od.MaxEjectionTime}} {
		if d.v < 0 {
			return fieldErr(f+"."+d.name, "must not be negative")
		}
		if d.v > 0 && time.Duration(d.v) < time.Millisecond {
			return fieldErr(f+"."+d.name, "%v is below 1ms", time.Duration(d.v))
		}
	}
	if od.MaxEjectionTime > 0 && od.BaseEjectionTime > od.MaxEjectionTime {
		return fieldErr(f+".maxEjectionTime", "%v is below baseEjectionTime %v", time.Duration(od.MaxEjectionTime), time.Duration(od.BaseEjectionTime))
	}
	if od.MaxEjectedPercent < 0 || od.MaxEjectedPercent > 100 {
		return fieldErr(f+".maxEjectedPercent", "%d is not within 0 and 100", od.MaxEjectedPercent)
	}
	if od.MinHealthPercent < 0 || od.MinHealthPercent > 100 {
		return fieldErr(f+".minHealthPercent", "%d is not within 0 and 100", od.MinHealthPercent)
	}
	switch od.ConnectFailure {
	case "", ConnectFailureEject, ConnectFailureCount:
	default:
		return fieldErr(f+".connectFailure", "%q is not %s or %s", od.ConnectFailure, ConnectFailureEject, ConnectFailureCount)
	}
	return nil
}

func (cb *CircuitBreaker) validate(f string) error {
	if cb.MaxConnections < 0 {
		return fieldErr(f+".maxConnections", "must not be negative")
	}
	if cb.MaxRequests < 0 {
		return fieldErr(f+".maxRequests", "must not be negative")
	}
	if cb.MaxPendingRequests < 0 {
		return fieldErr(f+".maxPendingRequests", "must not be negative")
	}
	switch cb.PendingFor {
	case "", PendingForRequests, PendingForConnections:
	default:
		return fieldErr(f+".pendingFor", "%q is not %s or %s", cb.PendingFor, PendingForRequests, PendingForConnections)
	}
	if cb.MaxRequestsPerConnection < 0 {
		return fieldErr(f+".maxRequestsPerConnection", "must not be negative")
	}
	if cb.ConnectTimeout < 0 {
		return fieldErr(f+".connectTimeout", "must not be negative")
	}
	if ka := cb.TCPKeepalive; ka != nil && (ka.Time < 0 || ka.Interval < 0 || ka.Probes < 0) {
		return fieldErr(f+".tcpKeepalive", "must not be negative")
	}
	if cb.IdleTimeout < 0 {
		return fieldErr(f+".idleTimeout", "must not be negative")
	}
	return nil
}

// validateClusterIPs checks spec.clusterIP and spec.clusterIPs as the
// Kubernetes API server does: IP literals or "None", at most one per
// address family, clusterIP first in clusterIPs when both are set.
func (s *Service) validateClusterIPs() error {
	ips := s.Spec.ClusterIPs
	if s.Spec.ClusterIP != "" && len(ips) > 0 && ips[0] != s.Spec.ClusterIP {
		return fieldErr("spec.clusterIP", "%q is not spec.clusterIPs[0] (%q)", s.Spec.ClusterIP, ips[0])
	}
	if len(ips) == 0 && s.Spec.ClusterIP != "" {
		ips = []string{s.Spec.ClusterIP}
	}
	if len(ips) > 2 {
		return fieldErr("spec.clusterIPs", "%d addresses, at most one IPv4 and one IPv6", len(ips))
	}
	var v4, v6 int
	for i, c := range ips {
		if c == ClusterIPNone {
			if len(ips) > 1 {
				return fieldErr("spec.clusterIPs", "%q must be the only entry", ClusterIPNone)
			}
			continue
		}
		a, err := netip.ParseAddr(c)
		// Loopback is allowed: one machine's tests and benchmarks capture
		// a ClusterIP without sending a packet anywhere if capture is off.
		if err != nil || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
			return fieldErr(fmt.Sprintf("spec.clusterIPs[%d]", i), "%q is not a unicast IP address", c)
		}
		if a.Unmap().Is4() {
			v4++
		} else {
			v6++
		}
	}
	if v4 > 1 || v6 > 1 {
		return fieldErr("spec.clusterIPs", "two addresses of one family")
	}
	return nil
}
