package control

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/store"
)

// An agent registers its node's endpoints (its workloads) as one list,
// which only the 32 MiB frame bounded; each is stored and sent to every
// agent that holds its service. So a node may register at most
// Config.MaxEndpointsPerNode endpoints. Past it the control plane keeps
// the node's endpoints already stored, then the others in key order, up to
// the bound; refuses the rest, answering the agent (which logs it) with
// ErrTooManyEndpoints; and counts them in
// fogmesh_control_endpoints_refused_total. The agent's list as the
// control plane keeps it is thus stable from one resend to the next: a new
// workload past the bound does not displace a registered one.

// DefaultMaxEndpointsPerNode is Config.MaxEndpointsPerNode's default.
const DefaultMaxEndpointsPerNode = 1024

// ErrTooManyEndpoints is the error of an endpoint list over the bound.
var ErrTooManyEndpoints = fmt.Errorf("too many endpoints for one node")

// maxEndpoints is r's bound on one node's endpoints.
func (r *registry) maxEndpoints() int {
	if r.maxPerNode > 0 {
		return r.maxPerNode
	}
	return DefaultMaxEndpointsPerNode
}

// capLocked returns eps within the bound (a new slice when it cuts) and the
// keys it left out, sorted. Duplicate keys count once.
func (r *registry) capLocked(tx *store.Tx, node string, eps []api.Endpoint) ([]api.Endpoint, []string) {
	limit := r.maxEndpoints()
	keys := make([]string, len(eps))
	distinct := make(map[string]bool, len(eps))
	for i := range eps {
		keys[i] = api.ObjectKey(&eps[i])
		distinct[keys[i]] = true
	}
	if len(distinct) <= limit {
		return eps, nil
	}
	stored := map[string]bool{}
	for _, k := range r.nodeEndpointsLocked(tx, node) {
		stored[k] = true
	}
	order := make([]int, len(eps))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		ka, kb := keys[a], keys[b]
		return cmp.Or(storedFirst(stored[ka], stored[kb]), strings.Compare(ka, kb))
	})
	kept := make(map[string]bool, limit)
	out := make([]api.Endpoint, 0, limit)
	var left []string
	for _, i := range order {
		k := keys[i]
		if !kept[k] {
			if len(kept) == limit {
				if len(left) == 0 || left[len(left)-1] != k {
					left = append(left, k)
				}
				continue
			}
			kept[k] = true
		}
		out = append(out, eps[i])
	}
	return out, left
}

// storedFirst orders the stored (true) before the new.
func storedFirst(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return -1
	}
	return 1
}

// tooMany is the error an agent gets for the endpoints left out.
func (r *registry) tooMany(node string, registered int, left []string) error {
	r.mEndpointsRefusedAdd(len(left))
	first := left
	if len(first) > 3 {
		first = first[:3]
	}
	more := ""
	if len(left) > len(first) {
		more = fmt.Sprintf(" and %d more", len(left)-len(first))
	}
	return fmt.Errorf("%w: node %s registers %d, the bound is %d (control plane maxEndpointsPerNode); refused %d: %s%s",
		ErrTooManyEndpoints, node, registered, r.maxEndpoints(), len(left), strings.Join(first, ", "), more)
}

func (r *registry) mEndpointsRefusedAdd(n int) {
	if r.mEndpointsRefused != nil {
		r.mEndpointsRefused.Add(n)
	}
}
