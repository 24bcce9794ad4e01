package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
)

// reqLimiter is a service's circuit breaker for requests: MaxRequests
// slots, and a first-come-first-served queue of MaxPendingRequests
// waiting for one.
type reqLimiter struct {
	mu       sync.Mutex // guards the following
	inflight int
	waiters  []chan struct{} // closed when handed a slot
}

// Overflow reasons, the reason label of
// fogmesh_agent_circuit_breaker_rejections_total.
const (
	overflowMaxRequests    = "max_requests"    // no slot, no queue configured
	overflowPendingFull    = "pending_full"    // no slot, queue full
	overflowPendingTimeout = "pending_timeout" // waited the request timeout in the queue
)

// acquire takes a slot, waiting in the queue until ctx is done or wait
// passes (wait 0: no bound but ctx). It returns "" with a slot, or why not.
func (l *reqLimiter) acquire(ctx context.Context, cb api.CircuitBreaker, wait time.Duration) string {
	l.mu.Lock()
	if l.inflight < cb.MaxRequests {
		l.inflight++
		l.mu.Unlock()
		return ""
	}
	if len(l.waiters) >= cb.MaxPendingRequests {
		l.mu.Unlock()
		if cb.MaxPendingRequests == 0 {
			return overflowMaxRequests
		}
		return overflowPendingFull
	}
	ch := make(chan struct{})
	l.waiters = append(l.waiters, ch)
	l.mu.Unlock()
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
	l.releaseLocked(cb.MaxRequests)
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

// limitRequest applies the service's CircuitBreaker.MaxRequests and
// MaxPendingRequests. It returns what is left of the request timeout
// after the wait (0: none) and a release func, or an error: errOverflow
// when refused, a deadline error when the wait used the whole timeout.
func (s *l7) limitRequest(ctx context.Context, svc string, cb api.CircuitBreaker, timeout time.Duration) (time.Duration, func(), error) {
	if cb.MaxRequests <= 0 {
		return timeout, func() {}, nil
	}
	v, ok := s.limiters.Load(svc)
	if !ok {
		v, _ = s.limiters.LoadOrStore(svc, new(reqLimiter))
	}
	l := v.(*reqLimiter)
	start := time.Now()
	reject := func(reason string) {
		s.a.m.overflows.Inc()
		s.a.cfg.Metrics.GetOrCreateCounter(fmt.Sprintf(`fogmesh_agent_circuit_breaker_rejections_total{service=%q,reason=%q}`, svc, reason)).Inc()
	}
	reason := l.acquire(ctx, cb, timeout)
	if reason == overflowPendingTimeout && ctx.Err() == nil || reason == "" && timeout > 0 && time.Since(start) >= timeout {
		if reason == "" {
			l.release(cb.MaxRequests)
		}
		reject(overflowPendingTimeout)
		return 0, nil, fmt.Errorf("request timeout waiting for the circuit breaker: %w", context.DeadlineExceeded)
	}
	if reason != "" {
		reject(reason)
		return 0, nil, fmt.Errorf("%w (%s)", errOverflow, reason)
	}
	if timeout > 0 {
		timeout -= time.Since(start)
	}
	return timeout, func() { l.release(cb.MaxRequests) }, nil
}
