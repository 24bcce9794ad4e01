package agent

import (
	"hash/fnv"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Balancing within the nearest locality tier.
//
// edge-aware (the default) weighs each endpoint with
//
//	w = C / (L + ε) · e^(−λ·d)
//
// where C is the endpoint's capacity (its node's capacity × its weight), L
// its load (the requests and connections this agent has in flight to it,
// plus those every other agent reported in its last heartbeat: the control
// plane sums them and returns them in its heartbeat answer, trusted for
// peerLoadTTL), ε = 1, d the distance between this node and the endpoint's
// node in units of 100 km, from coordinates or the measured RTT to its
// agent, whichever is larger (see distance), and λ = lambdaPer100km. It then draws two endpoints with probability ∝ w and
// takes the one with the lower peak-EWMA latency × (L + 1): power of two
// choices, as Finagle and Linkerd do, so a slow or loaded endpoint gets less
// traffic.
const (
	lambdaPer100km = 0.5
	ewmaDecay      = 5 * time.Second // peak-EWMA time constant
)

// epStats is what this agent measures of one endpoint.
type epStats struct {
	active atomic.Int64 // connections and requests in flight

	mu          sync.Mutex // guards the following
	ewma        float64    // seconds; 0 until the first sample
	last        time.Time
	consecutive int // errors in a row (outlier detection)
	ejections   int // times ejected for errors (ejection time backoff)
}

// observe adds a latency sample (connect time for L4, time to response
// headers for L7). A sample above the average replaces it (peak); below, it
// decays in with a time constant of ewmaDecay.
func (s *epStats) observe(d time.Duration) {
	x := d.Seconds()
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ewma == 0 || x > s.ewma {
		s.ewma = x
	} else {
		w := math.Exp(-now.Sub(s.last).Seconds() / ewmaDecay.Seconds())
		s.ewma = s.ewma*w + x*(1-w)
	}
	s.last = now
}

// latency is the peak EWMA, decayed by the time since the last sample, so
// an endpoint that lost the comparison once (a slow first sample) becomes
// cheap again and is probed, instead of being skipped forever.
func (s *epStats) latency() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ewma == 0 {
		return 0
	}
	return s.ewma * math.Exp(-time.Since(s.last).Seconds()/ewmaDecay.Seconds())
}

func (a *Agent) stats(key string) *epStats {
	v, ok := a.statsByEP.Load(key)
	if !ok {
		v, _ = a.statsByEP.LoadOrStore(key, new(epStats))
	}
	return v.(*epStats)
}

func (a *Agent) endpointActive(key string) *atomic.Int64 { return &a.stats(key).active }

// weight is the edge-aware weight of an endpoint: its capacity over its
// load (this agent's in-flight requests to it plus what the other agents
// reported through the control plane), discounted by distance.
func (a *Agent) weight(ev *endpointView) float64 {
	return ev.capacity / (a.inFlight(ev) + 1) * math.Exp(-lambdaPer100km*a.distance(ev))
}

// distance is d in 100 km: the larger of the coordinates' great-circle
// distance and the measured RTT to the endpoint's agent, counting 1 ms of
// round trip as 100 km (light in fiber covers about 200 km per ms, there
// and back). A node without coordinates is placed by its RTT alone.
func (a *Agent) distance(ev *endpointView) float64 {
	d := ev.distance
	if ev.mesh != "" && !ev.local && a.peers != nil {
		if rtt, ok := a.peers.RTT(ev.mesh); ok {
			d = max(d, float64(rtt)/float64(time.Millisecond))
		}
	}
	return d
}

// inFlight is the requests (L4: connections) an endpoint is serving as far
// as this agent knows: its own plus the other agents' last reports.
func (a *Agent) inFlight(ev *endpointView) float64 {
	return float64(a.stats(ev.key).active.Load()) + a.peerLoad(ev.key)
}

// ownLoads is this agent's in-flight count per endpoint, non-zero only,
// for the heartbeat.
func (a *Agent) ownLoads() map[string]float64 {
	var out map[string]float64
	a.statsByEP.Range(func(k, v any) bool {
		if n := v.(*epStats).active.Load(); n > 0 {
			if out == nil {
				out = make(map[string]float64)
			}
			out[k.(string)] = float64(n)
		}
		return true
	})
	return out
}

// peerLoadTTL is how long the other agents' loads are trusted: a few
// heartbeats, so a control plane that goes quiet does not leave a stale
// picture behind.
const peerLoadTTL = 15 * time.Second

type peerLoads struct {
	at    time.Time
	loads map[string]float64
}

func (a *Agent) setPeerLoads(m map[string]float64) {
	a.peerLoads.Store(&peerLoads{at: time.Now(), loads: m})
}

// peerLoad is the other agents' in-flight count on an endpoint.
func (a *Agent) peerLoad(key string) float64 {
	p := a.peerLoads.Load()
	if p == nil || len(p.loads) == 0 || time.Since(p.at) > peerLoadTTL {
		return 0
	}
	return p.loads[key]
}

// pick returns the healthy endpoints of a service that serve port: the
// nearest tier whose healthy capacity share is at least MinHealthyShare
// first, ordered by the service's balancer, then the other tiers as
// failover candidates.
func (a *Agent) pick(sv *serviceView, port string) []*endpointView {
	type tierSet struct {
		eps            []*endpointView
		total, healthy float64
	}
	var tiers [TierAny + 1]tierSet
	for _, ev := range sv.endpoints {
		if _, ok := ev.ep.Port(port); !ok {
			continue
		}
		ts := &tiers[ev.tier]
		ts.total += ev.capacity
		if !ev.healthy || a.isEjected(ev.key) || (!ev.local && a.isGossipDead(ev.ep.Spec.Node)) {
			continue
		}
		ts.healthy += ev.capacity
		ts.eps = append(ts.eps, ev)
	}
	share := sv.svc.Spec.MinHealthyShare
	var out, weak []*endpointView
	for i := range tiers {
		ts := &tiers[i]
		if len(ts.eps) == 0 {
			continue
		}
		a.order(sv, ts.eps)
		if share > 0 && ts.healthy < share*ts.total {
			weak = append(weak, ts.eps...) // below its share: last resort only
			continue
		}
		out = append(out, ts.eps...)
	}
	return append(out, weak...)
}

// order sorts one tier's endpoints in place: the first is the choice, the
// rest are failover candidates.
func (a *Agent) order(sv *serviceView, eps []*endpointView) {
	if len(eps) < 2 {
		return
	}
	switch sv.svc.Spec.Balancer {
	case "round-robin":
		cnt, _ := a.rr.LoadOrStore(sv.svc.Meta.Key(), new(atomic.Uint64))
		k := int(cnt.(*atomic.Uint64).Add(1) % uint64(len(eps)))
		rot := append(append([]*endpointView(nil), eps[k:]...), eps[:k]...)
		copy(eps, rot)
	case "least-conn":
		sort.SliceStable(eps, func(i, j int) bool { return a.inFlight(eps[i]) < a.inFlight(eps[j]) })
	case "random":
		rand.Shuffle(len(eps), func(i, j int) { eps[i], eps[j] = eps[j], eps[i] })
	default: // edge-aware
		w := make([]float64, len(eps))
		for i, ev := range eps {
			w[i] = a.weight(ev)
		}
		i := weightedIndex(w, -1)
		j := weightedIndex(w, i)
		cost := func(k int) float64 {
			return a.stats(eps[k].key).latency() * (a.inFlight(eps[k]) + 1)
		}
		if cost(j) < cost(i) {
			i = j
		}
		eps[0], eps[i] = eps[i], eps[0]
	}
}

// weightedIndex draws an index with probability ∝ w, never skip.
func weightedIndex(w []float64, skip int) int {
	total := 0.0
	for k, x := range w {
		if k != skip {
			total += x
		}
	}
	r := rand.Float64() * total
	last := -1
	for k, x := range w {
		if k == skip {
			continue
		}
		last = k
		if r -= x; r < 0 {
			return k
		}
	}
	return last
}

// pinOrder reorders each locality tier of cands by rendezvous (highest
// random weight) hashing of key, so a key keeps its endpoint while that
// endpoint is healthy, and only the keys of a vanished endpoint move.
func pinOrder(cands []*endpointView, key string) {
	score := func(ev *endpointView) uint64 {
		h := fnv.New64a()
		h.Write([]byte(key))
		h.Write([]byte{0})
		h.Write([]byte(ev.key))
		return fmix64(h.Sum64())
	}
	// Sort within each run of equal tier as pick ordered them, so tiers
	// that pick moved to the end (below their healthy share) stay there.
	for start := 0; start < len(cands); {
		end := start + 1
		for end < len(cands) && cands[end].tier == cands[start].tier {
			end++
		}
		run := cands[start:end]
		sort.SliceStable(run, func(i, j int) bool { return score(run[i]) > score(run[j]) })
		start = end
	}
}

// haversine100km is the great-circle distance in units of 100 km.
func haversine100km(lat1, lon1, lat2, lon2 float64) float64 {
	const r = 6371.0 / 100
	rad := math.Pi / 180
	dlat, dlon := (lat2-lat1)*rad, (lon2-lon1)*rad
	h := math.Sin(dlat/2)*math.Sin(dlat/2) + math.Cos(lat1*rad)*math.Cos(lat2*rad)*math.Sin(dlon/2)*math.Sin(dlon/2)
	return 2 * r * math.Asin(math.Sqrt(math.Min(1, h)))
}
