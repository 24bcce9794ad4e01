package agent

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/balance"
)

// Balancing is package balance's: this file adapts the agent's view of an
// endpoint to balance.Endpoint, and keeps the agent's measurements per
// endpoint (balance.Stats) and the other agents' reported loads.

// epStats is what this agent measures of one endpoint.
type epStats struct {
	balance.Stats // in flight, peak-EWMA latency
}

// observe adds a latency sample (connect time for L4, time to response
// headers for L7).
func (s *epStats) observe(d time.Duration) { s.Observe(time.Now(), d) }

// latency is the peak EWMA now, in seconds.
func (s *epStats) latency() float64 { return s.Latency(time.Now()) }

func (a *Agent) stats(key string) *epStats {
	v, ok := a.statsByEP.Load(key)
	if !ok {
		v, _ = a.statsByEP.LoadOrStore(key, new(epStats))
	}
	return v.(*epStats)
}

func (a *Agent) endpointActive(key string) *atomic.Int64 { return &a.stats(key).Active }

// weight is the edge-aware weight of an endpoint (balance.Weight).
func (a *Agent) weight(ev *endpointView) float64 {
	return balance.Weight(&epView{a: a, ev: ev})
}

// distance is d in 100 km: the larger of the coordinates' great-circle
// distance and the measured RTT to the endpoint's agent, counting 1 ms of
// round trip as 100 km (light in fiber covers about 200 km per ms, there
// and back). A node without coordinates is placed by its RTT alone.
func (a *Agent) distance(ev *endpointView) float64 {
	d := ev.distance
	if ev.mesh != "" && !ev.local && a.peers != nil {
		if rtt, ok := a.peers.RTT(ev.ep.Spec.Node); ok {
			d = max(d, float64(rtt)/float64(time.Millisecond))
		}
	}
	return d
}

// inFlight is the requests (L4: connections) an endpoint is serving as far
// as this agent knows: its own plus the other agents' last reports.
func (a *Agent) inFlight(ev *endpointView) float64 {
	return float64(a.stats(ev.key).Active.Load()) + a.peerLoad(ev.key)
}

// ownLoads is this agent's in-flight count per endpoint, non-zero only,
// for the heartbeat.
func (a *Agent) ownLoads() map[string]float64 {
	var out map[string]float64
	a.statsByEP.Range(func(k, v any) bool {
		if n := v.(*epStats).Active.Load(); n > 0 {
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

// epView adapts an endpointView to balance.Endpoint for one pick.
type epView struct {
	a    *Agent
	ev   *endpointView
	tier int
}

func (e *epView) Key() string       { return e.ev.key }
func (e *epView) Tier() int         { return e.tier }
func (e *epView) Capacity() float64 { return e.ev.capacity }
func (e *epView) Distance() float64 { return e.a.distance(e.ev) }
func (e *epView) InFlight() float64 { return e.a.inFlight(e.ev) }
func (e *epView) Latency() float64  { return e.a.stats(e.ev.key).latency() }

// adapt wraps evs for package balance. A service with locality "none"
// puts every endpoint in one tier.
func (a *Agent) adapt(sv *serviceView, evs []*endpointView) []balance.Endpoint {
	return a.adaptInto(new(adaptBuf), sv, evs)
}

// adaptBuf holds adapt's wrappers; pickSubset recycles them (adaptBufs), so
// a request's pick costs no allocation for them.
type adaptBuf struct {
	views []epView
	eps   []balance.Endpoint
}

var adaptBufs = sync.Pool{New: func() any { return new(adaptBuf) }}

func (a *Agent) adaptInto(b *adaptBuf, sv *serviceView, evs []*endpointView) []balance.Endpoint {
	flat := sv.svc.Spec.Locality == api.LocalityNone
	b.views = slices.Grow(b.views[:0], len(evs))[:len(evs)]
	b.eps = slices.Grow(b.eps[:0], len(evs))[:len(evs)]
	for i, ev := range evs {
		b.views[i] = epView{a: a, ev: ev, tier: int(ev.tier)}
		if flat {
			b.views[i].tier = 0
		}
		b.eps[i] = &b.views[i]
	}
	return b.eps
}

// release drops the buffer's references and returns it to adaptBufs.
func (b *adaptBuf) release() {
	clear(b.views)
	clear(b.eps)
	adaptBufs.Put(b)
}

// unadapt writes the order of eps (from adapt) back into evs[:len(eps)].
func unadapt(eps []balance.Endpoint, evs []*endpointView) []*endpointView {
	evs = evs[:len(eps)]
	for i, e := range eps {
		evs[i] = e.(*epView).ev
	}
	return evs
}

// pick returns the healthy endpoints of a service that serve port, in the
// order to try them (balance.Pick).
func (a *Agent) pick(sv *serviceView, port string) []*endpointView {
	return a.pickSubset(sv, port, "", nil)
}

// pickSubset is pick among the endpoints of one subset (those with all of
// labels), so the balancer orders, and round robin rotates, over the
// subset alone.
func (a *Agent) pickSubset(sv *serviceView, port, subset string, labels map[string]string) []*endpointView {
	return a.pickSubsetInto(nil, sv, port, subset, labels)
}

// pickSubsetInto is pickSubset into buf's array when it has room for every
// endpoint of sv (a caller's array on its stack: no allocation).
func (a *Agent) pickSubsetInto(buf []*endpointView, sv *serviceView, port, subset string, labels map[string]string) []*endpointView {
	evs := buf[:0]
	if cap(evs) < len(sv.endpoints) {
		evs = make([]*endpointView, 0, len(sv.endpoints))
	}
	for _, ev := range sv.endpoints {
		if _, ok := ev.ep.Port(port); ok && hasLabels(ev, labels) {
			evs = append(evs, ev)
		}
	}
	if len(evs) == 1 {
		// One candidate: balance.Pick would only drop it if unusable (a
		// tier of one is at its full share when usable, and no balancer
		// orders one endpoint), so skip its wrappers and allocations.
		if !a.usableEndpoint(sv, evs[0]) {
			return evs[:0]
		}
		return evs
	}
	usable := func(e balance.Endpoint) bool { return a.usableEndpoint(sv, e.(*epView).ev) }
	p := balance.Policy{Balancer: a.balancers.Get(sv.svc.Spec.Balancer), MinHealthyShare: sv.svc.Spec.MinHealthyShare}
	// The balancer's state (round robin's counter) is per destination
	// (limitKey: the service, or its subset or port with a pool of its
	// own) and subset; no string is built for a request without one.
	set := sv.limitKey
	if subset != "" {
		set += "\x00" + subset
	}
	b := adaptBufs.Get().(*adaptBuf)
	defer b.release()
	return unadapt(balance.Pick(p, set, a.adaptInto(b, sv, evs), usable), evs)
}

// usableEndpoint reports whether ev may take the request: healthy, not
// ejected by sv's outlier detection, and its node not dead (gossip).
func (a *Agent) usableEndpoint(sv *serviceView, ev *endpointView) bool {
	return ev.healthy && !a.isEjected(sv, ev.key) && (ev.local || !a.isGossipDead(ev.ep.Spec.Node))
}

func hasLabels(ev *endpointView, labels map[string]string) bool {
	for k, v := range labels {
		if ev.ep.Meta.Labels[k] != v {
			return false
		}
	}
	return true
}

// hashBalanced reports whether the service's balancer hashes HashKey.
func hashBalanced(sv *serviceView) bool {
	b := sv.svc.Spec.Balancer
	return sv.svc.Spec.HashKey != nil && (b == "consistent-hash" || b == "maglev")
}

// hashOrder orders cands (from pick) by key with the service's hashing
// balancer: Maglev for maglev, else rendezvous hashing (consistent-hash,
// and pinning without a hash balancer).
func (a *Agent) hashOrder(sv *serviceView, cands []*endpointView, key string) {
	eps := a.adapt(sv, cands)
	if sv.svc.Spec.Balancer == "maglev" {
		balance.Maglev(&sv.maglev, eps, key)
	} else {
		balance.Rendezvous(eps, key)
	}
	unadapt(eps, cands)
}
