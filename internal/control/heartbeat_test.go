package control

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// A heartbeat from a node that is ready, the common case (2,000 a second
// at 10,000 agents), does not read and decode the node from the store: the
// feed holds it decoded. A node marked not ready is made ready again at its
// next heartbeat.
func TestHeartbeatOfAReadyNodeReadsNoStore(t *testing.T) {
	s := startQuietServer(t)
	a := dialAgent(t, s, "hb")
	a.send(&wire.Message{Type: wire.TypeSubscribe})
	a.recvUpdate()
	fd := feedOf(t, s)
	rev, _ := s.st.Rev()
	testenv.WaitFor(t, 5*time.Second, "the feed at the store's revision", func() bool { cur, _ := fd.watch(); return cur >= rev })
	hb := func() {
		t.Helper()
		a.send(&wire.Message{Type: wire.TypeHeartbeat, Load: 1})
		for range 20 {
			if m := a.recv(); m.Type == wire.TypeHeartbeat {
				return
			}
		}
		t.Fatal("no heartbeat answer")
	}
	before := readyReads.Load()
	for range 10 {
		hb()
	}
	if n := readyReads.Load() - before; n != 0 {
		t.Fatalf("10 heartbeats of a ready node read the store %d times, want 0", n)
	}
	// Not ready (as the expiry would mark it): the next heartbeat reads
	// the store and marks it ready again.
	if err := s.reg.setNodeReady("hb", false); err != nil {
		t.Fatal(err)
	}
	ready := func() bool {
		kv, ok, err := s.st.Get("Node/hb")
		return err == nil && ok && strings.Contains(string(kv.Value), `"ready":true`)
	}
	if ready() {
		t.Fatal("still ready")
	}
	hb()
	testenv.WaitFor(t, 5*time.Second, "hb ready again after a heartbeat", ready)
}

// After a start, the empty local{} every agent sends on connect costs no
// write transaction, not even the first: the endpoints-by-node index is
// built from a read. In a write transaction, the first one held the
// store's writer while it decoded every endpoint, and every agent that
// connected meanwhile queued behind it (930 streams in one dump of a
// 3,000-agent resync, issue 13).
func TestEmptyLocalAfterStartWritesNothing(t *testing.T) {
	s := startQuietServer(t)
	var objs []api.Object
	for i := range 50 {
		objs = append(objs, svcObj("demo", fmt.Sprintf("s%d", i)), epObj("demo", fmt.Sprintf("e%d", i), fmt.Sprintf("s%d", i), "", 9000))
	}
	applyObjs(t, s, objs...) // static endpoints: the index is not built yet
	before := localWrites.Load()
	for i := range 20 {
		if err := s.reg.syncLocalEndpoints(fmt.Sprintf("w%d", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := localWrites.Load() - before; n != 0 {
		t.Fatalf("20 empty local lists after start made %d write transactions, want 0", n)
	}
	// The index still serves a node with endpoints: w1's go, then only
	// the new one stays.
	if err := s.reg.syncLocalEndpoints("w1", []api.Endpoint{*epObj("demo", "w1-a", "s1", "", 9100)}); err != nil {
		t.Fatal(err)
	}
	if err := s.reg.syncLocalEndpoints("w1", []api.Endpoint{*epObj("demo", "w1-b", "s1", "", 9101)}); err != nil {
		t.Fatal(err)
	}
	eps, _, _ := s.reg.list(api.KindEndpoint)
	var own []string
	for _, o := range eps {
		if e := o.(*api.Endpoint); e.Spec.Node == "w1" {
			own = append(own, e.Meta.Name)
		}
	}
	if len(own) != 1 || own[0] != "w1-b" {
		t.Fatalf("w1 holds %v, want [w1-b]", own)
	}
}
