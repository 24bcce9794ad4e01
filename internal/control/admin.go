package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"syscall"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/store"
)

// Admin API (JSON):
//
//	GET    /healthz
//	GET    /metrics
//	GET    /v1/nodes | /v1/services | /v1/endpoints | /v1/routes | /v1/destinationpolicies
//	       | /v1/authorizationpolicies | /v1/sessions                      ?namespace=NS
//	POST   /v1/apply                                  body: YAML or JSON documents
//	DELETE /v1/nodes/{name}
//	DELETE /v1/{services|endpoints|routes|destinationpolicies|authorizationpolicies}/{namespace}/{name}
//	GET    /v1/audit[/{node}]                         ?verify=1 (audit.go)
//	DELETE /v1/audit/{node}.archived-{time}           an archived chain (auditarchive.go)
//	GET    /debug/pprof/...                           profiles, admin role (debug.go)
//	GET    /ui, /ui/api/state, /ui/static/...         the web UI (ui.go); /ui/login needs no authentication
//
// Every successful apply and delete is written to the control plane's
// audit chain before the answer is sent.
//
// Errors are {"error": "..."} with 400 (bad input), 404 or 500.

// ListResponse is the body of a GET list.
type ListResponse struct {
	Version uint64            `json:"version"`
	Items   []json.RawMessage `json:"items"`
}

// ApplyResponse is the body of a successful apply.
type ApplyResponse struct {
	Version uint64   `json:"version"`
	Applied []string `json:"applied"` // Kind/namespace/name
	// Warnings name fields of the documents that were ignored (Istio
	// fields fogmesh does not support).
	Warnings []string `json:"warnings,omitempty"`
}

var plural = map[string]string{"nodes": api.KindNode, "services": api.KindService, "endpoints": api.KindEndpoint,
	"routes": api.KindRoute, "destinationpolicies": api.KindDestinationPolicy, "sessions": api.KindSession,
	"authorizationpolicies": api.KindAuthorizationPolicy}

func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.st.Health(); err != nil {
			// Degraded: streams go on serving what agents have; writes fail.
			http.Error(w, "degraded: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
		if s.st.Shared() {
			fmt.Fprintf(w, "leader: %s (this replica: %s)\n", s.leaderName(), s.cfg.Name)
		}
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		s.cfg.Metrics.WritePrometheus(w)
		metrics.WriteProcessMetrics(w)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Status())
	})
	mux.HandleFunc("GET /v1/{kind}", s.handleList)
	mux.HandleFunc("GET /v1/regions", s.handleRegions)
	mux.HandleFunc("GET /v1/cluster", s.handleCluster)
	mux.HandleFunc("GET /v1/paths", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Paths())
	})
	mux.HandleFunc("GET /v1/audit", s.handleAudit)
	mux.HandleFunc("GET /v1/audit/{node}", s.handleAudit)
	mux.HandleFunc("DELETE /v1/audit/{node}", s.handleAuditArchiveDelete)
	mux.HandleFunc("POST /v1/apply", s.handleApply)
	mux.HandleFunc("DELETE /v1/nodes/{name}", func(w http.ResponseWriter, r *http.Request) {
		s.handleDelete(w, r, api.KindNode, "", r.PathValue("name"))
	})
	mux.HandleFunc("DELETE /v1/{kind}/{namespace}/{name}", func(w http.ResponseWriter, r *http.Request) {
		kind := plural[r.PathValue("kind")]
		if kind == "" || kind == api.KindNode {
			writeError(w, http.StatusNotFound, fmt.Errorf("unknown resource %q", r.PathValue("kind")))
			return
		}
		s.handleDelete(w, r, kind, r.PathValue("namespace"), r.PathValue("name"))
	})
	s.securityRoutes(mux)
	s.debugRoutes(mux)
	s.uiRoutes(mux)
	s.statsRoutes(mux)
	return nosniff(sameOrigin(s.authenticate(mux)))
}

// nosniff: a browser takes every answer of the admin port as the type it
// says (an error's JSON may quote what a client sent; it must never be
// read as HTML or script).
func nosniff(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		next.ServeHTTP(w, r)
	})
}

// sameOrigin refuses a request that changes state (any method but GET,
// HEAD and OPTIONS) when a browser marks it cross-origin: Sec-Fetch-Site
// other than same-origin or none, else an Origin whose host is not the
// request's Host. Credentials do not help it: a browser with an admin
// client certificate presents it on the requests any page makes it send
// (a form posting text/plain "JSON" to /v1/apply, or nothing at all to
// /v1/ca/rotate), and in insecure mode there are none to present. The
// CLI and other clients send neither header and pass.
func sameOrigin(next http.Handler) http.Handler {
	p := http.NewCrossOriginProtection()
	p.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusForbidden, errors.New("cross-origin request refused: a browser page of another origin may not change state here"))
	}))
	return p.Handler(next)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// storeErrorCode is the status of an error that may come from the store:
// 507 for a full disk, 503 for another failed write (nothing was stored
// and the caller may retry), else def (the request's own fault).
func storeErrorCode(err error, def int) int {
	switch {
	case errors.Is(err, syscall.ENOSPC):
		return http.StatusInsufficientStorage
	case errors.Is(err, store.ErrWrite):
		return http.StatusServiceUnavailable
	}
	return def
}

func writeError(w http.ResponseWriter, code int, err error) {
	if errors.Is(err, store.ErrUnavailable) || errors.Is(err, errNotLeader) {
		code = http.StatusServiceUnavailable // etcd down or quorum lost: retry later or on another replica
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func (s *Server) handleList(w http.ResponseWriter, r *http.Request) {
	kind := plural[r.PathValue("kind")]
	if kind == "" {
		writeError(w, http.StatusNotFound, fmt.Errorf("unknown resource %q (want nodes, services, endpoints, routes, destinationpolicies, authorizationpolicies or sessions)", r.PathValue("kind")))
		return
	}
	objs, rev, err := s.reg.list(kind)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	ns := r.URL.Query().Get("namespace")
	resp := ListResponse{Version: rev, Items: []json.RawMessage{}}
	for _, o := range objs {
		if ns != "" && kind != api.KindNode && o.GetMeta().Namespace != ns {
			continue
		}
		if n, ok := o.(*api.Node); ok {
			s.fillLive(n)
		}
		b, err := json.Marshal(o)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		resp.Items = append(resp.Items, b)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleApply(w http.ResponseWriter, r *http.Request) {
	ph := s.adminPhases()
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, api.MaxDocumentBytes))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("read body: %w", err))
		return
	}
	objs, warnings, err := api.DecodeWithOptions(body, api.DecodeOptions{IstioRootNamespace: s.cfg.IstioRootNamespace})
	if err == nil {
		err = admitTopics(objs)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	ph.mark("decode")
	rev, err := s.reg.applyAdmin(objs)
	ph.mark("store")
	if errors.Is(err, ErrOwned) {
		writeError(w, http.StatusConflict, err)
		return
	}
	if err != nil {
		writeError(w, storeErrorCode(err, http.StatusBadRequest), err)
		return
	}
	s.mApplies.Inc()
	warnings = append(warnings, s.routeConflicts(objs)...)
	resp := ApplyResponse{Version: rev, Warnings: warnings}
	for _, o := range objs {
		resp.Applied = append(resp.Applied, api.ObjectKey(o))
	}
	s.log.Info("control: applied", "objects", resp.Applied, "version", rev)
	ph.mark("log")
	s.auditAdmin(r, "apply", resp.Applied, fmt.Sprintf("version %d", rev))
	ph.mark("audit")
	writeJSON(w, http.StatusOK, resp)
	ph.mark("answer")
	ph.done("apply")
}

// admitTopics refuses an authorization policy whose MQTT topic filters
// name a shared subscription ($share/GROUP/FILTER): the agents authorize
// one as the FILTER it receives, so such a rule would never match (a DENY
// that denies nothing). Checked at apply only, not in api's validation:
// a policy stored before still decodes everywhere, as the no-op it was.
func admitTopics(objs []api.Object) error {
	for _, o := range objs {
		p, ok := o.(*api.AuthorizationPolicy)
		if !ok {
			continue
		}
		for i, r := range p.Spec.Rules {
			for j, op := range r.To {
				for _, fs := range []struct {
					field   string
					filters []string
				}{{"publish", op.Publish}, {"subscribe", op.Subscribe}} {
					for k, f := range fs.filters {
						if rest, ok := strings.CutPrefix(f, "$share/"); ok {
							_, filter, _ := strings.Cut(rest, "/")
							return fmt.Errorf("AuthorizationPolicy %s: spec.rules[%d].to[%d].%s[%d]: %q is a shared subscription, which the agents match as the filter it receives: write %q",
								p.Meta.Key(), i, j, fs.field, k, f, filter)
						}
					}
				}
			}
		}
	}
	return nil
}

func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request, kind, ns, name string) {
	ph := s.adminPhases()
	rev, err := s.deleteObj(kind, ns, name)
	ph.mark("store")
	switch {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, err)
	case errors.Is(err, ErrOwned):
		writeError(w, http.StatusConflict, err)
	case err != nil:
		writeError(w, storeErrorCode(err, http.StatusInternalServerError), err)
	default:
		s.log.Info("control: deleted", "kind", kind, "namespace", ns, "name", name, "version", rev)
		obj := kind + "/" + name
		if ns != "" {
			obj = kind + "/" + ns + "/" + name
		}
		ph.mark("log")
		s.auditAdmin(r, "delete", []string{obj}, fmt.Sprintf("version %d", rev))
		ph.mark("audit")
		writeJSON(w, http.StatusOK, map[string]uint64{"version": rev})
		ph.mark("answer")
		ph.done("delete")
	}
}

// routeConflicts warns about every applied route whose service another
// route also routes: only one route decides a service's requests (the
// newest; agents pick the highest version), where Istio would merge
// VirtualServices of one host for a gateway and warn otherwise.
func (s *Server) routeConflicts(applied []api.Object) []string {
	var mine []*api.Route
	for _, o := range applied {
		if r, ok := o.(*api.Route); ok {
			mine = append(mine, r)
		}
	}
	if len(mine) == 0 {
		return nil
	}
	all, _, err := s.reg.list(api.KindRoute)
	if err != nil {
		return []string{fmt.Sprintf("cannot check for other routes of the same service: %v", err)}
	}
	var warnings []string
	for _, r := range mine {
		var names []string
		var newest *api.Route
		for _, o := range all {
			other := o.(*api.Route)
			if other.Meta.Namespace != r.Meta.Namespace || other.Spec.Service != r.Spec.Service {
				continue
			}
			if newest == nil || other.Meta.Version > newest.Meta.Version {
				newest = other
			}
			if other.Meta.Name != r.Meta.Name {
				names = append(names, other.Meta.Name)
			}
		}
		if len(names) == 0 || newest == nil {
			continue
		}
		sort.Strings(names)
		warnings = append(warnings, fmt.Sprintf("route %s: service %s/%s is also routed by %s; routes are not merged: only the newest, %s, applies",
			r.Meta.Key(), r.Meta.Namespace, r.Spec.Service, strings.Join(names, ", "), newest.Meta.Key()))
	}
	return warnings
}
