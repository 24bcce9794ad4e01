package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
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
		if _, err := s.st.Rev(); err != nil {
			http.Error(w, "store: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		s.cfg.Metrics.WritePrometheus(w)
		metrics.WriteProcessMetrics(w)
	})
	mux.HandleFunc("GET /v1/{kind}", s.handleList)
	mux.HandleFunc("POST /v1/apply", s.handleApply)
	mux.HandleFunc("DELETE /v1/nodes/{name}", func(w http.ResponseWriter, r *http.Request) {
		s.handleDelete(w, api.KindNode, "", r.PathValue("name"))
	})
	mux.HandleFunc("DELETE /v1/{kind}/{namespace}/{name}", func(w http.ResponseWriter, r *http.Request) {
		kind := plural[r.PathValue("kind")]
		if kind == "" || kind == api.KindNode {
			writeError(w, http.StatusNotFound, fmt.Errorf("unknown resource %q", r.PathValue("kind")))
			return
		}
		s.handleDelete(w, kind, r.PathValue("namespace"), r.PathValue("name"))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
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
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, api.MaxDocumentBytes))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("read body: %w", err))
		return
	}
	objs, warnings, err := api.DecodeWithWarnings(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	rev, err := s.reg.apply(objs)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	s.mApplies.Inc()
	resp := ApplyResponse{Version: rev, Warnings: warnings}
	for _, o := range objs {
		resp.Applied = append(resp.Applied, api.ObjectKey(o))
	}
	s.log.Info("control: applied", "objects", resp.Applied, "version", rev)
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) handleDelete(w http.ResponseWriter, kind, ns, name string) {
	rev, err := s.reg.deleteObj(kind, ns, name)
	switch {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, err)
	case err != nil:
		writeError(w, http.StatusInternalServerError, err)
	default:
		s.log.Info("control: deleted", "kind", kind, "namespace", ns, "name", name, "version", rev)
		writeJSON(w, http.StatusOK, map[string]uint64{"version": rev})
	}
}
