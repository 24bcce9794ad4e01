package control

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/fogmesh/fogmesh/internal/atomicfile"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/store"
)

// Archived chains (restartAuditChain): a node that starts its chain anew
// has the chain held for it renamed to <node>.archived-<unix time>, and
// its stored head moved to the archive's name. The rename and the move
// cannot be one atomic step (one is the file system, the other the
// store), so a crash between them is repaired at start by
// repairArchives; a failed move renames the archive back (undoArchive).
// Their removal (DELETE) is made crash-safe the same way: see
// removingPrefix.

// repairArchives completes, at start, what a crash left of a chain's
// archiving: the directory renamed to its archive, but the head still
// stored under the node's name. That archive would verify unanchored (no
// head), and the node's next chain would be checked against the old
// chain's head (and, shorter, never store its own: heads only move
// forward), so it would look cut.
//
// The node's head moves to an archive without a head when the archive
// holds the head's record (its seq with exactly its hash) and the node's
// current directory does not: the hash pins the chain the head was stored
// for, so nothing is trusted from the files that the store did not
// already say. Several archives of a node: the newest first. The
// completed restart is written into the control plane's own chain, as
// restartAuditChain does. Removals of archives a crash stopped are
// completed first (repairRemovals). Runs before any stream is served.
func (s *Server) repairArchives() {
	ents, err := os.ReadDir(s.auditNodesDir())
	if err != nil {
		if !os.IsNotExist(err) {
			s.log.Error("control: audit archives", "err", err)
			return
		}
		ents = nil
	}
	s.repairRemovals(ents)
	if ents == nil {
		return
	}
	var archives []string
	for _, e := range ents {
		if e.IsDir() && isArchive(e.Name()) && !isRemoving(e.Name()) && audit.ValidNodeName(e.Name()) {
			archives = append(archives, e.Name())
		}
	}
	// Newest first: <node>.archived-<unix time>, ten digits until 2286.
	slices.SortFunc(archives, func(a, b string) int { return strings.Compare(b, a) })
	for _, name := range archives {
		if err := s.repairArchive(name); err != nil {
			s.log.Error("control: audit archive without its head not repaired; it verifies unanchored", "archive", name, "err", err)
		}
	}
}

// repairArchive moves the node's head to archive name if it belongs there
// (see repairArchives).
func (s *Server) repairArchive(name string) error {
	node := name[:strings.Index(name, ".archived-")]
	if h, err := s.storedHead(keyAuditHead + name); err != nil || h != nil {
		return err // it has its head
	}
	raw, err := s.st.GetSecure(keyAuditHead + node)
	if err != nil || raw == nil {
		return err // no head to move: the archive stays unanchored
	}
	nh, err := s.storedHead(keyAuditHead + node)
	if err != nil {
		return err
	}
	if cur, err := s.dirHolds(node, nh); err != nil || cur {
		return err // the head is the node's current chain's
	}
	if ok, err := s.dirHolds(name, nh); err != nil || !ok {
		return err // another chain's head
	}
	moved := false
	err = s.st.UpdateSecure(func(tx *store.SecureTx) error {
		if !bytes.Equal(tx.Get(keyAuditHead+node), raw) || tx.Get(keyAuditHead+name) != nil {
			return nil // changed meanwhile
		}
		if err := tx.Put(keyAuditHead+name, raw); err != nil {
			return err
		}
		moved = true
		return tx.Delete(keyAuditHead + node)
	})
	if err != nil || !moved {
		return err
	}
	s.log.Warn("control: completed the archiving of a node's audit chain (the control plane stopped between renaming it and moving its head)",
		"node", node, "archive", name, "lastSeq", nh.Seq)
	if err := s.Audit(audit.Record{Kind: audit.KindAudit, Action: "restart chain", Actor: node, Object: node,
		Reason: fmt.Sprintf("previous chain archived at %s, last seq %d, hash %s (completed at start: the control plane stopped between archiving the chain and moving its head)",
			name, nh.Seq, nh.Hash)}); err != nil {
		s.log.Error("control: audit the chain restart", "err", err)
	}
	return nil
}

// dirHolds reports whether the chain in the directory dir of the nodes'
// audit directory holds head h's record (its seq and hash); false if dir
// does not exist.
func (s *Server) dirHolds(dir string, h *auditHead) (bool, error) {
	files, err := audit.ChainFiles(filepath.Join(s.auditNodesDir(), dir), "")
	if err != nil {
		if _, serr := os.Stat(filepath.Join(s.auditNodesDir(), dir)); os.IsNotExist(serr) {
			return false, nil
		}
		return false, err
	}
	r, err := audit.RecordAt(files, h.Seq)
	return r != nil && r.Hash == h.Hash, err
}

// DefaultAuditArchivesPerNode is Config.AuditArchivesPerNode's default.
const DefaultAuditArchivesPerNode = 16

// errArchives refuses a restart of a node's chain past
// Config.AuditArchivesPerNode.
var errArchives = errors.New("too many archived chains")

// archiveRoom returns errArchives (counted and logged) if node has
// Config.AuditArchivesPerNode archives already.
func (s *Server) archiveRoom(node string) error {
	bound := s.cfg.AuditArchivesPerNode
	if bound < 0 {
		return nil
	}
	ents, err := os.ReadDir(s.auditNodesDir())
	if err != nil {
		return fmt.Errorf("audit archives: %w", err)
	}
	n := 0
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), node+".archived-") {
			n++
		}
	}
	if n < bound {
		return nil
	}
	s.audit.mArchives.Inc()
	s.log.Error("control: node restarted its audit chain, but the control plane keeps no more archives of it; its new chain waits on the node until archives are removed (DELETE /v1/audit/{archive})",
		"node", node, "archives", n, "auditArchivesPerNode", bound)
	return fmt.Errorf("%w: node %s has %d archived chains, the bound is %d; an operator must remove one (DELETE /v1/audit/%s.archived-TIME) before this chain can be taken",
		errArchives, node, n, bound, node)
}

// An archive is removed (handleAuditArchiveDelete) in four steps, each
// of which leaves a state that a listing and the next start take as the
// archive fully there or fully gone:
//
//  1. a removal marker is written to the store (keyAuditRemoving+<archive>,
//     holding the head it removes): the store, not a name on disk, says
//     that the archive is being removed;
//  2. its directory is renamed to removingPrefix+<archive> (and the nodes'
//     directory synced): from then on it is gone for GET /v1/audit, which
//     lists neither that directory nor a stored head whose marker matches;
//  3. its stored head and the marker are deleted in one store write (if
//     this fails, the rename is undone and the marker dropped);
//  4. the renamed directory is removed (and the nodes' directory synced).
//
// A crash after 1 leaves the archive whole (the next start drops the
// marker); one after 2 or 3 is completed at the next start
// (repairRemovals), or by a second DELETE of the archive. A failure of 4
// leaves the directory: the next start or the next DELETE of any archive
// removes it (sweepRemoval). A removingPrefix directory without a marker
// is no removal: an archive whose head is stored and whose directory is
// gone is listed as a chain whose records were removed (tampered),
// whatever other directory is there.
const removingPrefix = ".removing-"

// noHeadMarker is the removal marker of an archive that has no stored head.
var noHeadMarker = []byte("no head")

// isRemoving reports whether a directory under the nodes' audit directory
// is named as an archive being removed (removingPrefix+<archive>).
func isRemoving(name string) bool { return strings.HasPrefix(name, removingPrefix) }

// errChainGone: the chain asked for is an archive being removed, or gone
// since it was listed.
var errChainGone = errors.New("archived chain removed")

// markerMatches reports whether the removal marker m is of the head raw
// (nil: no head stored).
func markerMatches(m, raw []byte) bool {
	if m == nil {
		return false
	}
	if raw == nil {
		return bytes.Equal(m, noHeadMarker)
	}
	return bytes.Equal(m, raw)
}

// removingOf reports whether the archive name is being removed: the store
// holds its removal marker, of the head stored now.
func (s *Server) removingOf(name string) (bool, error) {
	m, err := s.st.GetSecure(keyAuditRemoving + name)
	if err != nil || m == nil {
		return false, err
	}
	raw, err := s.st.GetSecure(keyAuditHead + name)
	if err != nil {
		return false, err
	}
	return markerMatches(m, raw), nil
}

// repairRemovals completes, at start, the removals of archives a crash
// stopped (see removingPrefix). For each marker in the store: if the
// archive's directory is there under its own name, the removal had not
// begun on disk (or was undone) and the marker is dropped; else the head
// it names and the marker are deleted together (a head that is not the
// marker's is kept, and the marker dropped) and the renamed directory is
// removed. A removingPrefix directory without a marker is swept
// (sweepRemoval: removed if its files are a leftover, left alone and
// logged if they are in place of an archive whose head is stored). The
// removal was recorded in the control plane's own chain before it began.
func (s *Server) repairRemovals(ents []os.DirEntry) {
	nodes := s.auditNodesDir()
	marks, err := s.st.ListSecure(keyAuditRemoving)
	if err != nil {
		s.log.Error("control: audit archive removals", "err", err)
		return
	}
	removed := false
	for _, kv := range marks {
		name := strings.TrimPrefix(kv.Key, keyAuditRemoving)
		_, serr := os.Stat(filepath.Join(nodes, name))
		if serr != nil && !os.IsNotExist(serr) {
			// Not "gone": an unreadable or not yet mounted directory must not
			// cost the archive its head.
			s.log.Error("control: removal of an archived audit chain not completed; retried at the next start", "archive", name, "err", serr)
			continue
		}
		whole := serr == nil
		completed := false
		err := s.st.UpdateSecure(func(tx *store.SecureTx) error {
			completed = false
			m := tx.Get(kv.Key)
			if !bytes.Equal(m, kv.Value) {
				return nil // changed meanwhile
			}
			if !whole && markerMatches(m, tx.Get(keyAuditHead+name)) {
				if err := tx.Delete(keyAuditHead + name); err != nil {
					return err
				}
				completed = true
			}
			return tx.Delete(kv.Key)
		})
		if err != nil {
			s.log.Error("control: removal of an archived audit chain not completed; retried at the next start", "archive", name, "err", err)
			continue
		}
		if !completed {
			s.log.Warn("control: dropped the marker of an archived audit chain's removal that had not begun (or was undone); the archive is kept", "archive", name)
			continue
		}
		if err := os.RemoveAll(filepath.Join(nodes, removingPrefix+name)); err != nil {
			s.log.Error("control: files of a removed audit archive not removed; retried at the next start", "archive", name, "err", err)
			continue
		}
		removed = true
		s.log.Warn("control: completed the removal of an archived audit chain (the control plane stopped during its DELETE)", "archive", name)
	}
	if s.sweepRemovals(ents, "") {
		removed = true
	}
	if removed {
		atomicfile.SyncDir(nodes)
	}
}

// sweepRemovals removes the removingPrefix directories of ents that no
// removal is in progress for (sweepRemoval), but the one of the archive
// skip, whose removal the caller runs. It reports whether it removed one;
// the caller syncs the nodes' directory.
func (s *Server) sweepRemovals(ents []os.DirEntry, skip string) (removed bool) {
	for _, e := range ents {
		name := strings.TrimPrefix(e.Name(), removingPrefix)
		if !e.IsDir() || !isRemoving(e.Name()) || !isArchive(name) || !audit.ValidNodeName(name) || name == skip {
			continue
		}
		if s.sweepRemoval(name) {
			removed = true
		}
	}
	return removed
}

// sweepRemoval removes removingPrefix+name, the files an earlier removal
// of the archive name left (its last step failed, or a crash came after
// its head was deleted), when the store holds no marker of a removal of
// name (one with a marker is completed at the next start or by a DELETE
// of the archive) and either no head of name (the removal got past step
// 3) or a head and the archive's own directory (an archive of that name
// made since, after the clock went back: the leftover hides nothing of
// it). With a head and no directory of its own, the directory is in place
// of the archive's files: tampering, logged and left alone.
func (s *Server) sweepRemoval(name string) bool {
	mu := s.chainLock(name)
	mu.Lock()
	defer mu.Unlock()
	nodes := s.auditNodesDir()
	dir := filepath.Join(nodes, removingPrefix+name)
	if _, err := os.Lstat(dir); err != nil {
		return false // gone meanwhile
	}
	m, err := s.st.GetSecure(keyAuditRemoving + name)
	var raw []byte
	if err == nil {
		raw, err = s.st.GetSecure(keyAuditHead + name)
	}
	if err != nil {
		s.log.Error("control: audit archive removals", "archive", name, "err", err)
		return false
	}
	if m != nil {
		return false
	}
	what := "completed the removal of an archived audit chain (an earlier DELETE of it stopped or failed before its files were removed)"
	if raw != nil {
		// Only next to an archive of that name whose own files hold its
		// stored head: else the directory may be in place of its files.
		h, err := s.storedHead(keyAuditHead + name)
		ok := false
		if err == nil && h != nil {
			ok, err = s.dirHolds(name, h)
		}
		if err != nil || !ok {
			s.log.Error("control: a directory is named as the removal of an archived audit chain, but the store holds no such removal and the archive of that name does not hold its head: the archive's files were removed or moved by hand; its head and the directory are kept and the chain listed as tampered",
				"archive", name, "dir", removingPrefix+name, "err", err)
			return false
		}
		what = "removed the files left by an earlier removal of an archived audit chain of the same name; the archive of that name now is kept"
	}
	if err := os.RemoveAll(dir); err != nil {
		s.log.Error("control: files of a removed audit archive not removed; retried at the next start or removal", "archive", name, "err", err)
		return false
	}
	s.log.Warn("control: "+what, "archive", name, "dir", removingPrefix+name)
	return true
}

// removeHead deletes the head stored under the archive name's key if it
// is still raw (not another archive's of that name, stored meanwhile),
// and its removal marker, in one write. A write that failed but went
// through after all (a shared store can fail one it made) is not an
// error.
func (s *Server) removeHead(name string, raw []byte) error {
	key := keyAuditHead + name
	err := s.st.UpdateSecure(func(tx *store.SecureTx) error {
		if raw != nil && bytes.Equal(tx.Get(key), raw) {
			if err := tx.Delete(key); err != nil {
				return err
			}
		}
		return tx.Delete(keyAuditRemoving + name)
	})
	if err != nil {
		b, gerr := s.st.GetSecure(key)
		m, merr := s.st.GetSecure(keyAuditRemoving + name)
		if gerr == nil && merr == nil && m == nil && (raw == nil || !bytes.Equal(b, raw)) {
			return nil
		}
	}
	return err
}

// handleAuditArchiveDelete serves DELETE /v1/audit/{archive}: it removes
// an archived chain (<node>.archived-<time>: its files and its stored
// head), after recording the removal, with the archive's head, as an admin
// change in the control plane's own chain. Only archives: a node's current
// chain is never removed through the API. The steps, and what a crash
// between them leaves: see removingPrefix.
func (s *Server) handleAuditArchiveDelete(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("node")
	if !audit.ValidNodeName(name) || !isArchive(name) || isRemoving(name) {
		writeError(w, http.StatusBadRequest, fmt.Errorf("%q is not an archived chain (NODE.archived-TIME): only those can be removed", name))
		return
	}
	nodes := s.auditNodesDir()
	// Files left by earlier removals of other archives (their last step
	// failed) go first: else they stay until the next start.
	if ents, err := os.ReadDir(nodes); err == nil && s.sweepRemovals(ents, name) {
		atomicfile.SyncDir(nodes)
	}
	mu := s.chainLock(name)
	mu.Lock()
	defer mu.Unlock()
	dir := filepath.Join(nodes, name)
	removing := filepath.Join(nodes, removingPrefix+name)
	key := keyAuditHead + name
	raw, err := s.st.GetSecure(key)
	var h *auditHead
	if err == nil {
		h, err = s.storedHead(key)
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	_, derr := os.Stat(dir)
	hasDir := derr == nil
	_, rerr := os.Stat(removing)
	if !hasDir && h == nil && rerr != nil {
		writeError(w, http.StatusNotFound, fmt.Errorf("no archived chain %q", name))
		return
	}
	what := "no stored head"
	if h != nil {
		what = fmt.Sprintf("head seq %d, hash %s", h.Seq, h.Hash)
	}
	s.auditAdmin(r, "delete", []string{"audit/" + name}, "archived audit chain removed ("+what+")")
	hook := func(step string) bool {
		if hk := s.audit.testHookRemove; hk != nil {
			if err := hk(step); err != nil {
				writeError(w, http.StatusInternalServerError, err)
				return false
			}
		}
		return true
	}
	marker := raw
	if marker == nil {
		marker = noHeadMarker
	}
	if err := s.st.UpdateSecure(func(tx *store.SecureTx) error { return tx.Put(keyAuditRemoving+name, marker) }); err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Errorf("remove %s: mark its removal: %w (the archive is kept)", name, err))
		return
	}
	if !hook("marked") {
		return
	}
	if hasDir {
		// A directory left by an earlier removal of an archive of that
		// name (its files could not all be removed) goes first; the head
		// stored now is this archive's.
		if err := os.RemoveAll(removing); err != nil {
			s.unmark(name, marker)
			writeError(w, http.StatusInternalServerError, fmt.Errorf("remove %s: %w", name, err))
			return
		}
		if err := os.Rename(dir, removing); err != nil {
			s.unmark(name, marker)
			writeError(w, http.StatusInternalServerError, fmt.Errorf("remove %s: %w", name, err))
			return
		}
		atomicfile.SyncDir(nodes)
		if !hook("renamed") {
			return
		}
	}
	if err := s.removeHead(name, raw); err != nil {
		// Not removed: the archive stays, whole.
		if hasDir {
			if rerr := os.Rename(removing, dir); rerr != nil {
				s.log.Error("control: the head of an archived audit chain was not removed, nor could its files be renamed back; it is left out of the listing and its removal completed at the next start",
					"archive", name, "err", err, "renameErr", rerr)
				writeError(w, http.StatusInternalServerError, fmt.Errorf("remove the head of %s: %w (its removal is completed at the next start: rename back: %w)", name, err, rerr))
				return
			}
			atomicfile.SyncDir(nodes)
		}
		s.unmark(name, marker)
		writeError(w, http.StatusInternalServerError, fmt.Errorf("remove the head of %s: %w (the archive is kept)", name, err))
		return
	}
	if !hook("head removed") {
		return
	}
	if err := os.RemoveAll(removing); err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Errorf("remove the files of %s: %w (the archive is gone from the listing; its files are removed at the next start)", name, err))
		return
	}
	atomicfile.SyncDir(nodes)
	writeJSON(w, http.StatusOK, map[string]string{"deleted": name})
}

// unmark drops the removal marker of archive name if it is still marker:
// its removal was not begun on disk, or was undone. If that fails too,
// the next start drops it (the archive's directory is there).
func (s *Server) unmark(name string, marker []byte) {
	err := s.st.UpdateSecure(func(tx *store.SecureTx) error {
		if !bytes.Equal(tx.Get(keyAuditRemoving+name), marker) {
			return nil
		}
		return tx.Delete(keyAuditRemoving + name)
	})
	if err != nil {
		s.log.Error("control: the marker of an archived audit chain's removal that was undone is not dropped; the next start drops it", "archive", name, "err", err)
	}
}
