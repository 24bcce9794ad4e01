package control

import (
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// A node the control plane has not heard from since it started keeps its
// Ready state for NodeTimeout plus ReconnectGrace: after a restart a large
// fleet takes longer than NodeTimeout to reconnect, and marking the late
// nodes not ready, then ready at their first heartbeat, was two store
// writes per node in the storm (issue 13). A node that connected and went
// silent is still marked not ready after NodeTimeout.
func TestUnseenNodesGetAReconnectGrace(t *testing.T) {
	s := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 100 * time.Millisecond, NodeTimeout: 300 * time.Millisecond, NodeExpiry: time.Millisecond, ReconnectGrace: 4 * time.Second, Insecure: true})
	// ghost: registered as a previous run of the control plane would have
	// left it, never heard from since this start.
	if err := s.reg.registerNode(&api.Node{APIVersion: api.APIVersion, Kind: api.KindNode, Meta: api.Meta{Name: "ghost"},
		Spec: api.NodeSpec{Site: "shop-1", Region: "east", MeshAddress: "127.143.0.2:7072"}}); err != nil {
		t.Fatal(err)
	}
	ready := func(node string) bool {
		kv, ok, err := s.st.Get(api.KindNode + "/" + node)
		return err == nil && ok && strings.Contains(string(kv.Value), `"ready":true`)
	}
	if !ready("ghost") {
		t.Fatal("ghost not ready when registered")
	}
	start := time.Now()
	// silent: connects (a sign of life), then sends nothing.
	dialAgent(t, s, "silent")
	testenv.WaitFor(t, 10*time.Second, "silent marked not ready after NodeTimeout", func() bool { return !ready("silent") })
	if time.Since(start) < 3*time.Second && !ready("ghost") {
		t.Fatal("ghost, unseen since start, was marked not ready with the silent node, within NodeTimeout, not NodeTimeout + ReconnectGrace")
	}
	testenv.WaitFor(t, 20*time.Second, "ghost marked not ready after NodeTimeout + ReconnectGrace", func() bool { return !ready("ghost") })
	if d := time.Since(s.started); d < 4300*time.Millisecond {
		t.Fatalf("ghost marked not ready %v after start, before NodeTimeout + ReconnectGrace (4.3 s)", d)
	}
}
