// What a subscription selects (types and scope) and which heartbeat loads
// the control plane believes: pure rules the control end applies.

package syncproto

import (
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// AllTypes are the resource types a subscribe without Types gets.
var AllTypes = []string{wire.ResourceNode, wire.ResourceService, wire.ResourceEndpoint, wire.ResourceRoute, wire.ResourcePolicy, wire.ResourceSession, wire.ResourceAuthorizationPolicy}

// Filter is a subscription's types and scope.
type Filter struct {
	types  map[string]bool
	region string
	// services and namespaces are the scope's "ns/name" and "ns/*"
	// entries; scoped is set when the scope named any.
	services   map[string]bool
	namespaces map[string]bool
	scoped     bool
}

// MaxScopeServices bounds the entries of a subscribe's scope that are
// taken; the rest are ignored (the subscriber gets less, never more).
const MaxScopeServices = 10000

// NewFilter returns the filter of a subscribe frame: its Types (all when
// empty; unknown ones are ignored) and its Scope. Scope entries that are
// not "namespace/name" or "namespace/*" are ignored.
func NewFilter(sub *wire.Message) Filter {
	f := Filter{types: map[string]bool{}}
	types := sub.Types
	if len(types) == 0 {
		types = AllTypes
	}
	for _, t := range types {
		if slices.Contains(AllTypes, t) {
			f.types[t] = true
		}
	}
	if sub.Scope != nil {
		f.region = sub.Scope.Region
		f.add(sub.Scope.Services)
	}
	return f
}

// ScopeEntry tells whether k is a scope entry: "namespace/name" or
// "namespace/*" (neither part empty, no second '/').
func ScopeEntry(k string) bool {
	ns, name, ok := strings.Cut(k, "/")
	return ok && ns != "" && name != "" && !strings.Contains(name, "/")
}

// add takes the valid entries of keys until the scope holds
// MaxScopeServices entries, and returns those it did not hold before.
func (f *Filter) add(keys []string) (added []string) {
	for i, k := range keys {
		if i == MaxScopeServices || len(f.services)+len(f.namespaces) >= MaxScopeServices {
			break
		}
		if !ScopeEntry(k) {
			continue
		}
		ns, name, _ := strings.Cut(k, "/")
		f.scoped = true
		if name == "*" {
			if f.namespaces == nil {
				f.namespaces = map[string]bool{}
			}
			if !f.namespaces[ns] {
				f.namespaces[ns] = true
				added = append(added, k)
			}
			continue
		}
		if f.services == nil {
			f.services = map[string]bool{}
		}
		if !f.services[k] {
			f.services[k] = true
			added = append(added, k)
		}
	}
	return added
}

// Widen returns the filter with the valid entries of a later subscribe's
// scope added (FeatureScopeAdd) and the entries that are new to it. A
// filter without scope selects every service already: it stays as it is
// and nothing is new. The receiver is not changed (its maps are copied),
// so a copy held elsewhere stays consistent.
func (f Filter) Widen(keys []string) (Filter, []string) {
	if !f.scoped {
		return f, nil
	}
	w := f
	w.services, w.namespaces = maps.Clone(f.services), maps.Clone(f.namespaces)
	added := w.add(keys)
	return w, added
}

// Covers tells whether entry (a scope entry) is selected by the filter:
// "ns/name" when that service or its namespace is in scope, "ns/*" when
// the namespace is.
func (f Filter) Covers(entry string) bool {
	if !f.scoped {
		return true
	}
	ns, name, _ := strings.Cut(entry, "/")
	if name == "*" {
		return f.namespaces[ns]
	}
	return f.InScope(entry)
}

// All tells whether the filter selects every object (every type, no
// region, no services): such subscribers can share one snapshot whole.
func (f Filter) All() bool {
	if f.scoped || f.region != "" {
		return false
	}
	for _, t := range AllTypes {
		if !f.types[t] {
			return false
		}
	}
	return true
}

// ScopeEntries returns the scope's services ("ns/name") and namespaces
// (of "ns/*"), so a sender can index its subscribers by them.
func (f Filter) ScopeEntries() (services, namespaces []string) {
	for s := range f.services {
		services = append(services, s)
	}
	for n := range f.namespaces {
		namespaces = append(namespaces, n)
	}
	return services, namespaces
}

// Wants tells whether the subscriber gets resources of kind.
func (f Filter) Wants(kind string) bool { return f.types[kind] }

// Scoped tells whether the subscription names services: then nodes are
// sent only as NodeRefs says (the subscriber's own and those hosting an
// endpoint in scope), which the driver tracks per stream.
func (f Filter) Scoped() bool { return f.scoped }

// InScope tells whether the service "ns/name" is in the subscription's
// scope.
func (f Filter) InScope(svc string) bool {
	if !f.scoped {
		return true
	}
	if f.services[svc] {
		return true
	}
	ns, _, _ := strings.Cut(svc, "/")
	return f.namespaces[ns]
}

// ServiceOf returns the "ns/name" of the service o is or belongs to
// (endpoints, routes, destination policies, sessions); ok is false for
// kinds that belong to no one service (nodes, authorization policies).
func ServiceOf(o api.Object) (svc string, ok bool) {
	switch v := o.(type) {
	case *api.Service:
		return v.Meta.Key(), true
	case *api.Endpoint:
		return api.NamespaceOr(v.Meta.Namespace) + "/" + v.Spec.Service, true
	case *api.Route:
		return api.NamespaceOr(v.Meta.Namespace) + "/" + v.Spec.Service, true
	case *api.DestinationPolicy:
		return api.NamespaceOr(v.Meta.Namespace) + "/" + v.Spec.Service, true
	case *api.Session:
		return api.NamespaceOr(v.Meta.Namespace) + "/" + v.Spec.Service, true
	}
	return "", false
}

// Match tells whether the subscriber gets o. For a scoped subscription a
// node matches by type and region only: whether it is sent depends on the
// endpoints in scope (NodeRefs).
func (f Filter) Match(o api.Object) bool {
	if !f.types[o.GetKind()] {
		return false
	}
	if f.scoped {
		if svc, ok := ServiceOf(o); ok && !f.InScope(svc) {
			return false
		}
	}
	if f.region == "" {
		return true
	}
	switch v := o.(type) {
	case *api.Node:
		return v.Spec.Region == f.region
	case *api.Endpoint:
		// Agent-owned endpoints carry no region; a regional subscriber gets
		// them together with their node. TODO: resolve the node's region
		// here once regional control planes exist (issue 3 only defines the
		// scope field so the protocol does not change then).
		return v.Spec.Region == "" || v.Spec.Region == f.region
	}
	return true
}

// NodeRefs is a scoped stream's bookkeeping of which nodes its subscriber
// needs: its own, and each node that hosts an endpoint in scope. The
// driver reports every in-scope endpoint it sends or removes; a node is
// sent when its first endpoint enters the scope and removed when its last
// one leaves.
type NodeRefs struct {
	self   string
	epNode map[string]string // endpoint "ns/name" -> its node, for endpoints in scope on a node
	count  map[string]int    // node -> endpoints in scope on it
}

// NewNodeRefs returns the bookkeeping of a subscriber whose own node is
// self.
func NewNodeRefs(self string) *NodeRefs {
	return &NodeRefs{self: self, epNode: map[string]string{}, count: map[string]int{}}
}

// Endpoint records that the endpoint key is now on node ("" when it is
// gone, out of scope or on no node). entered is a node the subscriber
// needs from now on, left one it no longer needs ("" for none).
func (n *NodeRefs) Endpoint(key, node string) (entered, left string) {
	old, had := n.epNode[key]
	if had && old == node {
		return "", ""
	}
	if had {
		delete(n.epNode, key)
		if n.count[old]--; n.count[old] <= 0 {
			delete(n.count, old)
			if old != n.self {
				left = old
			}
		}
	}
	if node != "" {
		n.epNode[key] = node
		if n.count[node]++; n.count[node] == 1 && node != n.self {
			entered = node
		}
	}
	return entered, left
}

// Wants tells whether the subscriber needs node.
func (n *NodeRefs) Wants(node string) bool { return node == n.self || n.count[node] > 0 }

// Nodes returns every node the subscriber needs, its own first.
func (n *NodeRefs) Nodes() []string {
	out := []string{n.self}
	for node := range n.count {
		if node != n.self {
			out = append(out, node)
		}
	}
	return out
}

// maxLoadEntries bounds what one heartbeat may report.
const maxLoadEntries = 10000

// ValidLoads drops entries a buggy or hostile agent could use to skew the
// balancers of others: non-finite or negative values, over-long keys, and
// anything past maxLoadEntries.
func ValidLoads(in map[string]float64) map[string]float64 {
	if len(in) == 0 {
		return nil
	}
	out := make(map[string]float64, min(len(in), maxLoadEntries))
	for k, v := range in {
		if len(out) == maxLoadEntries {
			break
		}
		if len(k) > 512 || v <= 0 || math.IsInf(v, 0) || math.IsNaN(v) || v > 1e9 {
			continue
		}
		out[k] = v
	}
	return out
}

// ValidPaths keeps the path reports a control plane may store: at most
// wire.MaxPathReports, of a known kind, with names and addresses of sane
// length and a finite RTT; the rest of a hostile or broken report is
// dropped.
func ValidPaths(in []wire.PathReport) []wire.PathReport {
	var out []wire.PathReport
	for _, p := range in {
		if len(out) == wire.MaxPathReports {
			break
		}
		switch p.Kind {
		case "direct", "punched", "relayed":
		default:
			continue
		}
		switch p.Carrier {
		case "", "tcp", "quic":
		default:
			continue
		}
		if !printable(p.Peer) || !printable(p.Relay) || !printable(p.Remote) {
			continue // no control characters into an operator's terminal
		}
		if p.Peer == "" || len(p.Peer) > 253 || len(p.Relay) > 300 || len(p.Remote) > 300 ||
			p.RTTMillis < 0 || math.IsInf(p.RTTMillis, 0) || math.IsNaN(p.RTTMillis) || p.RTTMillis > 1e7 {
			continue
		}
		out = append(out, p)
	}
	return out
}

// ValidVIPBindFailures keeps the bind failures a control plane may store:
// at most wire.MaxVIPBindFailures, with an address that parses as
// ip:port, and printable service and error text of sane length.
func ValidVIPBindFailures(in []api.VIPBindFailure) []api.VIPBindFailure {
	var out []api.VIPBindFailure
	for _, f := range in {
		if len(out) == wire.MaxVIPBindFailures {
			break
		}
		if _, err := netip.ParseAddrPort(f.Address); err != nil {
			continue
		}
		if !printable(f.Service) || !printable(f.Error) || len(f.Service) > 253 || len(f.Error) > 300 {
			continue
		}
		out = append(out, f)
	}
	return out
}

// printable reports whether s has no control characters.
func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}

// ValidStats keeps the golden counters a control plane may hold: at most
// wire.MaxStatRows rows with printable names of sane length and a known
// tier and path kind; latency buckets only with ascending, finite, positive
// bounds (at most wire.MaxStatBounds) and one count per bucket. A row that
// breaks a rule is dropped (counted in Dropped), bad buckets alone are
// dropped from their row. Nil for nil.
func ValidStats(in *wire.StatsReport) *wire.StatsReport {
	if in == nil {
		return nil
	}
	out := &wire.StatsReport{At: in.At, Full: in.Full, Dropped: in.Dropped, DroppedRequests: in.DroppedRequests}
	if in.At < 0 {
		out.At = 0
	}
	bounds := in.Bounds
	if len(bounds) > wire.MaxStatBounds {
		bounds = nil
	}
	for i, b := range bounds {
		if !(b > 0) || math.IsInf(b, 0) || (i > 0 && b <= bounds[i-1]) {
			bounds = nil
			break
		}
	}
	out.Bounds = slices.Clone(bounds)
	for _, r := range in.Rows {
		if len(out.Rows) == wire.MaxStatRows {
			out.Dropped++
			continue
		}
		if !statName(r.Service, 512) || r.Service == "" || !statName(r.Node, 253) || r.Node == "" ||
			!statName(r.Site, 253) || !statName(r.SourceService, 512) {
			out.Dropped++
			continue
		}
		switch r.Tier {
		case "", "node", "site", "region", "any":
		default:
			out.Dropped++
			continue
		}
		switch r.Path {
		case "", "same_node", "same_site", "same_region", "cross_region", "relayed":
		default:
			out.Dropped++
			continue
		}
		if len(r.Buckets) != len(out.Bounds)+1 || len(out.Bounds) == 0 {
			r.Buckets = nil
		} else {
			r.Buckets = slices.Clone(r.Buckets)
		}
		out.Rows = append(out.Rows, r)
	}
	return out
}

// statName reports whether s is printable and at most n bytes long.
func statName(s string, n int) bool { return len(s) <= n && printable(s) }
