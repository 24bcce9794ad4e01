package control

import (
	"net/http"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// liveOf reports node's live entry: whether there is one, and its open
// streams.
func liveOf(s *Server, node string) (ok bool, conns int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.live[node]
	if l == nil {
		return false, 0
	}
	return true, l.conns
}

func deleteNode(t *testing.T, s *Server, node string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, "http://"+s.AdminAddr()+"/v1/nodes/"+node, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("DELETE node %s: %s", node, resp.Status)
	}
}

// heartbeatOnce sends a heartbeat and waits for its answer.
func (a *agentConn) heartbeatOnce() {
	a.t.Helper()
	a.send(&wire.Message{Type: wire.TypeHeartbeat, Load: 1})
	for range 100 {
		if m := a.recv(); m.Type == wire.TypeHeartbeat {
			return
		}
	}
	a.t.Fatal("no heartbeat answer")
}

// TestLiveEntryGoesWithItsNode: a node's in-memory entry (Server.live) is
// dropped when the node is deleted with no stream open, or when its last
// stream ends after the node was deleted; a node that still exists keeps
// it. Before, every deleted node's entry stayed for good (both waits for
// "gone" below timed out).
func TestLiveEntryGoesWithItsNode(t *testing.T) {
	s := startQuietServer(t)

	// Disconnected, then deleted.
	a := dialAgent(t, s, "gone-idle")
	a.send(&wire.Message{Type: wire.TypeSubscribe})
	a.recvUpdate()
	a.heartbeatOnce()
	a.c.Close()
	testenv.WaitFor(t, 5*time.Second, "gone-idle's stream to end", func() bool { _, n := liveOf(s, "gone-idle"); return n == 0 })
	if ok, _ := liveOf(s, "gone-idle"); !ok {
		t.Fatal("a disconnected node that still exists lost its live entry (last heartbeat)")
	}
	deleteNode(t, s, "gone-idle")
	if ok, _ := liveOf(s, "gone-idle"); ok {
		t.Fatal("a deleted node with no stream open kept its live entry")
	}

	// Deleted while connected: kept while the stream is open, dropped at
	// its end.
	b := dialAgent(t, s, "gone-busy")
	b.send(&wire.Message{Type: wire.TypeSubscribe})
	b.recvUpdate()
	b.heartbeatOnce()
	deleteNode(t, s, "gone-busy")
	if ok, n := liveOf(s, "gone-busy"); !ok || n != 1 {
		t.Fatalf("a deleted node's open stream: entry %v, %d streams; want kept with 1", ok, n)
	}
	b.c.Close()
	testenv.WaitFor(t, 5*time.Second, "gone-busy's entry to go with its last stream", func() bool { ok, _ := liveOf(s, "gone-busy"); return !ok })
}

// TestPruneLiveDeletedElsewhere: the leader's sweep drops the entry, with
// no stream open, of a node gone from the store (deleted on another
// replica); one the listing missed but the store still has is kept.
func TestPruneLiveDeletedElsewhere(t *testing.T) {
	s := startQuietServer(t)
	a := dialAgent(t, s, "stays")
	a.c.Close()
	testenv.WaitFor(t, 5*time.Second, "stays' stream to end", func() bool { _, n := liveOf(s, "stays"); return n == 0 })
	s.mu.Lock()
	s.live["elsewhere"] = &liveNode{lastHeartbeat: time.Now()}
	s.mu.Unlock()
	s.pruneLive(nil) // a listing that has neither
	if ok, _ := liveOf(s, "elsewhere"); ok {
		t.Error("the entry of a node the store no longer has was kept")
	}
	if ok, _ := liveOf(s, "stays"); !ok {
		t.Error("the entry of a node the store has was dropped")
	}
}
