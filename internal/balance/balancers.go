package balance

import (
	"math"
	"sort"
	"sync"
	"sync/atomic"
)

// The balancers by the names services use (api.ServiceSpec.Balancer).
var (
	_ Balancer = EdgeAware{}
	_ Balancer = (*RoundRobin)(nil)
	_ Balancer = LeastConn{}
	_ Balancer = Random{}
)

// Set holds one balancer per name. Round robin keeps its counters in it,
// so an agent keeps one Set for its lifetime.
type Set map[string]Balancer

// NewSet returns the balancers drawing from r. consistent-hash and maglev
// order a request that has no hash key edge-aware.
func NewSet(r Rand) Set {
	ea := EdgeAware{Rand: r}
	return Set{
		"edge-aware": ea, "round-robin": new(RoundRobin), "least-conn": LeastConn{Rand: r}, "random": Random{Rand: r},
		"consistent-hash": ea, "maglev": ea,
	}
}

// Get returns the balancer named name, edge-aware for "" or an unknown one.
func (s Set) Get(name string) Balancer {
	if b, ok := s[name]; ok {
		return b
	}
	return s["edge-aware"]
}

// LambdaPer100km is λ of the edge-aware weight: an endpoint 100 km away
// weighs e^−0.5 ≈ 0.61 of a near one.
const LambdaPer100km = 0.5

// Weight is the edge-aware weight of an endpoint,
//
//	w = C / (L + ε) · e^(−λ·d)
//
// with C its capacity, L its load (InFlight), ε = 1, d its distance in
// 100 km and λ = LambdaPer100km.
func Weight(e Endpoint) float64 {
	return e.Capacity() / (e.InFlight() + 1) * math.Exp(-LambdaPer100km*e.Distance())
}

// EdgeAware draws two endpoints with probability ∝ Weight and takes the
// one with the lower peak-EWMA latency × (load + 1): power of two choices,
// as Finagle and Linkerd do, so a slow or loaded endpoint gets less
// traffic. The rest keep their order.
type EdgeAware struct{ Rand Rand }

func (EdgeAware) Name() string { return "edge-aware" }

func (b EdgeAware) Order(_ string, eps []Endpoint) {
	if len(eps) < 2 {
		return
	}
	w := make([]float64, len(eps))
	for i, e := range eps {
		w[i] = Weight(e)
	}
	i := weightedIndex(b.Rand, w, -1)
	j := weightedIndex(b.Rand, w, i)
	cost := func(k int) float64 { return eps[k].Latency() * (eps[k].InFlight() + 1) }
	if cost(j) < cost(i) {
		i = j
	}
	eps[0], eps[i] = eps[i], eps[0]
}

// weightedIndex draws an index with probability ∝ w, never skip.
func weightedIndex(r Rand, w []float64, skip int) int {
	total := 0.0
	for k, x := range w {
		if k != skip {
			total += x
		}
	}
	x := r.Float64() * total
	last := -1
	for k, wk := range w {
		if k == skip {
			continue
		}
		last = k
		if x -= wk; x < 0 {
			return k
		}
	}
	return last
}

// RoundRobin rotates each endpoint set (service and subset) and tier on
// its own counter, so every set is served in turn whatever other sets of
// the service are asked for. The zero value is ready.
type RoundRobin struct {
	counters sync.Map // rrKey -> *atomic.Uint64
}

type rrKey struct {
	set  string
	tier int
}

func (*RoundRobin) Name() string { return "round-robin" }

func (b *RoundRobin) Order(set string, eps []Endpoint) {
	if len(eps) < 2 {
		return
	}
	key := rrKey{set, eps[0].Tier()}
	c, ok := b.counters.Load(key)
	if !ok {
		c, _ = b.counters.LoadOrStore(key, new(atomic.Uint64))
	}
	k := int((c.(*atomic.Uint64).Add(1) - 1) % uint64(len(eps)))
	rotate(eps, k)
}

// rotate moves eps[k:] to the front, in place.
func rotate(eps []Endpoint, k int) {
	reverse(eps[:k])
	reverse(eps[k:])
	reverse(eps)
}

func reverse(s []Endpoint) {
	for i, j := 0, len(s)-1; i < j; i, j = i+1, j-1 {
		s[i], s[j] = s[j], s[i]
	}
}

// LeastConn puts the endpoints with the fewest requests in flight first,
// ties in random order: sequential requests (every load 0) spread evenly,
// as Envoy's least-request does, instead of all going to the first
// endpoint.
type LeastConn struct{ Rand Rand }

func (LeastConn) Name() string { return "least-conn" }

func (b LeastConn) Order(_ string, eps []Endpoint) {
	if len(eps) < 2 {
		return
	}
	type loaded struct {
		e    Endpoint
		load float64
	}
	s := make([]loaded, len(eps))
	for i, e := range eps {
		s[i] = loaded{e, e.InFlight()}
	}
	for i := len(s) - 1; i > 0; i-- { // shuffle: the stable sort keeps ties random
		j := b.Rand.IntN(i + 1)
		s[i], s[j] = s[j], s[i]
	}
	sort.SliceStable(s, func(i, j int) bool { return s[i].load < s[j].load })
	for i := range s {
		eps[i] = s[i].e
	}
}

// Random orders the endpoints uniformly at random.
type Random struct{ Rand Rand }

func (Random) Name() string { return "random" }

func (b Random) Order(_ string, eps []Endpoint) {
	for i := len(eps) - 1; i > 0; i-- {
		j := b.Rand.IntN(i + 1)
		eps[i], eps[j] = eps[j], eps[i]
	}
}
