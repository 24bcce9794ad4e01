// Package balance decides which endpoint a connection or request goes to:
// the locality tier (Pick), the order within a tier (a Balancer), and
// pinning by a key (Rendezvous, Maglev). It is pure: no I/O, no
// goroutines, randomness and time come in as arguments, so every decision
// can be replayed in a test. The agent adapts its view of an endpoint to
// Endpoint and its measurements to Stats.
package balance

import "math/rand/v2"

// Endpoint is one endpoint as balancing sees it. The agent builds one per
// endpoint per pick; methods must be cheap and safe for concurrent reads.
type Endpoint interface {
	// Key is unique and stable (namespace/name): hashing and per-set
	// state use it.
	Key() string
	// Tier is the locality tier, 0 the nearest. A service balanced
	// without locality (Istio's default without outlier detection) gives
	// every endpoint the same tier.
	Tier() int
	// Capacity is the endpoint's share of work (> 0): its node's capacity
	// × its weight.
	Capacity() float64
	// Distance is to the endpoint's node in units of 100 km.
	Distance() float64
	// InFlight is the requests (L4: connections) the endpoint serves as
	// far as the caller knows.
	InFlight() float64
	// Latency is the peak-EWMA latency in seconds (0: not measured yet).
	Latency() float64
}

// Balancer orders the endpoints of one tier: eps[0] is the choice, the
// rest are failover candidates in preference order. set names the
// endpoint set (service and subset) for balancers that keep state per
// set. Implementations must be safe for concurrent use.
type Balancer interface {
	Name() string
	Order(set string, eps []Endpoint)
}

// Rand is the randomness balancers draw from. *rand.Rand of math/rand/v2
// fits (tests seed one; it is not safe for concurrent use), as does
// SharedRand.
type Rand interface {
	Float64() float64
	IntN(n int) int
}

// SharedRand draws from math/rand/v2's goroutine-safe top-level source.
type SharedRand struct{}

func (SharedRand) Float64() float64 { return rand.Float64() }
func (SharedRand) IntN(n int) int   { return rand.IntN(n) }

// Policy is how one service's endpoints are picked.
type Policy struct {
	Balancer Balancer
	// MinHealthyShare: a tier whose usable capacity is below this share
	// of its capacity (0-1) goes after every other tier (last resort).
	// 0: a tier is used while any endpoint of it is usable.
	MinHealthyShare float64
}

// Pick returns the usable endpoints of eps (one service's, or one subset's,
// endpoints that serve the port) in the order to try them: the nearest
// tier whose usable share of capacity is at least MinHealthyShare first,
// ordered by the balancer, then the other tiers nearest first as failover
// candidates, then the tiers below their share. Within a tier eps keeps
// its order before the balancer's, so round robin rotates over a stable
// list. eps is not modified.
func Pick(p Policy, set string, eps []Endpoint, usable func(Endpoint) bool) []Endpoint {
	type tierSet struct {
		eps            []Endpoint
		total, healthy float64
	}
	tiers := make([]tierSet, 0, 4)
	for _, e := range eps {
		t := max(e.Tier(), 0)
		for len(tiers) <= t {
			tiers = append(tiers, tierSet{})
		}
		ts := &tiers[t]
		ts.total += e.Capacity()
		if !usable(e) {
			continue
		}
		ts.healthy += e.Capacity()
		ts.eps = append(ts.eps, e)
	}
	out := make([]Endpoint, 0, len(eps))
	var weak []Endpoint
	for i := range tiers {
		ts := &tiers[i]
		if len(ts.eps) == 0 {
			continue
		}
		if len(ts.eps) > 1 && p.Balancer != nil {
			p.Balancer.Order(set, ts.eps)
		}
		if p.MinHealthyShare > 0 && ts.healthy < p.MinHealthyShare*ts.total {
			weak = append(weak, ts.eps...) // below its share: last resort only
			continue
		}
		out = append(out, ts.eps...)
	}
	return append(out, weak...)
}

// runs calls f on each run of equal tier in eps, as Pick ordered them, so
// tiers Pick moved to the end (below their healthy share) stay there.
func runs(eps []Endpoint, f func(run []Endpoint)) {
	for start := 0; start < len(eps); {
		end := start + 1
		for end < len(eps) && eps[end].Tier() == eps[start].Tier() {
			end++
		}
		f(eps[start:end])
		start = end
	}
}
