package agent

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
)

// reqLimiter is a destination's circuit breaker for requests (a service's,
// or a subset's with its own): slots (requestSlots), and a
// first-come-first-served queue of MaxPendingRequests waiting for one,
// Envoy's pending requests
// (envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/circuit_breaking:
// "requests are added to the list of pending requests whenever there
// aren't enough upstream connections available to immediately dispatch
// the request"; past max_pending_requests the request overflows at once,
// answered 503).
type reqLimiter struct {
	mu       sync.Mutex // guards the following
	inflight int
	waiters  []chan struct{} // closed when handed a slot
	requests int             // in flight under an Envoy-style cap (limits)
}

// Overflow reasons, the reason label of
// fogmesh_agent_circuit_breaker_rejections_total.
const (
	overflowMaxRequests    = "max_requests"    // no slot, no queue configured
	overflowPendingFull    = "pending_full"    // no slot, queue full
	overflowPendingTimeout = "pending_timeout" // waited the request timeout in the queue
)

// requestSlots is how many requests may be in flight to a destination on
// a port of protocol proto (0: no limit). On an http port each request
// holds an HTTP/1.1 connection for its exchange, so MaxConnections bounds
// them too (Envoy: the cluster's max_connections is "in practice only
// applicable to HTTP/1.1 clusters", and max_requests to HTTP/2 ones);
// http2/grpc ports multiplex over one connection per endpoint.
func requestSlots(cb api.CircuitBreaker, proto string) int {
	n := cb.MaxRequests
	if c := cb.MaxConnections; proto == "http" && c > 0 && (n <= 0 || c < n) {
		n = c
	}
	return max(n, 0)
}

// acquire takes one of slots, waiting in the queue of at most pending
// until ctx is done or wait passes (wait 0: no bound but ctx). It returns
// "" with a slot, or why not.
func (l *reqLimiter) acquire(ctx context.Context, slots, pending int, wait time.Duration) string {
	l.mu.Lock()
	if l.inflight < slots {
		l.inflight++
		l.mu.Unlock()
		return ""
	}
	if len(l.waiters) >= pending {
		l.mu.Unlock()
		if pending == 0 {
			return overflowMaxRequests
		}
		return overflowPendingFull
	}
	ch := make(chan struct{})
	l.waiters = append(l.waiters, ch)
	l.mu.Unlock()
	h2WillWait(ctx) // l7h2wait.go
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ch:
		return ""
	case <-ctx.Done():
	case <-timeout:
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, w := range l.waiters {
		if w == ch {
			l.waiters = append(l.waiters[:i], l.waiters[i+1:]...)
			return overflowPendingTimeout
		}
	}
	// Handed a slot as we gave up: pass it on.
	l.releaseLocked(slots)
	return overflowPendingTimeout
}

// release returns a slot, to the first waiter if any.
func (l *reqLimiter) release(maxRequests int) {
	l.mu.Lock()
	l.releaseLocked(maxRequests)
	l.mu.Unlock()
}

func (l *reqLimiter) releaseLocked(maxRequests int) {
	if len(l.waiters) > 0 && l.inflight <= maxRequests {
		ch := l.waiters[0]
		l.waiters = l.waiters[1:]
		close(ch) // the slot moves to the waiter: inflight unchanged
		return
	}
	l.inflight--
}

// limitRequest applies the circuit breaker of the destination sv (a
// service's view or a subset's, effectivePolicy) to a request on a port of
// protocol proto: slots with a pending queue (limits), and with Envoy's
// semantics a cap on requests in flight checked once a slot is held. It
// returns what is left of the request timeout after the wait (0: none) and
// a release func, or an error: errOverflow when refused, a deadline error
// when the wait used the whole timeout. Refusals are counted in
// fogmesh_agent_circuit_breaker_rejections_total.
func (s *l7) limitRequest(ctx context.Context, sv *serviceView, proto string, timeout time.Duration) (time.Duration, func(), error) {
	slots, pending, reqCap := limits(sv.svc.Spec.CircuitBreaker, proto)
	if slots <= 0 && reqCap <= 0 {
		return timeout, func() {}, nil
	}
	key := sv.limitKey
	v, ok := s.limiters.Load(key)
	if !ok {
		v, _ = s.limiters.LoadOrStore(key, new(reqLimiter))
	}
	l := v.(*reqLimiter)
	start := time.Now()
	reject := func(reason string) {
		s.a.m.overflows.Inc()
		s.a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_agent_circuit_breaker_rejections_total{service=%q,subset=%q,reason=%q}`,
			sv.svc.Meta.Key(), sv.limitSubset, reason)).Inc()
	}
	if slots > 0 {
		reason := l.acquire(ctx, slots, pending, timeout)
		if reason == overflowPendingTimeout && ctx.Err() == nil || reason == "" && timeout > 0 && time.Since(start) >= timeout {
			if reason == "" {
				l.release(slots)
			}
			reject(overflowPendingTimeout)
			return 0, nil, fmt.Errorf("request timeout waiting for the circuit breaker: %w", context.DeadlineExceeded)
		}
		if reason != "" {
			reject(reason)
			return 0, nil, fmt.Errorf("%w (%s)", errOverflow, reason)
		}
	}
	if reqCap > 0 {
		// Envoy checks max_requests when a request gets its connection
		// (pending requests do not count): over it, 503 at once.
		l.mu.Lock()
		full := l.requests >= reqCap
		if !full {
			l.requests++
		}
		l.mu.Unlock()
		if full {
			if slots > 0 {
				l.release(slots)
			}
			reject(overflowMaxRequests)
			return 0, nil, fmt.Errorf("%w (%s)", errOverflow, overflowMaxRequests)
		}
	}
	if timeout > 0 {
		timeout -= time.Since(start)
	}
	return timeout, func() {
		if reqCap > 0 {
			l.mu.Lock()
			l.requests--
			l.mu.Unlock()
		}
		if slots > 0 {
			l.release(slots)
		}
	}, nil
}

// limits returns a circuit breaker's slots (0: none), the pending queue
// waiting for them, and the cap on requests in flight checked once a slot
// is held (0: none), on a port of protocol proto.
//
// fogmesh's own semantics: slots are requestSlots, and maxPendingRequests
// wait for one. Envoy's (pendingFor: connections, from Istio documents):
// pending requests wait only for an HTTP/1.1 connection (maxConnections,
// http ports), unbounded when maxPendingRequests is 0 (Istio's default),
// and maxRequests refuses at once, on every HTTP port: "the maximum
// number of requests that can be outstanding to all hosts in a cluster at
// any given time"
// (envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/circuit_breaking).
func limits(cb api.CircuitBreaker, proto string) (slots, pending, reqCap int) {
	if cb.PendingFor != api.PendingForConnections {
		return requestSlots(cb, proto), cb.MaxPendingRequests, 0
	}
	if proto == "http" {
		slots = cb.MaxConnections
	}
	pending = cb.MaxPendingRequests
	if pending == 0 {
		pending = math.MaxInt
	}
	return slots, pending, cb.MaxRequests
}

// pruneLimiters forgets the circuit-breaker state (request limiters and
// connection counters) of destinations no longer in v: a removed service,
// subset or port pool. Without it the maps keep every destination the
// configuration ever held. State still in use (a request or connection in
// flight) is left to a later rebuild, so a destination that returns
// meanwhile still counts it.
func (a *Agent) pruneLimiters(v *view) {
	live := map[string]bool{}
	v.eachDestination(func(sv *serviceView) { live[sv.limitKey] = true })
	a.svcCounters.Range(func(k, c any) bool {
		key := k.(string) // limitKey + "|" + what (serviceCounter)
		if i := strings.LastIndexByte(key, '|'); i >= 0 && !live[key[:i]] && c.(*atomic.Int64).Load() == 0 {
			a.svcCounters.CompareAndDelete(k, c)
		}
		return true
	})
	if a.l7 == nil { // New builds the first view before l7
		return
	}
	a.l7.limiters.Range(func(k, l any) bool {
		if !live[k.(string)] && l.(*reqLimiter).idle() {
			a.l7.limiters.CompareAndDelete(k, l)
		}
		return true
	})
}

// idle reports whether no request holds or waits for l.
func (l *reqLimiter) idle() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inflight == 0 && len(l.waiters) == 0 && l.requests == 0
}
