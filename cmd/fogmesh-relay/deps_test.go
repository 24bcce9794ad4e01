package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLeanImportGraph keeps the relay binary small: it is the relay, its
// join client and the PKI, never the agent, the control plane or their
// heavy dependencies.
func TestLeanImportGraph(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	forbidden := []string{
		"google.golang.org/grpc",
		"google.golang.org/protobuf", // the Workload API's encoding: agents only
		"k8s.io/",
		"go.etcd.io/",
		"github.com/envoyproxy/",
		"github.com/spiffe/go-spiffe/v2/workloadapi",
		"github.com/spiffe/go-spiffe/v2/proto",
		"github.com/hashicorp/",  // memberlist: the agents' gossip
		"github.com/quic-go/",    // the agents' mesh carrier; the relay forwards bytes
		"github.com/mochi-mqtt/", // a test-only reference decoder
		"github.com/fogmesh/fogmesh/internal/agent",
		"github.com/fogmesh/fogmesh/internal/control",
		"github.com/fogmesh/fogmesh/internal/store",
		"github.com/fogmesh/fogmesh/internal/svid",
		"github.com/fogmesh/fogmesh/internal/netlab",
	}
	for _, pkg := range strings.Fields(string(out)) {
		// internal/cli carries the agent command; cli/base is the plumbing alone.
		if pkg == "github.com/fogmesh/fogmesh/internal/cli" {
			t.Errorf("the relay imports %s", pkg)
		}
		for _, f := range forbidden {
			if strings.HasPrefix(pkg, f) {
				t.Errorf("the relay imports %s (forbidden prefix %s)", pkg, f)
			}
		}
	}
}
