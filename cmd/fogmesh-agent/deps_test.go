package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestLeanImportGraph keeps the agent binary small enough for an ARM
// board: the heavy dependencies of the control plane and of tests never
// enter its import graph.
func TestLeanImportGraph(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	forbidden := []string{
		"google.golang.org/grpc", // +6 MB; the Workload API speaks gRPC framing itself
		"k8s.io/",                // Kubernetes client libraries
		"go.etcd.io/",            // etcd and bbolt: the control plane's store
		"github.com/envoyproxy/", // Envoy types
		"github.com/spiffe/go-spiffe/v2/workloadapi", // pulls grpc
		"github.com/spiffe/go-spiffe/v2/proto",
		"github.com/mochi-mqtt/", // the MQTT reference decoder of internal/mqtt's differential fuzz test
		"github.com/fogmesh/fogmesh/internal/control",
		"github.com/fogmesh/fogmesh/internal/store",
		"github.com/fogmesh/fogmesh/internal/netlab", // test topology: tests and bench only
		// quic-go carries mesh streams (+1.6 MB); its HTTP/3 layer does not belong in the agent.
		"github.com/quic-go/quic-go/http3",
		"github.com/quic-go/qpack",
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if strings.HasPrefix(pkg, f) {
				t.Errorf("the agent imports %s (forbidden prefix %s)", pkg, f)
			}
		}
	}
}

// TestLayering keeps the model packages at the bottom of the graph: the
// API types (api), the sync protocol's frames (wire) and the PKI
// (identity) import no package that implements a part of fogmesh, so a
// change in the masker, the audit log or the agent never ripples into the
// documents users write or the frames agents exchange.
func TestLayering(t *testing.T) {
	const mod = "github.com/fogmesh/fogmesh/internal/"
	allowed := map[string][]string{ // package → the fogmesh packages it may import
		// The network seam, and memnet (the tests' network) built on it.
		"netseam":        nil,
		"netseam/memnet": {"netseam"},
		// The per-client key of limits (IPv6 by /64).
		"clientip": nil,
		// The model packages.
		"api":      nil,
		"wire":     {"api"},
		"identity": {"api", "clientip"},
		// Reads and writes of a socket's descriptor (RawConn callbacks).
		"rawsys": nil,
		// The HTTP machinery knows no service, endpoint or agent.
		"httpproxy": {"rawsys"},
		// Traces and access logs know no service, endpoint or agent.
		"tracing":   nil,
		"accesslog": nil,
		// syncproto: the sync protocol's state machines, no I/O.
		"syncproto": {"api", "wire"},
	}
	for pkg, ok := range allowed {
		out, err := exec.Command("go", "list", "-deps", "../../internal/"+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			name, internal := strings.CutPrefix(dep, mod)
			if !internal || name == pkg {
				continue
			}
			if !slices.Contains(ok, name) {
				t.Errorf("internal/%s imports internal/%s; it may import only %v", pkg, name, ok)
			}
		}
	}
}
