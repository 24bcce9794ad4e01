package control

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// deleteArchive sends DELETE /v1/audit/name and returns the status.
func deleteArchive(t *testing.T, s *Server, name string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, "http://"+s.AdminAddr()+"/v1/audit/"+name, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// archiveEdge1 ships 6 records of edge-1's chain to s, then restarts the
// chain with 3: it returns the archive's name.
func archiveEdge1(t *testing.T, s *Server, dir string) string {
	t.Helper()
	a := dialAgentWelcome(t, s, "edge-1", 0)
	a.send(&wire.Message{Type: wire.TypeAudit, Audit: encodeBatch(t, nodeRecords(t, "edge-1", 6))})
	if m := a.recv(); m.AuditSeq != 6 || m.Error != "" {
		t.Fatalf("ack %+v", m)
	}
	a.send(&wire.Message{Type: wire.TypeAudit, AuditRestart: true, Audit: encodeBatch(t, nodeRecords(t, "edge-1", 3))})
	if m := a.recv(); m.AuditSeq != 3 || m.Error != "" {
		t.Fatalf("restart: ack %+v", m)
	}
	a.c.Close()
	archives, _ := filepath.Glob(filepath.Join(dir, "audit", "nodes", "edge-1.archived-*"))
	if len(archives) != 1 {
		t.Fatalf("archives %v, want one", archives)
	}
	return filepath.Base(archives[0])
}

// TestAuditArchiveDeleteCrashSafe: a control plane that stops at any point
// of an archive's removal (DELETE /v1/audit/{archive}) leaves, after its
// next start, the archive fully gone: no files, no stored head, not
// listed (not even as a chain whose records were removed), and a second
// DELETE finds nothing. The crash is simulated by a hook that stops the
// removal after each of its steps.
func TestAuditArchiveDeleteCrashSafe(t *testing.T) {
	for _, step := range []string{"renamed", "head removed"} {
		t.Run(strings.ReplaceAll(step, " ", "_"), func(t *testing.T) {
			dir := t.TempDir()
			s := startServer(t, dir)
			archive := archiveEdge1(t, s, dir)
			reached := false
			s.audit.testHookRemove = func(at string) error {
				if at != step {
					return nil
				}
				reached = true
				return errors.New("crash (test)")
			}
			if code := deleteArchive(t, s, archive); code != http.StatusInternalServerError || !reached {
				t.Fatalf("DELETE %s: %d (crash at %q reached: %v), want the simulated crash", archive, code, step, reached)
			}
			// Before the start: not listed, not even as a chain whose
			// records were removed.
			checkVerdicts(t, auditVerdicts(t, s), map[string]string{
				"control " + s.cfg.Name: "intact",
				"node edge-1":           "intact",
			})
			if code, _ := getAudit(t, s, "/v1/audit/"+archive+"?verify=1"); code != http.StatusNotFound {
				t.Errorf("GET /v1/audit/%s: %d, want 404", archive, code)
			}
			s.Close()

			s = startServer(t, dir)
			checkArchiveGone(t, s, dir, archive)
			checkVerdicts(t, auditVerdicts(t, s), map[string]string{
				"control " + s.cfg.Name: "intact",
				"node edge-1":           "intact",
			})
			if code := deleteArchive(t, s, archive); code != http.StatusNotFound {
				t.Errorf("second DELETE %s: %d, want 404", archive, code)
			}
			// The removal is in the control plane's own chain.
			own, err := s.audit.log.ReadFrom(1, 100)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, r := range own {
				found = found || r.Action == "delete" && r.Object == "audit/"+archive
			}
			if !found {
				t.Errorf("the removal of %s is not in the control plane's chain", archive)
			}
		})
	}
}

// TestAuditArchiveDeleteCompletedByDelete: a removal stopped after any of
// its steps is completed by a second DELETE of the archive, without a
// restart.
func TestAuditArchiveDeleteCompletedByDelete(t *testing.T) {
	for _, step := range []string{"renamed", "head removed"} {
		t.Run(strings.ReplaceAll(step, " ", "_"), func(t *testing.T) {
			dir := t.TempDir()
			s := startServer(t, dir)
			archive := archiveEdge1(t, s, dir)
			s.audit.testHookRemove = func(at string) error {
				if at == step {
					return errors.New("crash (test)")
				}
				return nil
			}
			if code := deleteArchive(t, s, archive); code != http.StatusInternalServerError {
				t.Fatalf("DELETE %s: %d, want the simulated crash", archive, code)
			}
			s.audit.testHookRemove = nil
			if code := deleteArchive(t, s, archive); code != http.StatusOK {
				t.Fatalf("second DELETE %s: %d, want 200", archive, code)
			}
			checkArchiveGone(t, s, dir, archive)
			if code := deleteArchive(t, s, archive); code != http.StatusNotFound {
				t.Errorf("third DELETE %s: %d, want 404", archive, code)
			}
		})
	}
}

// TestAuditArchiveDeleteHeadFailureUndone: when the store write that
// removes an archive's head fails, DELETE answers 500 and the archive is
// fully there (its files, its head, listed intact); a second DELETE
// removes it.
func TestAuditArchiveDeleteHeadFailureUndone(t *testing.T) {
	dir := t.TempDir()
	s, fs := startFaultServer(t, dir)
	archive := archiveEdge1(t, s, dir)
	fs.failWhen(func(tx *store.SecureTx) error {
		if tx.Get(keyAuditHead+archive) == nil {
			return errStoreFault
		}
		return nil
	})
	if code := deleteArchive(t, s, archive); code != http.StatusInternalServerError {
		t.Fatalf("DELETE %s whose head removal failed: %d, want 500", archive, code)
	}
	fs.failWhen(nil)
	if got := nodeDirs(t, dir); len(got) != 2 || got[0] != "edge-1" || got[1] != archive {
		t.Errorf("audit/nodes holds %v, want edge-1 and %s", got, archive)
	}
	checkVerdicts(t, auditVerdicts(t, s), map[string]string{
		"control " + s.cfg.Name: "intact",
		"node edge-1":           "intact",
		"archived " + archive:   "intact",
	})

	if code := deleteArchive(t, s, archive); code != http.StatusOK {
		t.Fatalf("DELETE %s again: %d, want 200", archive, code)
	}
	if got := nodeDirs(t, dir); len(got) != 1 || got[0] != "edge-1" {
		t.Errorf("audit/nodes holds %v, want only edge-1", got)
	}
	checkVerdicts(t, auditVerdicts(t, s), map[string]string{
		"control " + s.cfg.Name: "intact",
		"node edge-1":           "intact",
	})
}

// TestAuditArchiveForgedRemovingDirIsTampering: a ".removing-" directory
// made by hand (the archive's files deleted, a directory of the removal's
// name made in their place) is not a removal: the store holds no marker
// of one. The archive stays listed, as a chain whose records were
// removed (tampered), with its head; the next start leaves its head in
// the store and the directory alone.
func TestAuditArchiveForgedRemovingDirIsTampering(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	archive := archiveEdge1(t, s, dir)
	head := storedHeadOf(t, s, archive)
	if head == nil {
		t.Fatal("the archive has no stored head")
	}
	nodes := filepath.Join(dir, "audit", "nodes")
	if err := os.RemoveAll(filepath.Join(nodes, archive)); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(nodes, removingPrefix+archive), 0o700); err != nil {
		t.Fatal(err)
	}
	check := func(s *Server) {
		t.Helper()
		got := auditVerdicts(t, s)
		if v := got["removed "+archive]; !strings.HasPrefix(v, "tampered") {
			t.Errorf("the archive whose directory was replaced by a forged removal: %q, want listed tampered (all: %v)", v, got)
		}
		code, ar := getAudit(t, s, "/v1/audit/"+archive+"?verify=1")
		if code != http.StatusOK || len(ar.Chains) != 1 || ar.Chains[0].LastSeq != head.Seq || ar.Chains[0].LastHash != head.Hash {
			t.Errorf("GET /v1/audit/%s: %d %+v, want its head seq %d", archive, code, ar.Chains, head.Seq)
		}
	}
	check(s)
	s.Close()

	s = startServer(t, dir)
	if h := storedHeadOf(t, s, archive); h == nil || *h != *head {
		t.Fatalf("the archive's head after the start: %+v, want %+v", h, head)
	}
	if _, err := os.Stat(filepath.Join(nodes, removingPrefix+archive)); err != nil {
		t.Errorf("the forged directory was not left alone: %v", err)
	}
	check(s)
}

// TestAuditArchiveDeleteMarker: a removal stopped after its directory was
// renamed has its marker in the store (the head it removes), which hides
// the archive and lets the next start complete the removal; the start
// removes head and marker. Stopped after the marker but before the
// rename, the archive stays whole and the start drops the marker.
func TestAuditArchiveDeleteMarker(t *testing.T) {
	t.Run("renamed", func(t *testing.T) {
		dir := t.TempDir()
		s := startServer(t, dir)
		archive := archiveEdge1(t, s, dir)
		raw, _ := s.st.GetSecure(keyAuditHead + archive)
		s.audit.testHookRemove = func(at string) error {
			if at == "renamed" {
				return errors.New("crash (test)")
			}
			return nil
		}
		if code := deleteArchive(t, s, archive); code != http.StatusInternalServerError {
			t.Fatalf("DELETE %s: %d, want the simulated crash", archive, code)
		}
		if m, err := s.st.GetSecure(keyAuditRemoving + archive); err != nil || m == nil || !bytes.Equal(m, raw) {
			t.Fatalf("removal marker %q %v, want the archive's head %q", m, err, raw)
		}
		s.Close()

		s = startServer(t, dir)
		checkArchiveGone(t, s, dir, archive)
		if m, _ := s.st.GetSecure(keyAuditRemoving + archive); m != nil {
			t.Errorf("the removal marker is still stored: %q", m)
		}
	})
	t.Run("marked", func(t *testing.T) {
		dir := t.TempDir()
		s := startServer(t, dir)
		archive := archiveEdge1(t, s, dir)
		s.audit.testHookRemove = func(at string) error {
			if at == "marked" {
				return errors.New("crash (test)")
			}
			return nil
		}
		if code := deleteArchive(t, s, archive); code != http.StatusInternalServerError {
			t.Fatalf("DELETE %s: %d, want the simulated crash", archive, code)
		}
		s.Close()

		s = startServer(t, dir)
		if m, _ := s.st.GetSecure(keyAuditRemoving + archive); m != nil {
			t.Errorf("the removal marker is still stored: %q", m)
		}
		checkVerdicts(t, auditVerdicts(t, s), map[string]string{
			"control " + s.cfg.Name: "intact",
			"node edge-1":           "intact",
			"archived " + archive:   "intact",
		})
	})
}

// checkArchiveGone checks that only edge-1's chain is left in dir's
// audit/nodes and that the store holds no head of archive.
func checkArchiveGone(t *testing.T, s *Server, dir, archive string) {
	t.Helper()
	if got := nodeDirs(t, dir); len(got) != 1 || got[0] != "edge-1" {
		t.Errorf("audit/nodes holds %v, want only edge-1", got)
	}
	if h := storedHeadOf(t, s, archive); h != nil {
		t.Errorf("the archive's head is still stored: %+v", h)
	}
}
