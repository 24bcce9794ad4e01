package control

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestAuditRefusedRestartKeepsChain: a restart batch (auditRestart) that
// the replica then refuses — a record edited after hashing, a checkpoint
// not signed by the node's key — must leave the chain held as it was. It
// used to archive the chain first and check the batch after, so a refused
// restart still moved the node's verified copy aside (and its head with
// it) and left the node with an empty chain.
func TestAuditRefusedRestartKeepsChain(t *testing.T) {
	dir := t.TempDir()
	s := startSecureIn(t, dir)
	key, _ := identity.NewKey()
	svid := joinWithKey(t, s, "edge-1", "shop-1", key)
	recs := signedNodeRecords(t, "edge-1", 4, key) // checkpoint at 5
	a := dialSecureAgent(t, s, svid, "edge-1", "shop-1")
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, recs)})
	if m := a.recv(); m.Type != wire.TypeAuditAck || m.AuditSeq != 5 || m.Error != "" {
		t.Fatalf("ack %+v", m)
	}

	edited := signedNodeRecords(t, "edge-1", 2, key)
	edited[1].Object = "demo/other" // the hash no longer matches
	forged := signedNodeRecords(t, "edge-1", 3, key)
	forged = append(forged[:3], forgedCheckpoint(t, forged[2]))
	for name, batch := range map[string][]audit.Record{"edited": edited, "forged checkpoint": forged} {
		a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encodeBatch(t, batch)})
		m := a.recv()
		if m.Type != wire.TypeAuditAck || m.Error == "" {
			t.Fatalf("%s restart taken: %+v", name, m)
		}
	}
	ents, _ := os.ReadDir(s.auditNodesDir())
	for _, e := range ents {
		if strings.Contains(e.Name(), ".archived-") {
			t.Errorf("a refused restart archived the chain: %s", filepath.Join(s.auditNodesDir(), e.Name()))
		}
	}
	c, err := s.nodeChain("edge-1", true)
	if err != nil {
		t.Fatal(err)
	}
	if c.LastSeq != 5 || c.Report == nil || !c.Report.Intact() {
		t.Fatalf("chain after refused restarts: last %d, %+v", c.LastSeq, c.Report)
	}
}
