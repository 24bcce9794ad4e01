// What a subscription selects (types and scope) and which heartbeat loads
// the control plane believes: pure rules the control end applies.

package syncproto

import (
	"math"
	"slices"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// AllTypes are the resource types a subscribe without Types gets.
var AllTypes = []string{wire.ResourceNode, wire.ResourceService, wire.ResourceEndpoint, wire.ResourceRoute, wire.ResourcePolicy, wire.ResourceSession, wire.ResourceAuthorizationPolicy}

// Filter is a subscription's types and scope.
type Filter struct {
	types  map[string]bool
	region string
}

// NewFilter returns the filter of a subscribe frame: its Types (all when
// empty; unknown ones are ignored) and its Scope.
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
	}
	return f
}

// Wants tells whether the subscriber gets resources of kind.
func (f Filter) Wants(kind string) bool { return f.types[kind] }

// Match tells whether the subscriber gets o.
func (f Filter) Match(o api.Object) bool {
	if !f.types[o.GetKind()] {
		return false
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

// printable reports whether s has no control characters.
func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}
