package control

import (
	"fmt"
	"sync"
	"testing"

	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// The control plane keeps no file open per node between audit batches:
// at 10,000 agents one replica file each besides the socket reached the
// machine's fd limit (issue 13). The chains' ends stay in memory: the
// welcome of a new stream names them, and every chain verifies.
func TestAuditReplicasHoldNoFiles(t *testing.T) {
	s := startServer(t, t.TempDir())
	const nodes = 12
	agents := make([]*agentConn, nodes)
	for i := range agents {
		node := fmt.Sprintf("fd-%d", i)
		agents[i] = dialAgentWelcome(t, s, node, 0)
		nrecs := nodeRecords(t, node, 6)
		for _, b := range [][2]int{{0, 3}, {3, 6}} {
			agents[i].send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, nrecs[b[0]:b[1]])})
			if m := agents[i].recv(); m.Type != wire.TypeAuditAck || m.AuditSeq != uint64(b[1]) || m.Error != "" {
				t.Fatalf("%s: ack %+v", node, m)
			}
		}
	}
	// Every batch is acknowledged, so none is being written.
	if n := testenv.OpenFilesUnder(t, s.auditNodesDir()); n != 0 {
		t.Fatalf("%d files open under %s with %d agents connected and no batch in flight, want 0", n, s.auditNodesDir(), nodes)
	}
	code, ar := getAudit(t, s, "/v1/audit?verify=1")
	if code != 200 || len(ar.Chains) != nodes+1 {
		t.Fatalf("%d, %d chains", code, len(ar.Chains))
	}
	for _, c := range ar.Chains {
		if c.Node != s.cfg.Name && (c.LastSeq != 6 || c.Intact == nil || !*c.Intact) {
			t.Fatalf("chain %s: last %d, %+v", c.Node, c.LastSeq, c.Report)
		}
	}
	if n := testenv.OpenFilesUnder(t, s.auditNodesDir()); n != 0 {
		t.Fatalf("%d files open after verification, want 0", n)
	}
	// A second stream of a node is told where its chain ends, and goes on.
	agents[0].c.Close()
	a := dialAgentWelcome(t, s, "fd-0", 6)
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, nil)})
	if m := a.recv(); m.Type != wire.TypeAuditAck || m.AuditSeq != 6 || m.Error != "" {
		t.Fatalf("ack %+v", m)
	}
	if n := testenv.OpenFilesUnder(t, s.auditNodesDir()); n != 0 {
		t.Fatalf("%d files open, want 0", n)
	}
}

// A replica's files are opened without the server's lock, which the sync
// listener's accept, every admission and every heartbeat take: after a
// restart thousands of replicas are opened, and with the lock held across
// the file system calls the accept loop and heartbeats queued behind them
// (seen in goroutine dumps of a 3,000-agent resync, issue 13).
func TestReplicaOpensWithoutTheServerLock(t *testing.T) {
	s := startServer(t, t.TempDir())
	var mu sync.Mutex
	var opened, free []bool
	s.audit.testHookOpen = func(node string) {
		ok := s.mu.TryLock()
		if ok {
			s.mu.Unlock()
		}
		mu.Lock()
		defer mu.Unlock()
		opened, free = append(opened, true), append(free, ok)
	}
	dialAgentWelcome(t, s, "lock-1", 0)
	dialAgentWelcome(t, s, "lock-2", 0)
	mu.Lock()
	defer mu.Unlock()
	if len(opened) != 2 {
		t.Fatalf("%d replicas opened, want 2", len(opened))
	}
	for i, ok := range free {
		if !ok {
			t.Fatalf("replica %d was opened with the server's lock held", i+1)
		}
	}
}
