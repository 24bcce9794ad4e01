package control

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// errStoreFault is the failure faultStore injects.
var errStoreFault = errors.New("store write failed (test)")

// faultStore is the embedded store whose security writes fail while fail
// says so: fail sees the transaction as the update left it, and an error
// from it fails the write (nothing of it is stored).
type faultStore struct {
	store.Backend
	fail atomic.Pointer[func(tx *store.SecureTx) error]
	// lie: a security write it says so is stored, then reported failed
	// (a shared store can fail a write it made).
	lie atomic.Pointer[func(tx *store.SecureTx) bool]
	// getFail: reads of the security records it says so fail.
	getFail atomic.Pointer[func(key string) bool]
}

func (f *faultStore) UpdateSecure(fn func(*store.SecureTx) error) error {
	lied := false
	err := f.Backend.UpdateSecure(func(tx *store.SecureTx) error {
		lied = false
		if err := fn(tx); err != nil {
			return err
		}
		if fail := f.fail.Load(); fail != nil {
			if err := (*fail)(tx); err != nil {
				return err
			}
		}
		if lie := f.lie.Load(); lie != nil {
			lied = (*lie)(tx)
		}
		return nil
	})
	if err == nil && lied {
		return errStoreFault
	}
	return err
}

func (f *faultStore) GetSecure(key string) ([]byte, error) {
	if g := f.getFail.Load(); g != nil && (*g)(key) {
		return nil, errStoreFault
	}
	return f.Backend.GetSecure(key)
}

// failWhen makes the security writes that fail says so fail; nil: none.
func (f *faultStore) failWhen(fail func(tx *store.SecureTx) error) {
	if fail == nil {
		f.fail.Store(nil)
		return
	}
	f.fail.Store(&fail)
}

// startFaultServer is startServer on a faultStore of dir's store.
func startFaultServer(t *testing.T, dir string) (*Server, *faultStore) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bst, err := store.Open(filepath.Join(dir, "fogmesh.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fs := &faultStore{Backend: bst}
	s, err := New(Config{StateDir: dir, AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, NodeExpiry: 600 * time.Millisecond, Insecure: true, Store: fs})
	if err != nil {
		bst.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Serve(context.Background()); close(done) }()
	t.Cleanup(func() { s.Close(); <-done })
	return s, fs
}

// auditVerdicts returns GET /v1/audit?verify=1 as "source node" ->
// verdict, with the problems and unanchored ends.
func auditVerdicts(t *testing.T, s *Server) map[string]string {
	t.Helper()
	code, ar := getAudit(t, s, "/v1/audit?verify=1")
	if code != 200 {
		t.Fatalf("GET /v1/audit?verify=1: %d", code)
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
	return got
}

// checkVerdicts fails t unless got holds exactly want.
func checkVerdicts(t *testing.T, got, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("chains %v, want %v", got, want)
	}
}

// nodeDirs lists the directories in dir's audit/nodes.
func nodeDirs(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "audit", "nodes"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// storedHeadOf returns the head stored under keyAuditHead+name.
func storedHeadOf(t *testing.T, s *Server, name string) *auditHead {
	t.Helper()
	h, err := s.storedHead(keyAuditHead + name)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// failArchiveHeadMove fails the write that moves a head to an archive.
func failArchiveHeadMove(tx *store.SecureTx) error {
	for _, kv := range tx.List(keyAuditHead) {
		if isArchive(kv.Key) {
			return errStoreFault
		}
	}
	return nil
}

// TestAuditArchiveHeadMoveFailureUndone: when the store write that moves
// the head of a restarted chain to its archive fails, the rename is
// undone: the restart is refused with the error, the chain held stays as
// it was (its directory, its head, no archive) and verifies intact; the
// agent's next try takes the restart.
func TestAuditArchiveHeadMoveFailureUndone(t *testing.T) {
	dir := t.TempDir()
	s, fs := startFaultServer(t, dir)
	a, old := agentWithChain(t, s, "edge-1", 6)

	fs.failWhen(failArchiveHeadMove)
	fresh := nodeRecords(t, "edge-1", 3)
	a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encodeBatch(t, fresh)})
	if m := a.recv(); !strings.Contains(m.Error, errStoreFault.Error()) {
		t.Fatalf("restart whose head move failed: ack %+v, want the store's error", m)
	}
	fs.failWhen(nil)
	if got := nodeDirs(t, dir); len(got) != 1 || got[0] != "edge-1" {
		t.Fatalf("audit/nodes holds %v, want only edge-1", got)
	}
	if h := storedHeadOf(t, s, "edge-1"); h == nil || h.Seq != 6 || h.Hash != old[5].Hash {
		t.Fatalf("edge-1's stored head %+v, want seq 6", h)
	}
	checkVerdicts(t, auditVerdicts(t, s), map[string]string{
		"control " + s.cfg.Name: "intact",
		"node edge-1":           "intact",
	})
	if c, err := s.nodeChain("edge-1", true); err != nil || c.LastSeq != 6 {
		t.Fatalf("the chain held after the failed restart: %+v %v", c, err)
	}

	// The agent tries again; the store writes now.
	a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encodeBatch(t, fresh)})
	if m := a.recv(); m.AuditSeq != 3 || m.Error != "" {
		t.Fatalf("restart retried: ack %+v", m)
	}
	archives, _ := filepath.Glob(filepath.Join(dir, "audit", "nodes", "edge-1.archived-*"))
	if len(archives) != 1 {
		t.Fatalf("archives %v, want one", archives)
	}
	checkVerdicts(t, auditVerdicts(t, s), map[string]string{
		"control " + s.cfg.Name:                  "intact",
		"node edge-1":                            "intact",
		"archived " + filepath.Base(archives[0]): "intact",
	})
}

// TestAuditArchiveHeadMoveAndUndoFailRepairedAtStart: the head move fails
// and so does the rename back (the node's directory name is taken again):
// the restart is refused with both errors, and the state left is the one
// a crash between the two steps leaves, which the next start completes:
// the archive gets its head, and both chains verify intact.
func TestAuditArchiveHeadMoveAndUndoFailRepairedAtStart(t *testing.T) {
	dir := t.TempDir()
	s, fs := startFaultServer(t, dir)
	a, old := agentWithChain(t, s, "edge-1", 6)
	a.c.Close()

	var archive string
	s.audit.testHookArchived = func(path string) error {
		archive = path
		// The rename back finds the name taken: a directory, not empty.
		node := filepath.Join(filepath.Dir(path), "edge-1")
		if err := os.Mkdir(node, 0o700); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(node, "audit.log"), nil, 0o600)
	}
	fs.failWhen(failArchiveHeadMove)
	fresh := nodeRecords(t, "edge-1", 3)
	a = dialAgentWelcome(t, s, "edge-1", 6)
	a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encodeBatch(t, fresh)})
	if m := a.recv(); !strings.Contains(m.Error, errStoreFault.Error()) {
		t.Fatalf("restart whose head move failed: ack %+v, want the store's error", m)
	}
	a.c.Close()
	s.Close()
	if archive == "" {
		t.Fatal("the chain was not archived")
	}

	s = startServer(t, dir)
	if h := storedHeadOf(t, s, filepath.Base(archive)); h == nil || h.Seq != 6 || h.Hash != old[5].Hash {
		t.Fatalf("the archive's head after the start %+v, want seq 6", h)
	}
	a = dialAgentWelcome(t, s, "edge-1", 0)
	shipFreshChain(t, s, a, archive, fresh)
}

// TestAuditArchiveHeadMoveUnconfirmedKept: the store write that moves the
// head of a restarted chain to its archive goes through but reports an
// error, and the store cannot be read to tell: the archive is not renamed
// back (that would leave a head under its name with no directory, listed
// as tampered for ever). The restart is refused; the archive keeps its
// directory and its head and verifies intact.
func TestAuditArchiveHeadMoveUnconfirmedKept(t *testing.T) {
	dir := t.TempDir()
	s, fs := startFaultServer(t, dir)
	a, old := agentWithChain(t, s, "edge-1", 6)
	lie := func(tx *store.SecureTx) bool { return failArchiveHeadMove(tx) != nil }
	fs.lie.Store(&lie)
	getFail := func(key string) bool { return strings.HasPrefix(key, keyAuditHead) && isArchive(key) }
	fs.getFail.Store(&getFail)
	a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encodeBatch(t, nodeRecords(t, "edge-1", 3))})
	if m := a.recv(); !strings.Contains(m.Error, errStoreFault.Error()) {
		t.Fatalf("restart whose head move was not confirmed: ack %+v, want the store's error", m)
	}
	fs.lie.Store(nil)
	fs.getFail.Store(nil)
	a.c.Close()
	archives, _ := filepath.Glob(filepath.Join(dir, "audit", "nodes", "edge-1.archived-*"))
	if len(archives) != 1 {
		t.Fatalf("archives %v, want one (not renamed back)", archives)
	}
	archive := filepath.Base(archives[0])
	if h := storedHeadOf(t, s, archive); h == nil || h.Seq != 6 || h.Hash != old[5].Hash {
		t.Fatalf("the archive's head %+v, want seq 6", h)
	}
	if v := auditVerdicts(t, s)["archived "+archive]; v != "intact" {
		t.Errorf("the archive: %q, want intact", v)
	}
}

// agentWithChain connects an agent of node to s and has its first n
// records stored; it returns the agent and the records.
func agentWithChain(t *testing.T, s *Server, node string, n int) (*agentConn, []audit.Record) {
	t.Helper()
	recs := nodeRecords(t, node, n)
	a := dialAgentWelcome(t, s, node, 0)
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, recs)})
	if m := a.recv(); m.AuditSeq != uint64(n) || m.Error != "" {
		t.Fatalf("ack %+v", m)
	}
	return a, recs
}
