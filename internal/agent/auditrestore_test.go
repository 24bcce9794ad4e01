package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/control"
)

// TestAuditChainRestoredFromBackup: a node whose audit log was restored
// from a backup (its chain 1..10, a prefix of the 1..30 the control plane
// holds) writes records 11..35 that differ from those held. The agent
// ships its chain from seq 1 as a restart; the control plane, which took
// such a batch for a resend (its first record is held) and refused it as
// a fork for good, archives the chain it held (the records past the
// backup kept there), records the break in its own chain, and takes the
// node's chain without a restart of either.
func TestAuditChainRestoredFromBackup(t *testing.T) {
	cpDir := t.TempDir()
	var log lockedLog
	cp := startControlWith(t, cpDir, "", nil)
	stateDir := t.TempDir()
	opts := agentOpts{name: "bak", site: "s1", region: "r1", vipOctet: 162, control: []string{cp.SyncAddr()}, stateDir: stateDir}
	a := startAgent(t, opts)
	for i := range 10 {
		a.AuditDecision(deny(i))
	}
	waitFor(t, "10 records shipped", func() bool { c, ok := cpChain(t, cp, "bak"); return ok && c.LastSeq == 10 })
	a.Close()
	auditDir, backup := filepath.Join(stateDir, "audit"), filepath.Join(t.TempDir(), "audit")
	if out, err := exec.Command("cp", "-a", auditDir, backup).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}

	a = startAgent(t, opts)
	for i := range 20 {
		a.AuditDecision(deny(10 + i))
	}
	waitFor(t, "30 records shipped", func() bool { c, ok := cpChain(t, cp, "bak"); return ok && c.LastSeq == 30 })
	a.Close()

	// The operator restores the node's audit log from the backup.
	if err := os.RemoveAll(auditDir); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", backup, auditDir).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	a = startAgentWith(t, opts, func(c *Config) { c.Logger = newTextLogger(&log) })
	if seq, _ := a.AuditLog().Last(); seq != 10 {
		t.Fatalf("the restored log ends at %d, want 10", seq)
	}
	for i := range 25 {
		a.AuditDecision(deny(100 + i))
	}
	var got control.AuditChain
	waitFor(t, "the restored chain taken", func() bool {
		c, ok := cpChain(t, cp, "bak")
		got = c
		return ok && c.LastSeq == 35
	})
	if got.Intact == nil || !*got.Intact || got.Report.FirstSeq != 1 {
		t.Fatalf("the chain at the control plane: %+v", got.Report)
	}
	if _, h := a.AuditLog().Last(); got.LastHash != h {
		t.Fatalf("control plane ends at %s, agent at %s", got.LastHash, h)
	}
	if log.has("control plane refused audit records") {
		t.Error("the agent's batches were refused")
	}
	// Nothing is lost: the chain held before, 30 records, is archived.
	archived, _ := filepath.Glob(filepath.Join(cpDir, "audit", "nodes", "bak.archived-*", "audit.log*"))
	var old strings.Builder
	for _, f := range archived {
		b, _ := os.ReadFile(f)
		old.Write(b)
	}
	if n := strings.Count(old.String(), `"kind":"authz"`); n != 30 {
		t.Fatalf("the archive holds %d of the 30 records held before (files %v)", n, archived)
	}
	ctl, _ := filepath.Glob(filepath.Join(cpDir, "audit", "control", "audit.log*"))
	var chain strings.Builder
	for _, f := range ctl {
		b, _ := os.ReadFile(f)
		chain.Write(b)
	}
	if !strings.Contains(chain.String(), "restart chain") || !strings.Contains(chain.String(), "backup") {
		t.Fatal("the break is not in the control plane's own chain")
	}
}
