package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/store/etcdstore/etcdtest"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

func TestExpiryVerdict(t *testing.T) {
	const timeout, expiry = 10 * time.Second, time.Minute
	never := time.Hour * 24
	ready := api.NodeStatus{Ready: true}
	unreach := api.NodeStatus{Ready: true, Unreachable: true}
	for _, c := range []struct {
		name              string
		st                api.NodeStatus
		silent, witnessed time.Duration
		want              expiryAction
	}{
		{"heartbeating", ready, time.Second, never, expiryKeep},
		{"just past the timeout", ready, 11 * time.Second, never, expiryUnreachable},
		{"already unreachable", unreach, 30 * time.Second, never, expiryKeep},
		{"past timeout and expiry, never witnessed", unreach, 71 * time.Second, never, expiryNotReady},
		{"past both at the first look", ready, 71 * time.Second, never, expiryNotReady},
		{"past both but witnessed just now", unreach, 10 * time.Minute, time.Second, expiryKeep},
		{"past both, witnessed and not marked yet", ready, 10 * time.Minute, time.Second, expiryUnreachable},
		{"witness too old", unreach, 10 * time.Minute, 11 * time.Second, expiryNotReady},
		{"not ready stays so", api.NodeStatus{}, 10 * time.Minute, never, expiryKeep},
	} {
		if got := expiryVerdict(c.st, c.silent, c.witnessed, timeout, expiry); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

// nodeStatus reads node's status from s's store.
func nodeStatus(t *testing.T, s *Server, node string) api.NodeStatus {
	t.Helper()
	kv, ok, err := s.st.Get(api.KindNode + "/" + node)
	if err != nil || !ok {
		return api.NodeStatus{}
	}
	var n api.Node
	if err := json.Unmarshal(kv.Value, &n); err != nil {
		t.Fatal(err)
	}
	return n.Status
}

// reporter heartbeats as node every 50ms, reporting a path to peer whose
// received bytes grow while grow is set, and extra paths to other peers
// without traffic; it stops with the test.
func reporter(t *testing.T, a *agentConn, peer string, grow *atomic.Bool, extra int) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		var in uint64
		for ctx.Err() == nil {
			if grow.Load() {
				in += 100
			}
			paths := []wire.PathReport{{Peer: peer, Kind: "direct", BytesIn: in}}
			for i := range extra {
				paths = append(paths, wire.PathReport{Peer: fmt.Sprintf("other%d", i), Kind: "direct", BytesIn: 7})
			}
			if wire.Write(a.c, &wire.Message{Type: wire.TypeHeartbeat, Paths: paths}) != nil {
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
}

// checkWitnessedStaysReady: silent goes silent while a peer's heartbeats
// show traffic from it. It is marked unreachable, and stays ready (its
// endpoints routable) for three times NodeTimeout + NodeExpiry; once the
// traffic stops it is marked not ready. leader is the replica that
// expires nodes.
func checkWitnessedStaysReady(t *testing.T, leader *Server, grow *atomic.Bool) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, "silent marked unreachable", func() bool { return nodeStatus(t, leader, "silent").Unreachable })
	bound := 3 * (leader.cfg.NodeTimeout + leader.cfg.NodeExpiry)
	for end := time.Now().Add(bound); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if st := nodeStatus(t, leader, "silent"); !st.Ready {
			t.Fatalf("silent marked not ready although a peer reports traffic from it: %+v", st)
		}
	}
	grow.Store(false)
	stopped := time.Now()
	testenv.WaitFor(t, 10*time.Second, "silent not ready once no peer reports traffic", func() bool { return !nodeStatus(t, leader, "silent").Ready })
	// The last witness may be a heartbeat (50ms) older than the stop.
	if d := time.Since(stopped); d < leader.cfg.NodeTimeout/2 {
		t.Fatalf("not ready %v after the traffic stopped, well before NodeTimeout (%v)", d, leader.cfg.NodeTimeout)
	}
}

// TestPeerTrafficKeepsASilentNodeRoutable: the witness rule of expiry.go
// on one control plane.
func TestPeerTrafficKeepsASilentNodeRoutable(t *testing.T) {
	s := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, NodeTimeout: 600 * time.Millisecond, NodeExpiry: 400 * time.Millisecond, Insecure: true})
	dialAgent(t, s, "silent")
	var grow atomic.Bool
	grow.Store(true)
	reporter(t, dialAgent(t, s, "peer"), "silent", &grow, 1)
	checkWitnessedStaysReady(t, s, &grow)
	if st := nodeStatus(t, s, "peer"); !st.Ready || st.Unreachable {
		t.Fatalf("the heartbeating peer: %+v", st)
	}
}

// TestReplicasShareWitnesses: the peer heartbeats to the follower; the
// leader, which expires nodes, learns of the traffic through the store.
func TestReplicasShareWitnesses(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := startReplica(t, c, "a", true), startReplica(t, c, "b", true)
	testenv.WaitFor(t, 10*time.Second, "one leader", func() bool { return a.st.Leader() != b.st.Leader() })
	leader, follower := a, b
	if b.st.Leader() {
		leader, follower = b, a
	}
	dialAgent(t, leader, "silent")
	var grow atomic.Bool
	grow.Store(true)
	reporter(t, dialAgent(t, follower, "peer"), "silent", &grow, 12) // more than a few: the map
	checkWitnessedStaysReady(t, leader, &grow)
}

// TestExpiryMetrics: /metrics shows a silent node as unreachable, and as
// kept routable by a peer's witness, while the rule keeps it ready; once
// no peer reports traffic it is expired, the gauges fall back to 0 and the
// counters name both transitions.
func TestExpiryMetrics(t *testing.T) {
	s := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.55.0.1:0", SyncAddr: "127.55.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, NodeTimeout: 600 * time.Millisecond, NodeExpiry: 400 * time.Millisecond, Insecure: true})
	const (
		unreachable = "fogmesh_control_nodes_unreachable"
		witnessed   = "fogmesh_control_nodes_unreachable_witnessed"
		toUnreach   = `fogmesh_control_node_expiries_total{to="unreachable"}`
		toNotReady  = `fogmesh_control_node_expiries_total{to="not_ready"}`
	)
	dialAgent(t, s, "silent")
	var grow atomic.Bool
	grow.Store(true)
	reporter(t, dialAgent(t, s, "peer"), "silent", &grow, 0)
	var buf bytes.Buffer
	s.cfg.Metrics.WritePrometheus(&buf)
	for _, m := range []string{unreachable, witnessed, toUnreach, toNotReady} {
		if !strings.Contains("\n"+buf.String(), "\n"+m+" ") {
			t.Fatalf("/metrics has no %s:\n%s", m, buf.String())
		}
		if v := metricValue(t, s, m); v != 0 {
			t.Fatalf("%s = %v before any node went silent, want 0", m, v)
		}
	}
	testenv.WaitFor(t, 10*time.Second, "silent unreachable and witnessed in /metrics", func() bool {
		return metricValue(t, s, unreachable) == 1 && metricValue(t, s, witnessed) == 1
	})
	if st := nodeStatus(t, s, "silent"); !st.Ready || !st.Unreachable {
		t.Fatalf("the gauges say unreachable and ready, the store says %+v", st)
	}
	if v := metricValue(t, s, toUnreach); v != 1 {
		t.Fatalf("%s = %v, want 1", toUnreach, v)
	}
	grow.Store(false)
	testenv.WaitFor(t, 10*time.Second, "silent expired in /metrics", func() bool {
		return metricValue(t, s, toNotReady) == 1 && metricValue(t, s, unreachable) == 0 && metricValue(t, s, witnessed) == 0
	})
	if st := nodeStatus(t, s, "silent"); st.Ready {
		t.Fatalf("not_ready counted, the store says %+v", st)
	}
	if v := metricValue(t, s, toUnreach); v != 1 {
		t.Fatalf("%s = %v after the expiry, want still 1", toUnreach, v)
	}
}
