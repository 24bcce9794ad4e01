package control

import (
	"path/filepath"
	"testing"

	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestAuditRestartBatchResent: a restart batch sent again after it was
// taken (its ack lost) is a resend: acked with the chain held, and the new
// chain is not archived in turn. Only a chain held that goes past the
// batch or differs within it makes a restart whose first record is held
// (TestAuditChainRestoredFromBackup, internal/agent).
func TestAuditRestartBatchResent(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	a := dialAgentWelcome(t, s, "edge-1", 0)
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, nodeRecords(t, "edge-1", 6))})
	if m := a.recv(); m.AuditSeq != 6 || m.Error != "" {
		t.Fatalf("ack %+v", m)
	}
	// The chain held (6 records, another first one) goes into an archive;
	// the second send of the same batch is a resend.
	restart := nodeRecords(t, "edge-1", 4)
	for range 2 {
		a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encodeBatch(t, restart)})
		if m := a.recv(); m.AuditSeq != 4 || m.Error != "" {
			t.Fatalf("restart: ack %+v", m)
		}
	}
	if archives, _ := filepath.Glob(filepath.Join(dir, "audit", "nodes", "edge-1.archived-*")); len(archives) != 1 {
		t.Fatalf("archives %v, want one (the resend archived nothing)", archives)
	}
}
