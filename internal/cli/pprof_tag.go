//go:build fogmesh_pprof

// Profiling build (go build -tags fogmesh_pprof): with FOGMESH_PPROF_ADDR
// set to a loopback address:port, the process (agent or control plane)
// serves net/http/pprof there, so bench/bench.sh (PPROF=1) can take a CPU
// profile of an agent under load. Not in the default build: the agent's
// admin port has no profiles, and the lean binary keeps net/http/pprof out.
package cli

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
)

func init() {
	addr := os.Getenv("FOGMESH_PPROF_ADDR")
	if addr == "" {
		return
	}
	if _, err := servePprof(addr); err != nil {
		fmt.Fprintf(os.Stderr, "fogmesh: FOGMESH_PPROF_ADDR: %v\n", err)
		os.Exit(2)
	}
}

// servePprof serves the profiles on addr, which must be a loopback
// address:port (profiles say too much about the process for any other).
func servePprof(addr string) (net.Addr, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", addr, err)
	}
	if !ap.Addr().IsLoopback() {
		return nil, fmt.Errorf("%q: not a loopback address", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	go http.Serve(ln, mux)
	return ln.Addr(), nil
}
