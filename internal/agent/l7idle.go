package agent

import (
	"net"
	"net/http"
	"time"
)

// defaultL7Idle closes keep-alive connections, client and upstream, that
// carried no request for this long, unless the service's timeouts.idle is
// shorter (client side) or set (upstream side).
const defaultL7Idle = 90 * time.Second

// l7IdleTimeout is the idle timeout of a service's upstream pools:
// circuitBreaker.idleTimeout (Istio's connectionPool.http.idleTimeout),
// else timeouts.idle.
func l7IdleTimeout(sv *serviceView) time.Duration {
	if d := time.Duration(sv.svc.Spec.CircuitBreaker.IdleTimeout); d > 0 {
		return d
	}
	if d := time.Duration(sv.svc.Spec.Timeouts.Idle); d > 0 {
		return d
	}
	return defaultL7Idle
}

// connState closes a client connection that stays idle (HTTP/1.1 between
// requests, HTTP/2 with no open stream) longer than its service's
// timeouts.idle. The server's own IdleTimeout (defaultL7Idle) still caps
// longer values.
func (s *l7) connState(c net.Conn, state http.ConnState) {
	tc, ok := c.(*taggedConn)
	if !ok {
		return
	}
	switch state {
	case http.StateIdle:
		sv := s.a.view.Load().services[tc.target.svc]
		if sv == nil {
			return
		}
		d := time.Duration(sv.svc.Spec.Timeouts.Idle)
		if d <= 0 || d >= defaultL7Idle {
			return
		}
		if t, ok := s.idleTimers.Load(tc); ok {
			t.(*time.Timer).Reset(d)
			return
		}
		s.idleTimers.Store(tc, time.AfterFunc(d, func() { tc.Close() }))
	case http.StateActive:
		if t, ok := s.idleTimers.Load(tc); ok {
			t.(*time.Timer).Stop()
		}
	case http.StateClosed, http.StateHijacked:
		if t, ok := s.idleTimers.LoadAndDelete(tc); ok {
			t.(*time.Timer).Stop()
		}
	}
}
