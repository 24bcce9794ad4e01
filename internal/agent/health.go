package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"
)

// startCheckLocked starts the active health checker of a workload. The
// checker ends when ctx ends or the workload is removed.
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
		a.checkLoop(cctx, ws)
	}()
}

// checkLoop checks a workload every HealthInterval, and at once when woken
// after a passive failure. Health changes rebuild the view and are reported
// to the control plane.
func (a *Agent) checkLoop(ctx context.Context, ws *workloadState) {
	interval := time.Duration(a.cfg.HealthInterval)
	t := time.NewTimer(0)
	defer t.Stop()
	client := &http.Client{Timeout: time.Duration(ws.w.Check.Timeout),
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	if ws.w.Check.Type == "grpc" {
		client = newGRPCCheckClient(time.Duration(ws.w.Check.Timeout))
	}
	defer client.CloseIdleConnections()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-ws.wake:
			// A passive failure was just seen; give the process a moment
			// so a transient refusal is not re-checked instantly.
			select {
			case <-ctx.Done():
				return
			case <-time.After(interval / 4):
			}
		}
		err := check(ctx, client, ws.w)
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
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(interval)
	}
}

func check(ctx context.Context, client *http.Client, w Workload) error {
	e := w.endpoint("", true)
	addr, err := e.AddrPort(w.Check.Port)
	if err != nil {
		return err
	}
	timeout := time.Duration(w.Check.Timeout)
	switch w.Check.Type {
	case "grpc":
		return checkGRPC(ctx, client, addr.String(), w.Check.GRPCService)
	case "http":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr.String()+w.Check.Path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "fogmesh-health")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode >= 400 {
			return fmt.Errorf("http status %d", resp.StatusCode)
		}
		return nil
	default:
		d := net.Dialer{Timeout: timeout}
		c, err := d.DialContext(ctx, "tcp", addr.String())
		if err != nil {
			return err
		}
		return c.Close()
	}
}
