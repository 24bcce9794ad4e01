package control

import (
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startLoggedServer is startServer with its log kept in log.
func startLoggedServer(t *testing.T, dir string, log *syncLog) *Server {
	t.Helper()
	return serveControl(t, Config{StateDir: dir, AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, NodeExpiry: 600 * time.Millisecond, Insecure: true,
		Logger: slog.New(slog.NewTextHandler(log, nil))})
}

// leaveRemoval makes, in dir's audit/nodes, the directory an earlier
// removal of archive left when its files could not be removed, with a
// file in it.
func leaveRemoval(t *testing.T, dir, archive string) string {
	t.Helper()
	left := filepath.Join(dir, "audit", "nodes", removingPrefix+archive)
	if err := os.MkdirAll(left, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(left, "audit.log"), []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return left
}

// TestAuditArchiveLeftoverSweptByNextDelete: the files an earlier removal
// left (its last step failed: no marker, no head stored) are removed by
// the next DELETE of another archive, without a restart, and logged.
func TestAuditArchiveLeftoverSweptByNextDelete(t *testing.T) {
	dir := t.TempDir()
	var log syncLog
	s := startLoggedServer(t, dir, &log)
	archive := archiveEdge1(t, s, dir)
	const old = "edge-1.archived-1000000000"
	leaveRemoval(t, dir, old)
	if code := deleteArchive(t, s, archive); code != http.StatusOK {
		t.Fatalf("DELETE %s: %d, want 200", archive, code)
	}
	checkArchiveGone(t, s, dir, archive)
	if l := log.String(); !strings.Contains(l, "completed the removal of an archived audit chain") || !strings.Contains(l, old) {
		t.Errorf("the leftover's removal is not logged:\n%s", l)
	}
}

// TestAuditArchiveLeftoverOfSameNameSweptAtStart: the files an earlier
// removal of an archive's name left beside an archive of that name made
// since (the clock went back) are removed at the next start, logged; the
// archive itself is kept, its head and files, listed intact.
func TestAuditArchiveLeftoverOfSameNameSweptAtStart(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	archive := archiveEdge1(t, s, dir)
	head := storedHeadOf(t, s, archive)
	left := leaveRemoval(t, dir, archive)
	s.Close()

	var log syncLog
	s = startLoggedServer(t, dir, &log)
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Errorf("the leftover %s after the start: %v, want removed", left, err)
	}
	if h := storedHeadOf(t, s, archive); h == nil || *h != *head {
		t.Errorf("the archive's head after the start: %+v, want %+v", h, head)
	}
	checkVerdicts(t, auditVerdicts(t, s), map[string]string{
		"control " + s.cfg.Name: "intact",
		"node edge-1":           "intact",
		"archived " + archive:   "intact",
	})
	if l := log.String(); !strings.Contains(l, "removed the files left by an earlier removal") || !strings.Contains(l, archive) {
		t.Errorf("the leftover's removal is not logged:\n%s", l)
	}
}

// TestAuditArchiveMovedFilesKeptAtStart: an archive's files moved by hand
// to its removal's name, with an empty directory left under its own name,
// are no leftover of a removal: the archive's own directory does not hold
// its stored head. They are kept, and the chain listed as tampered.
func TestAuditArchiveMovedFilesKeptAtStart(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	archive := archiveEdge1(t, s, dir)
	s.Close()
	nodes := filepath.Join(dir, "audit", "nodes")
	moved := filepath.Join(nodes, removingPrefix+archive)
	if err := os.Rename(filepath.Join(nodes, archive), moved); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(nodes, archive), 0o700); err != nil {
		t.Fatal(err)
	}

	var log syncLog
	s = startLoggedServer(t, dir, &log)
	if ents, err := os.ReadDir(moved); err != nil || len(ents) == 0 {
		t.Fatalf("the archive's moved files after the start: %v, %d files; want kept", err, len(ents))
	}
	if l := log.String(); !strings.Contains(l, "does not hold its head") || !strings.Contains(l, archive) {
		t.Errorf("the moved files are not logged as tampering:\n%s", l)
	}
	if v := auditVerdicts(t, s)["archived "+archive]; v == "intact" {
		t.Errorf("the archive whose files were moved is listed %q", v)
	}
}
