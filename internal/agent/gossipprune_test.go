package agent

import (
	"context"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestRemovedNodeLeavesNoGossipState: a node that leaves the registry
// takes gossip's word on it along: with node churn (vehicles, short-lived
// edge nodes) gossipDead and the verdicts' maps grew without bound, and a
// new node registered under a dead node's name started out dead. A death
// gossip reports after the removal (memberlist keeps the member until it
// is reaped) is not kept either. VIP range 127.53/16.
func TestRemovedNodeLeavesNoGossipState(t *testing.T) {
	a, err := New(Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
		DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", VIPRange: "127.53.0.0/16", Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	version := uint64(0)
	update := func(m *wire.Message) {
		t.Helper()
		version++
		m.Type, m.Version = wire.TypeUpdate, version
		if err := a.applyUpdate(m); err != nil {
			t.Fatal(err)
		}
	}
	register := func() {
		t.Helper()
		// Nothing listens at x's gossip address: x is dead at once.
		x, err := wire.NewResource(&api.Node{APIVersion: api.APIVersion, Kind: api.KindNode, Meta: api.Meta{Name: "x"},
			Spec: api.NodeSpec{Site: "s", Region: "r", GossipAddress: "127.0.0.1:1"}})
		if err != nil {
			t.Fatal(err)
		}
		update(&wire.Message{Resources: []wire.Resource{x}})
	}
	held := func() (saidDead, confirming, watched bool) {
		a.gv.mu.Lock()
		_, saidDead = a.gv.saidDead["x"]
		_, confirming = a.gv.confirming["x"]
		a.gv.mu.Unlock()
		a.watchMu.Lock()
		_, watched = a.nodeWatches["x"]
		a.watchMu.Unlock()
		return
	}

	register()
	a.onGossip("x", false)
	a.onGossipEvent("x", false) // checked: nothing answers at x's address
	testenv.WaitFor(t, 5*time.Second, "x's death to be confirmed", func() bool {
		a.gv.mu.Lock()
		defer a.gv.mu.Unlock()
		return !a.gv.confirming["x"]
	})
	if !a.isGossipDead("x") {
		t.Fatal("x is not dead after gossip said so")
	}
	_, release := a.watchNode(context.Background(), "x")
	release()

	update(&wire.Message{Removed: []wire.ResourceRef{{Type: api.KindNode, Name: "x"}}})
	if a.isGossipDead("x") {
		t.Error("x is still in gossipDead after it left the registry")
	}
	if saidDead, confirming, watched := held(); saidDead || confirming || watched {
		t.Errorf("state kept for x after it left the registry: saidDead %v, confirming %v, nodeWatches %v", saidDead, confirming, watched)
	}
	// memberlist reports x's death once more after the removal.
	a.onGossipEvent("x", false)
	if saidDead, confirming, _ := held(); saidDead || confirming {
		t.Errorf("a death gossip reports after x left is kept: saidDead %v, confirming %v", saidDead, confirming)
	}

	register() // a new node under the name
	if a.isGossipDead("x") {
		t.Fatal("a node registering again as x starts out dead")
	}
	ctx, releaseAgain := a.watchNode(context.Background(), "x")
	defer releaseAgain()
	if ctx.Err() != nil {
		t.Fatalf("a watch of the new x is cancelled: %v", context.Cause(ctx))
	}
}
