package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"

	"github.com/VictoriaMetrics/metrics"
)

// Local API on the agent's admin address:
//
//	GET    /healthz                 ok once serving
//	GET    /metrics                 Prometheus text
//	GET    /v1/workloads            local workloads with health
//	POST   /v1/workloads            register a workload (JSON Workload)
//	DELETE /v1/workloads/{name}     deregister
//	GET    /v1/routes               the agent's routing view: services, VIPs,
//	                                endpoints with tier and health
//	GET    /v1/status               node, control plane link, config version

// WorkloadStatus is a workload as the local API lists it.
type WorkloadStatus struct {
	Workload
	Healthy    bool `json:"healthy"`
	FromConfig bool `json:"fromConfig"`
}

// RouteStatus is one service in the routing view.
type RouteStatus struct {
	Service   string           `json:"service"`
	Balancer  string           `json:"balancer"`
	VIP       string           `json:"vip,omitempty"`
	VIP6      string           `json:"vip6,omitempty"`
	Ports     []string         `json:"ports"`
	Endpoints []EndpointStatus `json:"endpoints"`
}

// EndpointStatus is one endpoint in the routing view.
type EndpointStatus struct {
	Name    string `json:"name"`
	Node    string `json:"node,omitempty"`
	Address string `json:"address"`
	Tier    string `json:"tier"`
	Healthy bool   `json:"healthy"`
	Ejected bool   `json:"ejected"`
	Active  int64  `json:"active"`
	// Weight is the edge-aware weight now; LatencyMillis the peak EWMA.
	Weight        float64 `json:"weight"`
	LatencyMillis float64 `json:"latencyMillis"`
}

func (a *Agent) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		a.cfg.Metrics.WritePrometheus(w)
		metrics.WriteProcessMetrics(w)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		st := map[string]any{"node": a.self, "controlConnected": a.connected.Load(),
			"configVersion": a.cfgVersion, "storeId": a.storeID, "activeConnections": a.active.Load()}
		a.mu.Unlock()
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("GET /v1/workloads", func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		out := []WorkloadStatus{}
		for _, ws := range a.workloads {
			out = append(out, WorkloadStatus{Workload: ws.w, Healthy: ws.healthy, FromConfig: ws.fromConfig})
		}
		a.mu.Unlock()
		sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /v1/workloads", func(w http.ResponseWriter, r *http.Request) {
		wl, err := DecodeWorkload(http.MaxBytesReader(w, r.Body, 64<<10))
		if err == nil {
			err = wl.normalize(a.cfg.Node.Name) // fills the name to report
		}
		if err == nil {
			err = a.Register(wl)
		}
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"registered": wl.Name})
	})
	mux.HandleFunc("DELETE /v1/workloads/{name}", func(w http.ResponseWriter, r *http.Request) {
		err := a.Deregister(r.PathValue("name"))
		switch {
		case errors.Is(err, errNotFound):
			writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
		case err != nil:
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		default:
			writeJSON(w, http.StatusOK, map[string]string{"deregistered": r.PathValue("name")})
		}
	})
	mux.HandleFunc("GET /v1/routes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Routes())
	})
	return mux
}

// Routes returns the agent's routing view.
func (a *Agent) Routes() []RouteStatus {
	v := a.view.Load()
	out := []RouteStatus{}
	for key, sv := range v.services {
		rs := RouteStatus{Service: key, Balancer: sv.svc.Spec.Balancer, Endpoints: []EndpointStatus{}}
		if sv.vip4.IsValid() {
			rs.VIP = sv.vip4.String()
		}
		if sv.vip6.IsValid() {
			rs.VIP6 = sv.vip6.String()
		}
		for _, p := range sv.svc.Spec.Ports {
			rs.Ports = append(rs.Ports, fmt.Sprintf("%s/%d/%s", p.Name, p.Port, p.Protocol))
		}
		for _, ev := range sv.endpoints {
			rs.Endpoints = append(rs.Endpoints, EndpointStatus{Name: ev.ep.Meta.Name, Node: ev.ep.Spec.Node,
				Address: ev.ep.Spec.Address, Tier: ev.tier.String(), Healthy: ev.healthy,
				Ejected: a.isEjected(ev.key), Active: a.endpointActive(ev.key).Load(),
				Weight: a.weight(ev), LatencyMillis: a.stats(ev.key).latency() * 1000})
		}
		out = append(out, rs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out
}

// DecodeWorkload decodes a workload registration; unknown fields are errors.
func DecodeWorkload(r io.Reader) (Workload, error) {
	var wl Workload
	b, err := io.ReadAll(r)
	if err != nil {
		return wl, fmt.Errorf("read: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&wl); err != nil {
		return wl, fmt.Errorf("workload: %w", err)
	}
	if dec.More() {
		return wl, errors.New("workload: trailing data")
	}
	return wl, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
