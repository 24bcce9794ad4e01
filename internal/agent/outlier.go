package agent

import (
	"errors"
	"time"

	"github.com/fogmesh/fogmesh/internal/transport"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/outlier"
)

// Outlier detection and the quarantine of unreachable endpoints. The state
// and its semantics (Envoy's) live in internal/outlier; this file maps a
// service's policy onto it and feeds it what the proxies see: responses
// and broken exchanges (l7retry.go), failed and successful connects (proxy.go,
// l7retry.go). pick skips what isEjected reports.

// outlierConfig is a service's outlierDetection (its destination policy's
// when that has one) with fogmesh's documented defaults: 5 consecutive
// errors, ejection for 10s × a multiplier of at most 10, at most 50 % of
// the endpoints out, a sweep (un-ejection check, multiplier decay) every
// 10s.
func outlierConfig(od *api.OutlierDetection) outlier.Config {
	count := func(n, def int) int {
		switch {
		case n == 0:
			return def
		case n < 0:
			return 0 // off
		}
		return n
	}
	c := outlier.Config{
		Consecutive5xx:         count(od.ConsecutiveErrors, 5),
		ConsecutiveGateway:     count(od.ConsecutiveGatewayErrors, 0),
		SplitLocalOrigin:       od.SplitExternalLocalOriginErrors,
		ConsecutiveLocalOrigin: count(od.ConsecutiveLocalOriginFailures, 5),
		Interval:               time.Duration(od.Interval),
		BaseEjectionTime:       time.Duration(od.BaseEjectionTime),
		MaxEjectionTime:        time.Duration(od.MaxEjectionTime),
		MaxEjectionPercent:     od.MaxEjectedPercent,
		MinHealthPercent:       od.MinHealthPercent,
	}
	if od.GatewayErrorsOnly { // the older form of consecutiveGatewayErrors
		if c.ConsecutiveGateway == 0 {
			c.ConsecutiveGateway = c.Consecutive5xx
		}
		c.Consecutive5xx = 0
	}
	if c.BaseEjectionTime <= 0 {
		c.BaseEjectionTime = 10 * time.Second
	}
	if c.MaxEjectionTime <= 0 {
		c.MaxEjectionTime = 10 * c.BaseEjectionTime
	}
	if c.MaxEjectionPercent <= 0 {
		c.MaxEjectionPercent = 50
	}
	return c
}

// isEjected reports whether pick must skip an endpoint for requests to
// destination sv: quarantined after a failed connect, or ejected by the
// outlier detection of sv's destination (a service, subset or port: each
// has a detector of its own, as each is an Envoy cluster under Istio).
func (a *Agent) isEjected(sv *serviceView, key string) bool {
	if d := sv.outlierDet.Load(); d != nil {
		return a.outliers.EjectedIn(d, key, time.Now)
	}
	return a.outliers.EjectedNow(sv.outlierKey(), key, time.Now)
}

// isEjectedAnywhere reports whether an endpoint is quarantined or ejected
// by any destination's detector (status pages).
func (a *Agent) isEjectedAnywhere(key string) bool {
	return a.outliers.EjectedAnywhere(key, time.Now())
}

// outlierKey names the detector of sv's destination: the service's key,
// or "ns/name|subset|port" for a destination view (destViews).
func (sv *serviceView) outlierKey() string {
	if sv.destKey != "" {
		return sv.destKey
	}
	if sv.limitKey != "" {
		return sv.limitKey // "ns/name" for the service's own view (buildView): no string built per request
	}
	return sv.svc.Meta.Key()
}

// outcome feeds outlier detection one attempt's result: the response's
// status code, or a broken exchange (a reset: a local-origin failure).
func (a *Agent) outcome(sv *serviceView, ev *endpointView, code int, broken bool) {
	a.outcomeAt(sv, ev, code, broken, time.Now())
}

// outcomeAt is outcome at now (a clock read of the caller's).
func (a *Agent) outcomeAt(sv *serviceView, ev *endpointView, code int, broken bool, now time.Time) {
	o := outlier.Outcome{Status: code}
	if broken {
		o = outlier.Outcome{Local: outlier.Reset}
	}
	a.reportOutcomeAt(sv, ev, o, now)
}

func (a *Agent) reportOutcome(sv *serviceView, ev *endpointView, o outlier.Outcome) {
	a.reportOutcomeAt(sv, ev, o, time.Now())
}

func (a *Agent) reportOutcomeAt(sv *serviceView, ev *endpointView, o outlier.Outcome, now time.Time) {
	var e outlier.Event
	if d := sv.outlierDet.Load(); d != nil {
		e = d.Report(ev.key, o, now)
	} else {
		e = a.outliers.Report(sv.outlierKey(), ev.key, o, now)
	}
	switch {
	case e.Ejected:
		a.m.outlierEjections.Inc()
		a.log.Warn("agent: endpoint ejected for consecutive errors", "service", sv.svc.Meta.Key(), "destination", sv.outlierKey(), "endpoint", ev.key,
			"reason", e.Reason, "for", e.For)
	case e.Reason != "":
		a.m.ejectionsSkipped.Inc() // max ejected percent reached
	}
}

// connectOK feeds outlier detection a TCP connection established: for
// L4 proxying that is the whole outcome, a success.
func (a *Agent) connectOK(sv *serviceView, ev *endpointView) {
	a.reportOutcome(sv, ev, outlier.Outcome{Local: outlier.ConnectedFinal})
}

// dialFailed is connectFailed for a connect that failed with err, but a
// stream the endpoint's agent refused for its per-peer cap
// (transport.ErrPeerBusy: this agent has as many streams open there as
// that agent allows one peer) is no failure of the endpoint: the caller
// fails over, and the endpoint is neither ejected nor counted against.
// Nor is a dial gossip cancelled (errNodeDead): gossip keeps a dead node
// out while it is dead, and one that refuted a false death serves again
// at once (TestGossipFlapDoesNotEject).
func (a *Agent) dialFailed(sv *serviceView, ev *endpointView, err error) {
	if errors.Is(err, transport.ErrPeerBusy) || errors.Is(err, errNodeDead) {
		return
	}
	a.connectFailed(sv, ev)
}

// connectFailed feeds outlier detection a failed connect (a local-origin
// error). With the service's connectFailure "eject" (fogmesh's default)
// the endpoint is also skipped at once (eject); with "count" (Istio
// documents) a local workload's check is only run early.
func (a *Agent) connectFailed(sv *serviceView, ev *endpointView) {
	a.reportOutcome(sv, ev, outlier.Outcome{Local: outlier.ConnectFailed})
	if sv.svc.Spec.OutlierDetection.ConnectFailure != api.ConnectFailureCount {
		a.eject(ev)
		return
	}
	if ev.local {
		a.mu.Lock()
		ws := a.workloads[ev.ep.Meta.Name]
		a.mu.Unlock()
		if ws != nil {
			select {
			case ws.wake <- struct{}{}: // nil (no active check): never ready
			default:
			}
		}
	}
}

// eject quarantines an endpoint for EjectFor; a local workload is also
// marked unhealthy until its next check passes, and its checker is woken.
func (a *Agent) eject(ev *endpointView) {
	a.outliers.Quarantine(ev.key, time.Now().Add(time.Duration(a.cfg.EjectFor)))
	if !ev.local {
		return
	}
	a.mu.Lock()
	ws := a.workloads[ev.ep.Meta.Name]
	// Without an active check nothing would ever mark it healthy again:
	// rely on the timed ejection alone.
	changed := ws != nil && ws.healthy && ws.w.Check.Type != "none"
	if changed {
		ws.healthy = false
		a.rebuildLocked()
	}
	a.mu.Unlock()
	if changed {
		a.notifyLocal()
		select {
		case ws.wake <- struct{}{}:
		default:
		}
	}
}

// unejectPassed returns an endpoint whose active check passed: Envoy's
// successful_active_health_check_uneject_host.
func (a *Agent) unejectPassed(key string) { a.outliers.Uneject(key, time.Now()) }

// syncOutliers gives each destination's detector (the service's, and
// each subset's or port's with a traffic policy of its own) its policy
// and its pool after a rebuild, and forgets removed destinations; each
// destination view keeps its detector (outlierDet), so that requests do
// not look it up by name (a read lock and a map access per candidate). It is
// the only place detectors are configured: outcomes never change them.
// A subset's pool is its endpoints (Istio's subset cluster).
func (a *Agent) syncOutliers(v *view) {
	now := time.Now()
	keep := map[string]bool{}
	v.eachDestination(func(sv *serviceView) {
		labels := sv.subsets[sv.destSubset]
		keys := make([]string, 0, len(sv.endpoints))
		for _, ev := range sv.endpoints {
			if sv.destSubset == "" || hasLabels(ev, labels) {
				keys = append(keys, ev.key)
			}
		}
		key := sv.outlierKey()
		keep[key] = true
		sv.outlierDet.Store(a.outliers.Sync(key, outlierConfig(&sv.svc.Spec.OutlierDetection), keys, now))
	})
	a.outliers.Prune(keep)
}
