package agent

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/meshdns"
	"github.com/fogmesh/fogmesh/internal/paths"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Local API on the agent's admin address:
//
//	GET    /healthz                 ok once serving
//	GET    /v1/paths                this agent's path to each peer (paths.Status)
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
	Service  string `json:"service"`
	Balancer string `json:"balancer"`
	VIP      string `json:"vip,omitempty"`
	VIP6     string `json:"vip6,omitempty"`
	// Names are the DNS names the agent answers for the service.
	Names []string `json:"names,omitempty"`
	// ClusterIPs are the service's Kubernetes ClusterIPs; Captured says
	// whether this agent redirects them into itself (see /v1/status
	// capture for why not).
	ClusterIPs []string         `json:"clusterIPs,omitempty"`
	Captured   bool             `json:"captured,omitempty"`
	Ports      []string         `json:"ports"`
	Endpoints  []EndpointStatus `json:"endpoints"`
	// Unbound are the service's VIP:ports this agent cannot bind (another
	// process holds them): clients of this node cannot reach it there.
	Unbound []api.VIPBindFailure `json:"unbound,omitempty"`
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

// LocalTokenFile, in a secure agent's state directory, holds the bearer
// token (mode 0600) that registering or deregistering a workload through
// the local API needs: a workload's identity (its service account) becomes
// an SVID and a source identity for authorization, so only whoever may read
// the agent's state may create one.
const LocalTokenFile = "local-api.token"

// initLocalToken loads or makes the local API token (secure mode only).
func (a *Agent) initLocalToken() error {
	path := filepath.Join(a.cfg.StateDir, LocalTokenFile)
	if b, err := os.ReadFile(path); err == nil {
		tok := bytes.TrimSpace(b)
		// A token a client can send ("Authorization: Bearer TOKEN"):
		// a control character (a damaged file) could never be matched.
		if len(tok) >= 32 && !bytes.ContainsFunc(tok, func(r rune) bool { return r < 0x20 && r != '\t' || r == 0x7f }) {
			a.localToken = string(tok)
			return nil
		}
		a.log.Warn("agent: local API token file unusable (under 32 bytes, or a control character); a new token is made", "file", path)
	}
	var raw [24]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return err
	}
	tok := "fml1." + hex.EncodeToString(raw[:])
	if err := writeFileAtomic(path, []byte(tok+"\n")); err != nil {
		return fmt.Errorf("agent: local API token: %w", err)
	}
	a.localToken = tok
	return nil
}

// localAuthorized checks the bearer token of a changing local API call; it
// answers 401 itself when the call may not proceed.
func (a *Agent) localAuthorized(w http.ResponseWriter, r *http.Request) bool {
	if a.localToken == "" {
		return true // insecure mode
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if ok && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(a.localToken)) == 1 {
		return true
	}
	writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "local API: changes need the token in " +
		filepath.Join(a.cfg.StateDir, LocalTokenFile) + " (fogmesh register -agent-token or $FOGMESH_AGENT_TOKEN)"})
	return false
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
			"configVersion": a.cfgVersion, "storeId": a.storeID, "activeConnections": a.active.Load(),
			"capture": a.capture.status, "fastPath": a.fast.status, "dnsAddr": a.DNSAddr(), "time": time.Now().UTC()}
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
		if !a.localAuthorized(w, r) {
			return
		}
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
		if !a.localAuthorized(w, r) {
			return
		}
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
	mux.HandleFunc("GET /v1/paths", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Paths())
	})
	return mux
}

// Paths returns the agent's path to every peer it has dialed, its relays
// and whether punching runs.
func (a *Agent) Paths() paths.Status {
	return a.peers.Status()
}

// pathReports are the agent's paths as its heartbeat reports them.
func (a *Agent) pathReports() []wire.PathReport {
	var out []wire.PathReport
	for _, p := range a.peers.Status().Paths {
		if len(out) == wire.MaxPathReports {
			break
		}
		out = append(out, wire.PathReport{Peer: p.Peer, Kind: string(p.Kind), Carrier: p.Carrier, Relay: p.Relay, Remote: p.Remote,
			RTTMillis: p.RTTMs, BytesOut: p.BytesOut, BytesIn: p.BytesIn, Since: p.Since})
	}
	return out
}

// Routes returns the agent's routing view.
func (a *Agent) Routes() []RouteStatus {
	v := a.view.Load()
	out := []RouteStatus{}
	if !a.serving.Load() {
		return out // Run has not bound the VIP listeners yet
	}
	capturing := a.CaptureStatus().Active
	failed := a.VIPBindFailures()
	for key, sv := range v.services {
		rs := RouteStatus{Service: key, Balancer: sv.svc.Spec.Balancer, Endpoints: []EndpointStatus{},
			Names: a.dnsNames(sv.svc)}
		for _, f := range failed {
			if f.Service == key {
				rs.Unbound = append(rs.Unbound, f)
			}
		}
		for _, ip := range sv.svc.ClusterAddrs() {
			rs.ClusterIPs = append(rs.ClusterIPs, ip.String())
			for _, p := range sv.svc.Spec.Ports {
				_, ok := v.byClusterIP[netip.AddrPortFrom(ip, uint16(p.Port))]
				if p.Protocol == "udp" {
					_, ok = v.udpClusterIP[netip.AddrPortFrom(ip, uint16(p.Port))]
				}
				rs.Captured = rs.Captured || capturing && ok && (ip.Is4() || a.capture.ln6 != nil)
			}
		}
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
				Ejected: a.isEjectedAnywhere(ev.key), Active: a.endpointActive(ev.key).Load(),
				Weight: a.weight(ev), LatencyMillis: a.stats(ev.key).latency() * 1000})
		}
		out = append(out, rs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out
}

// dnsNames are the names the agent's DNS answers for s: the mesh name,
// the short mesh name in the default namespace, and the cluster name.
func (a *Agent) dnsNames(s *api.Service) []string {
	ns := api.NamespaceOr(s.Meta.Namespace)
	names := []string{s.Meta.Name + "." + ns + "." + a.cfg.MeshDomain}
	if ns == api.DefaultNamespace {
		names = append(names, s.Meta.Name+"."+a.cfg.MeshDomain)
	}
	if a.cfg.ClusterDomain != meshdns.NoClusterDomain {
		names = append(names, s.Meta.Name+"."+ns+".svc."+a.cfg.ClusterDomain)
	}
	return names
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

// advertisedAdmin is the address the node registers for its local API:
// the bound one, or, when bound to every interface, on the host of the
// advertised mesh address (the one its peers reach).
func advertisedAdmin(bound, meshAdvertise string) string {
	ap, err := netip.ParseAddrPort(bound)
	if err != nil || !ap.Addr().IsUnspecified() {
		return bound
	}
	if m, err := netip.ParseAddrPort(meshAdvertise); err == nil && !m.Addr().IsUnspecified() {
		return netip.AddrPortFrom(m.Addr(), ap.Port()).String()
	}
	return bound
}
