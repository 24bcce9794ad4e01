package agent

import (
	"io"
	"log"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/gossip"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestGossipHearsOnlySitePeers: the agent's gossip hears only the nodes of
// its site at the gossip address the control plane has for them. A member
// that knows the key (or any process, with gossip unencrypted) could
// otherwise join under any name, at any address: names without end (kept
// by memberlist, and in gossipDead once they "die"), a node of another site
// (gossip would then decide its liveness here), or a site peer that is down,
// spoken for from another address (its endpoints would be picked again).
// VIP range 127.214/16.
func TestGossipHearsOnlySitePeers(t *testing.T) {
	a, err := New(Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
		DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", VIPRange: "127.214.0.0/16", Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	member := func(name string) *gossip.Gossip {
		g, err := gossip.New(gossip.Config{Name: name, BindAddr: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Close() })
		return g
	}
	b := member("b")             // a site peer
	x := member("x")             // a node of another site
	impostor := member("c")      // speaks for c, which is down
	stranger := member("evil-1") // no node at all
	node := func(name, site, gossipAddr string) *api.Node {
		return &api.Node{Meta: api.Meta{Name: name}, Spec: api.NodeSpec{Site: site, Region: "r", GossipAddress: gossipAddr}}
	}
	a.mu.Lock()
	a.res.nodes["b"] = node("b", "s", b.Addr())
	a.res.nodes["c"] = node("c", "s", "127.0.0.1:1") // nothing listens there
	a.res.nodes["x"] = node("x", "s2", x.Addr())
	a.mu.Unlock()
	a.joinSitePeers()
	testenv.WaitFor(t, 10*time.Second, "a's gossip to hear b", func() bool { return slices.Contains(a.gossip.Members(), "b") })

	hostile := []string{"x", "c", "evil-1"}
	for i, g := range []*gossip.Gossip{x, impostor, stranger} {
		if _, err := g.Join([]string{a.GossipAddr()}); err != nil {
			t.Fatalf("%s joins a: %v", hostile[i], err)
		}
	}
	// a merges a joiner's state after answering it; wait until it has
	// ignored each (or, the bug, taken one in).
	testenv.WaitFor(t, 10*time.Second, "a to ignore x, c's impostor and evil-1", func() bool {
		if m := a.gossip.Members(); slices.ContainsFunc(hostile, func(n string) bool { return slices.Contains(m, n) }) {
			t.Fatalf("a's gossip members %v: a member it must not hear got in", m)
		}
		return a.m.gossipIgnored.Get() >= uint64(len(hostile))
	})
	if m := a.gossip.Members(); !slices.Equal(slices.Sorted(slices.Values(m)), []string{"b", "n"}) {
		t.Fatalf("a's gossip members %v, want [b n]", m)
	}
}

// TestGossipForgedDeathIsIgnored: a member that knows the key can declare
// any node dead (SWIM accusations carry no proof; here an impostor joins
// as b from another address, which a ignores, and leaves, which
// broadcasts b's death). a acts on a death only once its own ping of the
// node's registered gossip address goes unanswered: a healthy b is kept,
// not skipped site-wide and its sessions dropped.
func TestGossipForgedDeathIsIgnored(t *testing.T) {
	a, err := New(Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
		DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", VIPRange: "127.214.0.0/16", Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err := gossip.New(gossip.Config{Name: "b", BindAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	a.mu.Lock()
	a.res.nodes["b"] = &api.Node{Meta: api.Meta{Name: "b"}, Spec: api.NodeSpec{Site: "s", Region: "r", GossipAddress: b.Addr()}}
	a.mu.Unlock()
	a.joinSitePeers()
	testenv.WaitFor(t, 10*time.Second, "a's gossip to hear b", func() bool { return slices.Contains(a.gossip.Members(), "b") })

	// The impostor's incarnation must not be older than a's record of b
	// (b refutes any suspicion a loaded machine may cause): each
	// UpdateNode takes the next one.
	mc := memberlist.DefaultLANConfig()
	mc.Name, mc.BindAddr, mc.BindPort = "b", "127.0.0.1", 0
	mc.Logger = log.New(io.Discard, "", 0)
	impostor, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { impostor.Shutdown() })
	if _, err := impostor.Join([]string{a.GossipAddr()}); err != nil {
		t.Fatal(err)
	}
	for range 100 {
		impostor.UpdateNode(5 * time.Millisecond) // a times out: it ignores the impostor's alive
	}
	impostor.Leave(time.Second) // broadcasts "b left"
	testenv.WaitFor(t, 10*time.Second, "a to check the forged death of b", func() bool {
		if a.m.gossipDeaths.Get() > 0 || a.isGossipDead("b") {
			t.Fatalf("a took b, which answers, for dead")
		}
		return a.m.gossipDisproved.Get() >= 1
	})
	// b refutes the accusation and is a member again; when it does
	// leave, it no longer answers, and a believes it.
	testenv.WaitFor(t, 10*time.Second, "b to refute its death", func() bool { return slices.Contains(a.gossip.Members(), "b") })
	b.Close()
	testenv.WaitFor(t, 10*time.Second, "a to take b for dead once it has left", func() bool { return a.isGossipDead("b") })
	if n := a.m.gossipDeaths.Get(); n != 1 {
		t.Fatalf("%d deaths counted, want 1", n)
	}
}

// TestGossipPortKeptAcrossRestart: an agent whose gossipAddr asks for any
// port (":0") gossips on the same port after a restart from the same state
// dir. Its peers hear a member only at its registered gossip address, so
// on a new port it would go unheard (and stay dead to them) until the
// control plane registers the new one: for good while the site is cut off.
func TestGossipPortKeptAcrossRestart(t *testing.T) {
	cfg := Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
		DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", VIPRange: "127.52.0.0/16", Insecure: true}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	first := a.GossipAddr()
	a.Close()
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got := b.GossipAddr(); got != first {
		t.Fatalf("gossip at %s after a restart, at %s before: its peers do not hear it there until the control plane tells them", got, first)
	}
}
