package agent

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/control"
)

// damageLine overwrites the n-th line (1-based) of path in place with '#'
// bytes of the same length: a bad sector in the middle of the file, which
// the writer appending at the end does not notice.
func damageLine(t *testing.T, path string, n int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	off := 0
	for range n - 1 {
		off += bytes.IndexByte(b[off:], '\n') + 1
	}
	end := off + bytes.IndexByte(b[off:], '\n')
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(bytes.Repeat([]byte{'#'}, end-off), int64(off)); err != nil {
		t.Fatal(err)
	}
}

// TestAuditDamagedRecordDoesNotStopShipping: a record damaged on the
// node's disk in the middle of its audit file (seq 7 of 13) must not stop
// shipping for good. The records after it, including those written after
// the damage, reach the control plane; the control plane's copy holds a
// damage marker in place of seq 7, and its verification names the damage
// (never "intact") and goes on verifying the records after it.
func TestAuditDamagedRecordDoesNotStopShipping(t *testing.T) {
	cpDir := t.TempDir()
	cp := startControl(t, cpDir, "")
	syncAddr := cp.SyncAddr()
	stateDir := t.TempDir()
	a := startAgent(t, agentOpts{name: "dmg", site: "s1", region: "r1", vipOctet: 162, control: []string{syncAddr}, stateDir: stateDir})
	for i := range 5 {
		a.AuditDecision(deny(i))
	}
	waitFor(t, "5 records shipped", func() bool { c, ok := cpChain(t, cp, "dmg"); return ok && c.LastSeq == 5 })
	cp.Close()
	waitFor(t, "agent to notice the control plane is gone", func() bool { return !a.connected.Load() })
	for i := range 5 {
		a.AuditDecision(deny(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.AuditLog().Flush(ctx); err != nil {
		t.Fatal(err)
	}
	damageLine(t, filepath.Join(stateDir, "audit", "audit.log"), 7)
	for i := range 3 { // written after the damage
		a.AuditDecision(deny(i))
	}
	if err := a.AuditLog().Flush(ctx); err != nil {
		t.Fatal(err)
	}

	cp2 := startControl(t, cpDir, syncAddr)
	var got control.AuditChain
	waitFor(t, "the records after the damage shipped", func() bool {
		c, ok := cpChain(t, cp2, "dmg")
		got = c
		return ok && c.LastSeq == 13
	})
	if _, h := a.AuditLog().Last(); got.LastHash != h {
		t.Fatalf("control plane ends at %s, the agent at %s", got.LastHash, h)
	}
	rep := got.Report
	if got.Intact == nil || *got.Intact || rep.Verdict == audit.VerdictIntact {
		t.Fatalf("a chain with a damaged record verified intact: %+v", rep)
	}
	if rep.Records != 13 || len(rep.Problems) != 1 || rep.Problems[0].Kind != "damaged" || rep.Problems[0].Seq != 7 ||
		!strings.Contains(rep.Problems[0].Msg, "seq 7..7") {
		t.Fatalf("report: %d records, problems %v; want 13 and one damage at seq 7", rep.Records, rep.Problems)
	}
	waitFor(t, "ack seen by the agent", func() bool { return a.auditShipped.Load() == 13 })
	var m bytes.Buffer
	a.cfg.Metrics.WritePrometheus(&m)
	if !strings.Contains(m.String(), "fogmesh_agent_audit_damaged_total 1\n") {
		t.Fatalf("metrics: %s", grepLines(m.String(), "audit"))
	}
}
