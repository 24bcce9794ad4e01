package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"

	"github.com/fogmesh/fogmesh/internal/api"
)

// Workloads registered through the local API: Register and Deregister,
// and their save to and load from the state dir (workloads.json) so they
// survive a restart.

// Register adds or replaces a workload registered through the local API; it
// is saved so it survives a restart.
func (a *Agent) Register(w Workload) error {
	if err := w.normalize(a.cfg.Node.Name); err != nil {
		return err
	}
	a.mu.Lock()
	old := a.workloads[w.Name]
	if old != nil && old.fromConfig {
		a.mu.Unlock()
		return fmt.Errorf("workload %q comes from the config file", w.Name)
	}
	ws := &workloadState{w: w, healthy: true}
	a.workloads[w.Name] = ws
	if err := a.saveRegisteredLocked(); err != nil {
		// Not saved: the registration stays as it was, the previous
		// workload (still checked) included.
		if old != nil {
			a.workloads[w.Name] = old
		} else {
			delete(a.workloads, w.Name)
		}
		a.mu.Unlock()
		return err
	}
	if old != nil && old.stop != nil { // no check runs before Run
		old.stop()
	}
	if a.runCtx != nil && !a.closed { // after Close, nothing would wait for the check
		a.startCheckLocked(a.runCtx, ws)
	}
	a.rebuildLocked()
	a.mu.Unlock()
	a.notifyLocal()
	a.log.Info("agent: workload registered", "name", w.Name, "service", w.Namespace+"/"+w.Service)
	return nil
}

// Deregister removes a registered workload.
func (a *Agent) Deregister(name string) error {
	a.mu.Lock()
	ws := a.workloads[name]
	switch {
	case ws == nil:
		a.mu.Unlock()
		return fmt.Errorf("workload %q: %w", name, errNotFound)
	case ws.fromConfig:
		a.mu.Unlock()
		return fmt.Errorf("workload %q comes from the config file", name)
	}
	delete(a.workloads, name)
	if err := a.saveRegisteredLocked(); err != nil {
		a.workloads[name] = ws // not saved: still registered, also after a restart
		a.mu.Unlock()
		return err
	}
	if ws.stop != nil {
		ws.stop()
	}
	a.rebuildLocked()
	a.mu.Unlock()
	a.notifyLocal()
	return nil
}

var errNotFound = errors.New("not found")

func (a *Agent) saveRegisteredLocked() error {
	var ws []Workload
	for _, s := range a.workloads {
		if !s.fromConfig {
			ws = append(ws, s.w)
		}
	}
	sort.Slice(ws, func(i, j int) bool { return ws[i].Name < ws[j].Name })
	return saveJSON(a.wlPath, ws)
}

func (a *Agent) loadRegistered() error {
	b, err := os.ReadFile(a.wlPath)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var ws []Workload
	if err := json.Unmarshal(b, &ws); err != nil {
		return fmt.Errorf("%s: %w", a.wlPath, err)
	}
	for _, w := range ws {
		if err := w.normalize(a.cfg.Node.Name); err != nil {
			a.log.Error("agent: skipping saved workload", "name", w.Name, "err", err)
			continue
		}
		if a.workloads[w.Name] == nil {
			a.workloads[w.Name] = &workloadState{w: w, healthy: true}
		}
	}
	return nil
}

// localEndpointsLocked lists this node's workloads as endpoints, sorted by name.
func (a *Agent) localEndpointsLocked() []api.Endpoint {
	names := make([]string, 0, len(a.workloads))
	for n := range a.workloads {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]api.Endpoint, 0, len(names))
	for _, n := range names {
		ws := a.workloads[n]
		out = append(out, ws.w.endpoint(a.cfg.Node.Name, ws.healthy))
	}
	return out
}

// notifyLocal wakes the sync loop to send this node's endpoints.
func (a *Agent) notifyLocal() {
	select {
	case a.localChanged <- struct{}{}:
	default:
	}
}
