package control

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestAuditArchiveCrashRepairedAtStart: a control plane that crashes
// between archiving a node's chain (renaming its directory) and moving
// its head in the store must not leave the archive without a head, nor the
// old chain's head on the node's new chain. The crash is simulated by a
// hook that stops the restart after the rename; the control plane then
// restarts on the same state directory, the agent ships its new chain, and
// both chains verify intact, each against its own head.
func TestAuditArchiveCrashRepairedAtStart(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	old := nodeRecords(t, "edge-1", 6)
	a := dialAgentWelcome(t, s, "edge-1", 0)
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, old)})
	if m := a.recv(); m.AuditSeq != 6 || m.Error != "" {
		t.Fatalf("ack %+v", m)
	}
	a.c.Close()

	crash := errors.New("crash (test)")
	var archive string
	s.audit.testHookArchived = func(path string) error { archive = path; return crash }
	fresh := nodeRecords(t, "edge-1", 3)
	a = dialAgentWelcome(t, s, "edge-1", 6)
	a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encodeBatch(t, fresh)})
	if m := a.recv(); !strings.Contains(m.Error, "crash (test)") {
		t.Fatalf("ack %+v, want the simulated crash", m)
	}
	a.c.Close()
	s.Close()
	if archive == "" {
		t.Fatal("the chain was not archived")
	}

	s = startServer(t, dir)
	a = dialAgentWelcome(t, s, "edge-1", 0) // the new chain goes on from nothing
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, fresh)})
	if m := a.recv(); m.AuditSeq != 3 || m.Error != "" {
		t.Fatalf("ack %+v", m)
	}
	code, ar := getAudit(t, s, "/v1/audit?verify=1")
	if code != 200 {
		t.Fatal(code)
	}
	got := map[string]string{}
	for _, c := range ar.Chains {
		v := c.Report.Verdict
		for _, p := range c.Report.Problems {
			v += "; " + p.String()
		}
		for _, u := range c.Report.Unanchored {
			v += "; " + u
		}
		got[c.Source+" "+c.Node] = v
	}
	want := map[string]string{
		"control " + s.cfg.Name:              "intact",
		"node edge-1":                        "intact",
		"archived " + filepath.Base(archive): "intact",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("chains %v, want %v", got, want)
	}
	// The restart is in the control plane's own chain, completed at start.
	recs, err := s.audit.log.ReadFrom(1, 100)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range recs {
		found = found || r.Kind == audit.KindAudit && r.Action == "restart chain" && strings.Contains(r.Reason, filepath.Base(archive))
	}
	if !found {
		t.Errorf("no restart record for %s in the control plane's chain: %+v", archive, recs)
	}
	if _, err := os.Stat(archive); err != nil {
		t.Fatal(err)
	}
}

// TestAuditHeadlessArchiveRepairedAfterOlderVersion: the state an older
// control plane left after the same crash and then ran on: the archive
// without a head, the node's new chain in its directory, and the old
// chain's head still stored for the node (so the new chain never stored
// its own). At start the head moves to the archive it belongs to; the
// node's chain stores its own head with its next batch.
func TestAuditHeadlessArchiveRepairedAfterOlderVersion(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	old := nodeRecords(t, "edge-1", 6)
	a := dialAgentWelcome(t, s, "edge-1", 0)
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, old)})
	if m := a.recv(); m.AuditSeq != 6 || m.Error != "" {
		t.Fatalf("ack %+v", m)
	}
	a.c.Close()
	crash := errors.New("crash (test)")
	var archive string
	s.audit.testHookArchived = func(path string) error { archive = path; return crash }
	fresh := nodeRecords(t, "edge-1", 4)
	a = dialAgentWelcome(t, s, "edge-1", 6)
	a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encodeBatch(t, fresh[:3])})
	if m := a.recv(); !strings.Contains(m.Error, "crash (test)") {
		t.Fatalf("ack %+v, want the simulated crash", m)
	}
	a.c.Close()
	s.Close()
	// What the older version then did: the new chain's first batch taken
	// into a new directory, its head not stored past the old one.
	rp, err := audit.OpenReplica(filepath.Join(dir, "audit", "nodes", "edge-1"), "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rp.Append(fresh[:3]); err != nil {
		t.Fatal(err)
	}
	rp.Close()

	s = startServer(t, dir)
	a = dialAgentWelcome(t, s, "edge-1", 3)
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, fresh[3:])})
	if m := a.recv(); m.AuditSeq != 4 || m.Error != "" {
		t.Fatalf("ack %+v", m)
	}
	for _, n := range []string{"edge-1", filepath.Base(archive)} {
		c, err := s.nodeChain(n, true)
		if err != nil {
			t.Fatal(err)
		}
		if c.Report == nil || !c.Report.Intact() {
			t.Errorf("%s (%s): %+v", n, c.Source, c.Report)
		}
	}
}
