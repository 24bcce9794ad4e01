package agent

import (
	"context"
	"time"

	"github.com/fogmesh/fogmesh/internal/health"
)

// startCheckLocked starts the active health checker of a workload
// (internal/health). The checker ends when ctx ends or the workload is
// removed.
func (a *Agent) startCheckLocked(ctx context.Context, ws *workloadState) {
	if ws.w.Check.Type == "none" {
		ws.stop = func() {}
		return
	}
	cctx, cancel := context.WithCancel(ctx)
	ws.stop = cancel
	ws.wake = make(chan struct{}, 1)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		p := proberFor(ws.w)
		defer p.Close()
		c := &health.Checker{Prober: p, Interval: time.Duration(a.cfg.HealthInterval), Wake: ws.wake,
			Report: func(err error) { a.checked(ws, err) }}
		c.Run(cctx)
	}()
}

// proberFor builds the prober of a workload's check; a check that cannot
// be built fails every probe with the reason.
func proberFor(w Workload) health.Prober {
	e := w.endpoint("", true)
	addr, err := e.AddrPort(w.Check.Port)
	if err != nil {
		return failingProber{err}
	}
	p, err := health.NewProber(health.Spec{Type: w.Check.Type, Addr: addr.String(), Path: w.Check.Path,
		GRPCService: w.Check.GRPCService, Timeout: time.Duration(w.Check.Timeout)})
	if err != nil {
		return failingProber{err}
	}
	return p
}

type failingProber struct{ err error }

func (p failingProber) Probe(context.Context) error { return p.err }
func (failingProber) Close()                        {}

// checked applies one probe result: a health change rebuilds the view and
// is reported to the control plane.
func (a *Agent) checked(ws *workloadState, err error) {
	healthy := err == nil
	a.mu.Lock()
	changed := ws.healthy != healthy && a.workloads[ws.w.Name] == ws
	if changed {
		ws.healthy = healthy
		if healthy {
			a.unejectPassed(ws.w.Namespace + "/" + ws.w.Name)
		}
		a.rebuildLocked()
	}
	a.mu.Unlock()
	if changed {
		a.notifyLocal()
		a.log.Info("agent: workload health changed", "name", ws.w.Name, "healthy", healthy, "err", err)
	}
}
