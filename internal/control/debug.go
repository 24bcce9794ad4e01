package control

import (
	"context"
	"errors"
	"net/http"
	"net/http/pprof"
)

// Profiling on the admin port: the Go runtime's profiles (net/http/pprof)
// under /debug/pprof/, so a stall can be looked at in the running control
// plane with `go tool pprof` and `go tool trace` instead of perf and an
// unstripped build. They need the admin role (a read-only token gets
// 403): a goroutine dump and the command line say more about the process
// than the read-only API does. Mutex and block profiles are empty unless
// the process records them (fogmesh control -debug-contention).
//
//	GET /debug/pprof/                 index
//	GET /debug/pprof/profile?seconds=N  CPU profile (N < 30, the write timeout)
//	GET /debug/pprof/trace?seconds=N    execution trace
//	GET /debug/pprof/{heap,goroutine,mutex,block,allocs,threadcreate}
//	GET /debug/pprof/cmdline | /debug/pprof/symbol

// roleKey carries the authenticated admin role in a request's context.
type roleKey struct{}

func withRole(r *http.Request, role string) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), roleKey{}, role))
}

// debugRoutes registers the profiling handlers.
func (s *Server) debugRoutes(mux *http.ServeMux) {
	admin := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			// With security off (-insecure) the whole admin API is open.
			if role, _ := r.Context().Value(roleKey{}).(string); s.sec != nil && role != RoleAdmin {
				writeError(w, http.StatusForbidden, errors.New("profiles need the admin role"))
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("GET /debug/pprof/", admin(pprof.Index))
	mux.HandleFunc("GET /debug/pprof/cmdline", admin(pprof.Cmdline))
	mux.HandleFunc("GET /debug/pprof/profile", admin(pprof.Profile))
	mux.HandleFunc("GET /debug/pprof/symbol", admin(pprof.Symbol))
	mux.HandleFunc("POST /debug/pprof/symbol", admin(pprof.Symbol))
	mux.HandleFunc("GET /debug/pprof/trace", admin(pprof.Trace))
}
