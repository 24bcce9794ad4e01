package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
)

// A virtual IP the agent cannot bind (another process holds the address
// and port) would be invisible: DNS would hand it out and clients would
// reach that process. The agent records each failure, reports it (routes
// and describe, its heartbeat to the control plane, a metric), answers
// DNS for the service with SERVFAIL and the reason, and binds again with
// backoff until the address frees, with no other change needed.

// Bind retry backoff: the first retry after bindRetryMin, doubling up to
// bindRetryMax while any address stays unbound.
const (
	bindRetryMin = 100 * time.Millisecond
	bindRetryMax = 2 * time.Second
)

// bindFailure is one VIP:port the agent could not bind.
type bindFailure struct {
	service, proto string
	err            string
	since          time.Time
	attempts       int
}

// noteBindFailLocked records a failed bind of ap (a.mu held) and wakes the
// retry loop. The first failure of an address is logged as an error with
// what to do; retries are counted, not logged.
func (a *Agent) noteBindFailLocked(ap netip.AddrPort, t listenTarget, err error) {
	a.m.listenErrors.Inc()
	a.m.vipBindFailures.Inc()
	f := a.bindFail[ap]
	if f == nil {
		f = &bindFailure{service: t.svc, proto: t.proto, since: time.Now()}
		a.bindFail[ap] = f
		hint := ""
		if errors.Is(err, syscall.EADDRINUSE) {
			hint = fmt.Sprintf("another process holds it (find it: ss -lnp 'sport = :%d'); clients there would reach that process, so DNS does not answer for %s until the agent binds it; retrying", ap.Port(), t.svc)
		}
		a.log.Error("agent: cannot listen on service address", "addr", ap, "service", t.svc, "proto", t.proto, "err", err, "hint", hint)
	}
	f.attempts++
	if f.err != err.Error() {
		f.err = err.Error()
		a.publishBindFailsLocked()
	}
	select {
	case a.bindKick <- struct{}{}:
	default:
	}
}

// noteBoundLocked clears ap's failure once it is bound (a.mu held).
func (a *Agent) noteBoundLocked(ap netip.AddrPort) {
	if f := a.bindFail[ap]; f != nil {
		a.log.Info("agent: bound service address after failures", "addr", ap, "service", f.service, "attempts", f.attempts, "after", time.Since(f.since).Round(time.Millisecond))
		delete(a.bindFail, ap)
		a.publishBindFailsLocked()
	}
}

// forgetBindFailsLocked drops the failures of addresses v no longer has.
func (a *Agent) forgetBindFailsLocked(v *view) {
	n := len(a.bindFail)
	for ap, f := range a.bindFail {
		if t, ok := v.byVIP[ap]; !ok || t.svc != f.service {
			delete(a.bindFail, ap)
		}
	}
	if len(a.bindFail) != n {
		a.publishBindFailsLocked()
	}
}

// publishBindFailsLocked snapshots bindFail for readers that must not take
// a.mu (the DNS path, routes, the heartbeat).
func (a *Agent) publishBindFailsLocked() {
	out := make([]api.VIPBindFailure, 0, len(a.bindFail))
	for ap, f := range a.bindFail {
		out = append(out, api.VIPBindFailure{Address: ap.String(), Service: f.service, Error: f.err, Since: f.since.UTC()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	a.bindFailSnap.Store(&out)
}

// retryBinds binds the unbound VIP:ports of the current view again, with
// backoff, until ctx ends; a new failure restarts the backoff.
func (a *Agent) retryBinds(ctx context.Context) {
	delay := bindRetryMin
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		a.mu.Lock()
		pending := len(a.bindFail)
		a.mu.Unlock()
		if pending == 0 {
			delay = bindRetryMin
			select {
			case <-ctx.Done():
				return
			case <-a.bindKick:
				continue
			}
		}
		timer.Reset(delay)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		delay = min(2*delay, bindRetryMax)
		a.mu.Lock()
		if ctx.Err() == nil {
			a.reconcileListenersLocked(a.view.Load()) // bound and served: the view is published
		}
		a.mu.Unlock()
		select { // the kicks of this round's own failures
		case <-a.bindKick:
		default:
		}
	}
}

// VIPBindFailures returns the VIP:ports this agent cannot bind now, by
// address (shared: callers must not modify it).
func (a *Agent) VIPBindFailures() []api.VIPBindFailure {
	if p := a.bindFailSnap.Load(); p != nil {
		return *p
	}
	return nil
}

// unavailable says why the agent cannot serve service key now ("" if it
// can): the VIP:ports of it that are not bound.
func (a *Agent) unavailable(key string) string {
	var held []string
	for _, f := range a.VIPBindFailures() {
		if f.Service == key {
			held = append(held, f.Address)
		}
	}
	if len(held) == 0 {
		return ""
	}
	return fmt.Sprintf("fogmesh: %s cannot be served on this node: %s held by another process; the agent retries", key, strings.Join(held, ", "))
}
