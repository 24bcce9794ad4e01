package control

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	fresh := nodeRecords(t, "edge-1", 3)
	archive := crashAfterArchive(t, dir, fresh)
	if archive == "" {
		t.Fatal("the chain was not archived")
	}

	s := startServer(t, dir)
	a := dialAgentWelcome(t, s, "edge-1", 0) // the new chain goes on from nothing
	shipFreshChain(t, s, a, archive, fresh)
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
	fresh := nodeRecords(t, "edge-1", 4)
	archive := crashAfterArchive(t, dir, fresh[:3])
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

	s := startServer(t, dir)
	a := dialAgentWelcome(t, s, "edge-1", 3)
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

// TestAuditArchivesBoundedPerNode: a node restarts its chain at will, so
// the archives kept of it are bounded (Config.AuditArchivesPerNode): past
// the bound a restart is refused, counted and the chain held is left as it
// was (nothing is deleted); an operator removes an archive with DELETE
// /v1/audit/{archive}, recorded in the control plane's own chain first,
// and the restart is then taken.
func TestAuditArchivesBoundedPerNode(t *testing.T) {
	dir := t.TempDir()
	s := serveControl(t, Config{StateDir: dir, AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, Insecure: true, AuditArchivesPerNode: 2})

	a, _ := agentWithChain(t, s, "edge-1", 4)
	// Two archives of earlier restarts, as earlier restarts left them.
	nodes := filepath.Join(dir, "audit", "nodes")
	b, err := os.ReadFile(filepath.Join(nodes, "edge-1", "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"edge-1.archived-1000000001", "edge-1.archived-1000000002"} {
		if err := os.MkdirAll(filepath.Join(nodes, n), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(nodes, n, "audit.log"), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	fresh := nodeRecords(t, "edge-1", 2)
	a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encodeBatch(t, fresh)})
	if m := a.recv(); !strings.Contains(m.Error, "too many archived chains") {
		t.Fatalf("restart past the bound: ack %+v", m)
	}
	if c, err := s.nodeChain("edge-1", true); err != nil || c.LastSeq != 4 || !c.Report.Intact() {
		t.Fatalf("the chain held after a refused restart: %+v %v", c, err)
	}
	var m bytes.Buffer
	s.cfg.Metrics.WritePrometheus(&m)
	if !strings.Contains(m.String(), `fogmesh_control_audit_refused_total{reason="archives"} 1`) {
		t.Fatal("the refusal is not counted")
	}

	del := func(name string) int {
		req, _ := http.NewRequest(http.MethodDelete, "http://"+s.AdminAddr()+"/v1/audit/"+name, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for name, want := range map[string]int{"edge-1": 400, "edge-1.archived-1000000009": 404, "edge-1.archived-1000000001": 200} {
		if got := del(name); got != want {
			t.Errorf("DELETE %s: %d, want %d", name, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(nodes, "edge-1.archived-1000000001")); !os.IsNotExist(err) {
		t.Fatalf("the archive is still there: %v", err)
	}
	own, err := s.audit.log.ReadFrom(1, 100)
	if err != nil || len(own) == 0 || own[len(own)-1].Action != "delete" || own[len(own)-1].Object != "audit/edge-1.archived-1000000001" {
		t.Fatalf("the removal is not in the control plane's chain: %+v %v", own, err)
	}

	a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encodeBatch(t, fresh)})
	if m := a.recv(); m.AuditSeq != 2 || m.Error != "" {
		t.Fatalf("restart after an archive was removed: ack %+v", m)
	}
	code, ar := getAudit(t, s, "/v1/audit?verify=1")
	if code != 200 {
		t.Fatal(code)
	}
	var names []string
	for _, c := range ar.Chains {
		names = append(names, c.Source+" "+c.Node)
		if c.Source == "removed" {
			t.Errorf("a removed archive is listed as a chain whose records were removed: %+v", c)
		}
	}
	if len(names) != 4 { // control, edge-1, the kept fake archive, the new archive
		t.Errorf("chains %v", names)
	}
}

// crashAfterArchive ships 6 records of edge-1's chain to a control plane on
// dir, then a restart of the chain with the records fresh, which a hook
// stops right after the old chain's directory is renamed (a crash before
// its head moves); the control plane is closed. It returns the archive's
// path.
func crashAfterArchive(t *testing.T, dir string, fresh []audit.Record) (archive string) {
	t.Helper()
	s := startServer(t, dir)
	a, _ := agentWithChain(t, s, "edge-1", 6)
	a.c.Close()
	crash := errors.New("crash (test)")
	s.audit.testHookArchived = func(path string) error { archive = path; return crash }
	a = dialAgentWelcome(t, s, "edge-1", 6)
	a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encodeBatch(t, fresh)})
	if m := a.recv(); !strings.Contains(m.Error, "crash (test)") {
		t.Fatalf("ack %+v, want the simulated crash", m)
	}
	a.c.Close()
	s.Close()
	return archive
}

// shipFreshChain sends edge-1's fresh three-record chain over a and checks
// it is taken, with the server's own chain, edge-1's and the archive
// intact.
func shipFreshChain(t *testing.T, s *Server, a *agentConn, archive string, fresh []audit.Record) {
	t.Helper()
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, fresh)})
	if m := a.recv(); m.AuditSeq != 3 || m.Error != "" {
		t.Fatalf("ack %+v", m)
	}
	checkVerdicts(t, auditVerdicts(t, s), map[string]string{
		"control " + s.cfg.Name:              "intact",
		"node edge-1":                        "intact",
		"archived " + filepath.Base(archive): "intact",
	})
}
