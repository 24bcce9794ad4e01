package control

import (
	"strings"
	"testing"
	"time"

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
