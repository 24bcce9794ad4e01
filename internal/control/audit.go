package control

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/atomicfile"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
)

// The control plane's audit state (issue 5): its own chain (admin changes,
// certificates issued) in StateDir/audit/control/, and a verified copy of
// every agent's chain in StateDir/audit/nodes/<node>/, fed by the sync
// stream's audit messages.

// Security-bucket keys (internal/store SecureTx) of the audit state. They
// anchor the chains (issue 9) and survive restarts (issue 13), and live in
// the store rather than beside the chain files, so an edit of the files
// alone shows.
const (
	// keyAuditHead + node: auditHead, the last record taken of the node's
	// chain, written after every batch stored; + "<node>.archived-<time>"
	// for a chain archived by a restart.
	keyAuditHead = "audit-head/"
	// keyAuditKey + node: PKIX DER of the key that signs the node's
	// checkpoints (its node certificate's), kept from the last issue.
	keyAuditKey = "audit-key/"
	// keyAuditOwnHead: auditHead of the control plane's own chain.
	keyAuditOwnHead = "audit-own-head"
	// keyAuditRemoving + "<node>.archived-<time>": the marker of an
	// archive's removal under way (DELETE, see removingPrefix): the raw
	// head it removes (noHeadMarker if it had none). Only it, not a
	// directory's name, makes an archive being removed.
	keyAuditRemoving = "audit-removing/"
)

// auditHead is a stored head of a chain: what verification anchors its
// end to.
type auditHead struct {
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	At   time.Time `json:"at"`
}

// auditState is the Server's audit part.
type auditState struct {
	log *audit.Log // the control plane's own chain

	// replicas and keys are guarded by Server.mu.
	replicas map[string]*audit.Replica
	keys     map[string]crypto.PublicKey // node -> key that signs its checkpoints
	// openMu: openMu[openLock(node)] is held while node's replica
	// directory is opened or archived (taken before Server.mu when both
	// are). Striped, so nodes' replicas open in parallel.
	openMu [64]sync.Mutex
	// testHookOpen, if set, runs where a replica's files are opened.
	testHookOpen func(node string)
	// testHookArchived, if set, runs right after a chain's directory is
	// renamed to its archive; an error stops restartAuditChain there, as
	// a crash would.
	testHookArchived func(archive string) error
	// testHookRemove, if set, runs after each step of the removal of an
	// archive (handleAuditArchiveDelete); an error stops it there, as a
	// crash would.
	testHookRemove func(step string) error

	// chainLocks: node -> *sync.Mutex, held across an ingest's append and
	// head update, and across a verification of the node's chain, so a
	// verification never sees records on disk whose head is not stored yet.
	chainLocks sync.Map

	ownWritten chan struct{} // signalled after each write of the own chain
	ownStop    chan struct{} // closed by closeAudit to end ownHeadLoop
	ownDone    chan struct{} // closed when ownHeadLoop has ended

	mRecords                  *metrics.Counter
	mGap, mFork, mInvalid     *metrics.Counter
	mStoreErrors, mOwnDropped *metrics.Counter
	mDamaged                  *metrics.Counter // records nodes reported lost to damage on their disks
	mArchives                 *metrics.Counter // restarts refused past Config.AuditArchivesPerNode
}

func (s *Server) auditNodesDir() string { return filepath.Join(s.cfg.StateDir, "audit", "nodes") }

// openAudit opens the control plane's own audit log and loads the nodes'
// checkpoint keys from the store.
func (s *Server) openAudit() error {
	written := make(chan struct{}, 1)
	l, err := audit.Open(audit.Config{
		Dir:    filepath.Join(s.cfg.StateDir, "audit", "control"),
		Node:   s.cfg.Name,
		Signer: s.cfg.AuditSigner,
		Logger: s.log,
		OnWrite: func(uint64) {
			select {
			case written <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		return fmt.Errorf("control: audit: %w", err)
	}
	s.audit.log = l
	s.audit.replicas = map[string]*audit.Replica{}
	s.audit.keys = map[string]crypto.PublicKey{}
	kvs, err := s.st.ListSecure(keyAuditKey)
	if err != nil {
		l.Close()
		return fmt.Errorf("control: audit keys: %w", err)
	}
	for _, kv := range kvs {
		node := strings.TrimPrefix(kv.Key, keyAuditKey)
		pub, err := x509.ParsePKIXPublicKey(kv.Value)
		if err != nil {
			// Not fatal: that node's checkpoints go unchecked until its
			// next certificate, and verify says "signatures not checked".
			s.log.Error("control: stored audit key unreadable", "node", node, "err", err)
			continue
		}
		s.audit.keys[node] = pub
	}
	s.checkOwnHead()
	s.repairArchives()
	s.audit.ownWritten, s.audit.ownStop, s.audit.ownDone = written, make(chan struct{}), make(chan struct{})
	go s.ownHeadLoop()
	m := s.cfg.Metrics
	s.audit.mRecords = m.NewCounter(`fogmesh_control_audit_records_total`)
	s.audit.mGap = m.NewCounter(`fogmesh_control_audit_refused_total{reason="gap"}`)
	s.audit.mFork = m.NewCounter(`fogmesh_control_audit_refused_total{reason="fork"}`)
	s.audit.mInvalid = m.NewCounter(`fogmesh_control_audit_refused_total{reason="invalid"}`)
	s.audit.mStoreErrors = m.NewCounter(`fogmesh_control_audit_store_errors_total`)
	s.audit.mDamaged = m.NewCounter(`fogmesh_control_audit_damaged_total`)
	s.audit.mArchives = m.NewCounter(`fogmesh_control_audit_refused_total{reason="archives"}`)
	m.NewGauge(`fogmesh_control_audit_own_lost_total`, func() float64 { return float64(l.Dropped()) })
	return nil
}

// closeAudit closes the own log (writing its final checkpoint) and the
// replicas. Streams have ended.
func (s *Server) closeAudit() {
	close(s.audit.ownStop)
	<-s.audit.ownDone
	if err := s.audit.log.Close(); err != nil {
		s.log.Error("control: audit log close", "err", err)
	}
	s.storeOwnHead(0) // with the final checkpoint
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, r := range s.audit.replicas {
		r.Close()
		delete(s.audit.replicas, n)
	}
}

// Audit appends a record to the control plane's own audit chain; Node,
// Seq, Prev and Hash are set by the log, Time if zero. Other packages call
// it for what they decide outside the admin handlers: the PKI, for every
// certificate issued (Kind audit.KindCert, Action "issue", Object the
// serial, Actor the requesting node). It does not wait for the disk; see
// audit.Log.Append for when it can fail.
func (s *Server) Audit(rec audit.Record) error {
	return s.audit.log.Append(rec)
}

// SetAuditKey registers the public key that signs node's audit
// checkpoints (its node certificate's key); from then on the node's
// checkpoints are checked on ingest and by ?verify=1. The key is kept in
// the store, so a restarted control plane goes on checking them.
func (s *Server) SetAuditKey(node string, pub crypto.PublicKey) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		s.log.Error("control: audit key of node not kept", "node", node, "err", err)
	} else if err := s.st.UpdateSecure(func(tx *store.SecureTx) error {
		if bytes.Equal(tx.Get(keyAuditKey+node), der) {
			return nil // a renewal with the same key: nothing to write
		}
		return tx.Put(keyAuditKey+node, der)
	}); err != nil {
		s.log.Error("control: audit key of node not kept; after a restart its checkpoints go unchecked until it renews", "node", node, "err", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.audit.keys[node] = pub
	if r := s.audit.replicas[node]; r != nil {
		r.SetPublicKey(pub)
	}
}

// storedHead returns the head stored under key, nil if none.
func (s *Server) storedHead(key string) (*auditHead, error) {
	b, err := s.st.GetSecure(key)
	if err != nil || b == nil {
		return nil, err
	}
	var h auditHead
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("stored audit head %s: %w", key, err)
	}
	return &h, nil
}

// storeHead stores seq and hash under key if seq is past what is stored
// there (two streams of one node can race; a restarted chain deletes the
// head first).
func (s *Server) storeHead(key string, seq uint64, hash string) error {
	return s.storeHeadWait(key, seq, hash, 0)
}

// storeHeadWait is storeHead that, with wait > 0 and the embedded store,
// rides along with the next commit of objects if one starts within wait
// instead of a write transaction of its own.
func (s *Server) storeHeadWait(key string, seq uint64, hash string, wait time.Duration) error {
	b, _ := json.Marshal(auditHead{Seq: seq, Hash: hash, At: time.Now().UTC()})
	fn := func(tx *store.SecureTx) error {
		var cur auditHead
		if old := tx.Get(key); old != nil && json.Unmarshal(old, &cur) == nil && cur.Seq >= seq {
			return nil
		}
		return tx.Put(key, b)
	}
	if ls, ok := s.st.(lazySecure); ok && wait > 0 {
		return ls.UpdateSecureLazy(fn, wait)
	}
	return s.st.UpdateSecure(fn)
}

// lazySecure is a store whose security records can ride along with the
// next commit (the embedded store).
type lazySecure interface {
	UpdateSecureLazy(fn func(*store.SecureTx) error, wait time.Duration) error
}

// ownHeadWait is how long the own chain's head may wait to be stored
// with the next commit of objects: after an admin change the next change
// usually comes sooner, so at 100 changes a second the head costs no
// commit (two fdatasyncs) of its own. It only widens, by this much, the
// window in which a crash leaves records past the stored head (reported
// as such at the next start, see checkOwnHead).
const ownHeadWait = 50 * time.Millisecond

// storeOwnHead stores the own chain's last record as its head, waiting
// up to wait for a commit to join.
func (s *Server) storeOwnHead(wait time.Duration) {
	seq, hash := s.audit.log.Last()
	if seq == 0 {
		return
	}
	if err := s.storeHeadWait(s.ownHeadKey(), seq, hash, wait); err != nil {
		s.log.Error("control: store the audit head", "err", err)
	}
}

// ownHeadLoop stores the own chain's head after its writes, off the
// writer goroutine (which must not wait for the store).
func (s *Server) ownHeadLoop() {
	defer close(s.audit.ownDone)
	for {
		select {
		case <-s.audit.ownWritten:
			s.storeOwnHead(ownHeadWait)
		case <-s.audit.ownStop:
			return
		}
	}
}

// checkOwnHead compares the own chain, as opened, with its stored head.
// The head is stored only after the records are on disk, so a chain that
// does not reach it was cut or rewritten while the control plane was
// stopped: that is logged and written into the chain itself as an
// audit.ActionHeadMismatch record (the next checkpoint signs it, and
// verify reports it as tampering from then on), and the head moves on
// with the chain.
func (s *Server) checkOwnHead() {
	h, err := s.storedHead(s.ownHeadKey())
	if err != nil || h == nil {
		if err != nil {
			s.log.Error("control: audit head", "err", err)
		}
		return
	}
	seq, hash := s.audit.log.Last()
	what := ""
	switch {
	case seq < h.Seq:
		what = fmt.Sprintf("its files end at seq %d, before the stored head", seq)
	case seq == h.Seq && hash != h.Hash:
		what = "its files hold another record at the stored head's seq"
	case seq > h.Seq:
		if recs, err := s.audit.log.ReadFrom(h.Seq, 1); err != nil || len(recs) != 1 || recs[0].Hash != h.Hash {
			what = "its files hold another record at the stored head's seq"
			break
		}
		// Records past the stored head: written before a crash kept the
		// head from being stored, or appended while the control plane was
		// stopped. Nothing tells which: say so in the chain, before the
		// next checkpoint signs them, and verify names them unanchored.
		msg := fmt.Sprintf("seq %d..%d were found past the stored head (seq %d, stored %s) when the log was opened: written before a crash, or appended while the control plane was stopped",
			h.Seq+1, seq, h.Seq, h.At.Format(time.RFC3339))
		s.log.Warn("control: audit: "+msg, "lastSeq", seq)
		if err := s.Audit(audit.Record{Kind: audit.KindAudit, Action: audit.ActionPastHead, Actor: "control", Object: s.cfg.Name, Reason: msg}); err != nil {
			s.log.Error("control: audit the records past the head", "err", err)
		}
		return
	}
	if what == "" {
		return
	}
	msg := fmt.Sprintf("the control plane's audit chain was cut or rewritten while it was stopped: %s (seq %d, hash %s, stored %s)",
		what, h.Seq, h.Hash, h.At.Format(time.RFC3339))
	s.log.Error("control: "+msg, "lastSeq", seq)
	if err := s.Audit(audit.Record{Kind: audit.KindAudit, Action: audit.ActionHeadMismatch, Actor: "control", Object: s.cfg.Name, Reason: msg}); err != nil {
		s.log.Error("control: audit the head mismatch", "err", err)
	}
	// Let the head follow the chain from here on; the record above keeps
	// the finding.
	if err := s.st.UpdateSecure(func(tx *store.SecureTx) error { return tx.Delete(s.ownHeadKey()) }); err != nil {
		s.log.Error("control: audit head", "err", err)
	}
}

// verifierHead returns the head stored under key as a Verifier head, nil if none.
func (s *Server) verifierHead(key string) (*audit.Head, error) {
	h, err := s.storedHead(key)
	if err != nil || h == nil {
		return nil, err
	}
	return &audit.Head{Seq: h.Seq, Hash: h.Hash}, nil
}

// replica returns node's replica, opening it on first use. The files are
// opened and read under auditState.openMu, not Server.mu, which every
// stream's admission and the sync listener's accept take: a fleet
// reconnecting after a restart opens thousands of replicas, on a disk
// others may be flushing.
func (s *Server) replica(node string) (*audit.Replica, error) {
	s.mu.Lock()
	r := s.audit.replicas[node]
	s.mu.Unlock()
	if r != nil {
		return r, nil
	}
	if !audit.ValidNodeName(node) {
		return nil, fmt.Errorf("bad node name %q", node)
	}
	om := s.audit.openLock(node)
	om.Lock()
	defer om.Unlock()
	s.mu.Lock()
	r = s.audit.replicas[node] // opened meanwhile
	s.mu.Unlock()
	if r != nil {
		return r, nil
	}
	if h := s.audit.testHookOpen; h != nil {
		h(node)
	}
	r, err := audit.OpenReplica(filepath.Join(s.auditNodesDir(), node), node)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if k := s.audit.keys[node]; k != nil {
		r.SetPublicKey(k)
	}
	s.audit.replicas[node] = r
	return r, nil
}

// openLock returns the lock of node's stripe of openMu.
func (a *auditState) openLock(node string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(node))
	return &a.openMu[h.Sum32()%uint32(len(a.openMu))]
}

// auditLast returns the last seq and hash held of node's chain (for
// welcome).
func (s *Server) auditLast(node string) (uint64, string, error) {
	r, err := s.replica(node)
	if err != nil {
		return 0, "", err
	}
	seq, hash := r.Last()
	return seq, hash, nil
}

// restartAuditChain archives the chain held for node (renamed to
// <node>.archived-<unix time>, nothing deleted) before a batch that starts
// the node's chain anew: seq 1 after genesis, sent by an agent whose state
// was reset. The restart is itself recorded in the control plane's chain.
// It renames first and moves the head after: a crash between the two is
// completed at the next start (repairArchives, auditarchive.go); a failed
// head move renames the archive back and refuses the restart (undoArchive).
func (s *Server) restartAuditChain(node string, recs []audit.Record) error {
	if len(recs) == 0 {
		return fmt.Errorf("%w: a restart must begin at seq 1 after genesis", audit.ErrInvalid)
	}
	from, _, _ := audit.DamagedSpan(&recs[0]) // a damage marker can start a chain
	if (recs[0].Seq != 1 && from != 1) || recs[0].Prev != audit.Genesis {
		return fmt.Errorf("%w: a restart must begin at seq 1 after genesis", audit.ErrInvalid)
	}
	mu := s.chainLock(node) // a verification sees the chain before or after, not between
	mu.Lock()
	defer mu.Unlock()
	r, err := s.replica(node)
	if err != nil {
		return err
	}
	oldSeq, oldHash := r.Last()
	if oldSeq == 0 {
		return nil // nothing held: the batch simply starts the chain
	}
	// The same first record already held: this batch sent again after it
	// was taken (its ack lost, or refused past its first records) if the
	// chain held ends within it, on the same record; a resend, not a
	// restart. A chain held that goes past the batch, or differs within
	// it, is not the node's: its state was restored from a backup (its log
	// a prefix of the chain held, or forked from it), and the records it
	// wrote since differ from those held. Taken as a resend, its batches
	// were refused as a fork for good; it is a restart, logged and
	// recorded as a break.
	rolledBack := false
	if got, err := r.ReadFrom(1, 1); err == nil && len(got) == 1 && got[0].Hash == recs[0].Hash {
		if heldWithin(recs, oldSeq, oldHash) {
			return nil
		}
		rolledBack = true
	}
	// Check the new chain's batch before the old chain is moved aside: a
	// refused restart leaves the chain held as it was.
	s.mu.Lock()
	key := s.audit.keys[node]
	s.mu.Unlock()
	if err := audit.CheckStart(node, key, recs); err != nil {
		return err
	}
	if err := s.archiveRoom(node); err != nil {
		return err
	}
	om := s.audit.openLock(node) // no replica() opens the directory while it is archived
	om.Lock()
	defer om.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.audit.replicas[node]; cur != r {
		return errors.New("audit replica changed meanwhile; retry")
	}
	if err := r.Close(); err != nil {
		return err
	}
	delete(s.audit.replicas, node)
	dir := filepath.Join(s.auditNodesDir(), node)
	archived := fmt.Sprintf("%s.archived-%d", dir, time.Now().Unix())
	if err := os.Rename(dir, archived); err != nil {
		return fmt.Errorf("archive audit chain of %s: %w", node, err)
	}
	// On disk before the head moves after it: a head under the archive's
	// name with no such directory is beyond what the start-up repair mends.
	atomicfile.SyncDir(s.auditNodesDir())
	if h := s.audit.testHookArchived; h != nil {
		if err := h(archived); err != nil {
			return err
		}
	}
	// The old chain's head goes with it (to verify the archive by), and
	// the new chain's is stored from its first batch on.
	err = s.st.UpdateSecure(func(tx *store.SecureTx) error {
		if b := tx.Get(keyAuditHead + node); b != nil {
			if err := tx.Put(keyAuditHead+filepath.Base(archived), b); err != nil {
				return err
			}
		}
		return tx.Delete(keyAuditHead + node)
	})
	if err != nil {
		if err := s.undoArchive(node, dir, archived, err); err != nil {
			return err
		}
	}
	why := ""
	if rolledBack {
		why = "chain rolled back (state restored from a backup?): it shares its first records with the chain held and does not reach its head; "
		s.log.Warn("control: node's audit chain went back to an earlier state (restored from a backup?); the chain held is archived and the node's taken from seq 1", "node", node,
			"oldLastSeq", oldSeq, "archive", archived)
	} else {
		s.log.Warn("control: node restarted its audit chain; the old one is archived", "node", node,
			"oldLastSeq", oldSeq, "archive", archived)
	}
	if err := s.Audit(audit.Record{Kind: audit.KindAudit, Action: "restart chain", Actor: node, Object: node,
		Reason: why + fmt.Sprintf("previous chain archived at %s, last seq %d, hash %s", filepath.Base(archived), oldSeq, oldHash)}); err != nil {
		s.log.Error("control: audit the chain restart", "err", err)
	}
	return nil
}

// heldWithin reports whether recs, a restart batch, ends the chain held
// at seq with hash: it holds that seq with that hash (a damage marker
// there is made anew for each send, so its hash is not compared).
func heldWithin(recs []audit.Record, seq uint64, hash string) bool {
	for i := range recs {
		if recs[i].Seq != seq {
			continue
		}
		if _, _, ok := audit.DamagedSpan(&recs[i]); ok {
			return true
		}
		return recs[i].Hash == hash
	}
	return false
}

// undoArchive undoes the archiving of node's chain (dir renamed to
// archived) whose head move failed with err, so the chain held stays as
// it was, and returns the error for the restart. Unless the write went
// through after all (a shared store can fail a write it made): then the
// archive stays, as a restart that succeeded. If that cannot be told (the
// store cannot be read back), or the rename back fails too, the archive is
// left as a crash between the two steps leaves it, which the next start
// completes (repairArchives).
func (s *Server) undoArchive(node, dir, archived string, err error) error {
	b, gerr := s.st.GetSecure(keyAuditHead + filepath.Base(archived))
	if gerr != nil {
		// Whether the move went through is unknown: renamed back, a head
		// stored under the archive's name would have no directory. Left
		// as a crash between the two steps leaves it, which the next
		// start completes if the move did not go through.
		s.log.Error("control: the audit head of a restarted chain may not have been moved, and the store could not be read to tell; the archive stays and is completed at the next start",
			"node", node, "archive", archived, "err", err, "readErr", gerr)
		return fmt.Errorf("archive audit chain of %s: move its head: %w (the archive stays and is completed at the next start: read back: %w)", node, err, gerr)
	}
	if b != nil {
		s.log.Warn("control: the move of a restarted audit chain's head reported an error but was stored", "node", node, "err", err)
		return nil
	}
	if rerr := os.Rename(archived, dir); rerr != nil {
		s.log.Error("control: the audit head of a restarted chain was not moved, nor could its archive be renamed back; the next start completes the archiving",
			"node", node, "archive", archived, "err", err, "renameErr", rerr)
		return fmt.Errorf("archive audit chain of %s: move its head: %w (the archive stays and is completed at the next start: rename back: %w)", node, err, rerr)
	}
	atomicfile.SyncDir(s.auditNodesDir())
	s.log.Error("control: the audit head of a restarted chain was not moved; the archive is renamed back and the restart refused", "node", node, "err", err)
	return fmt.Errorf("archive audit chain of %s: move its head: %w (the chain held is kept)", node, err)
}

// ingestAudit stores a batch of node's records if it continues the chain
// held; refusals are counted by cause.
func (s *Server) ingestAudit(node string, recs []audit.Record) (uint64, error) {
	r, err := s.replica(node)
	if err != nil {
		s.audit.mStoreErrors.Inc()
		return 0, err
	}
	mu := s.chainLock(node)
	mu.Lock()
	defer mu.Unlock()
	before, _ := r.Last()
	last, err := r.Append(recs)
	s.audit.mRecords.Add(int(last - before))
	var added []audit.Record
	for _, rec := range recs {
		if rec.Seq > before && rec.Seq <= last {
			added = append(added, rec)
			if from, to, ok := audit.DamagedSpan(&rec); ok {
				s.audit.mDamaged.Add(int(to - from + 1))
				s.log.Warn("control: node's audit records were unreadable on its disk; it sent a damage marker in their place",
					"node", node, "from", from, "to", to, "detail", rec.Reason)
			}
		}
	}
	s.ui.noteAudit(added)
	if last > before {
		// Anchor what is now on disk (issue 9): verify compares the
		// replica's files with this head.
		seq, hash := r.Last()
		if herr := s.storeHead(keyAuditHead+node, seq, hash); herr != nil {
			s.audit.mStoreErrors.Inc()
			s.log.Error("control: store the audit head of node", "node", node, "err", herr)
		}
	}
	switch {
	case err == nil:
	case errors.Is(err, audit.ErrGap):
		s.audit.mGap.Inc()
	case errors.Is(err, audit.ErrFork):
		s.audit.mFork.Inc()
	case errors.Is(err, audit.ErrInvalid):
		s.audit.mInvalid.Inc()
	default:
		s.audit.mStoreErrors.Inc()
	}
	return last, err
}

// adminPrincipal names who made an admin request: the client certificate's
// first URI SAN or common name when the admin API runs with mutual TLS,
// else the remote IP.
func adminPrincipal(r *http.Request) string {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		c := r.TLS.PeerCertificates[0]
		if len(c.URIs) > 0 {
			return c.URIs[0].String()
		}
		return "cn:" + c.Subject.CommonName
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return "ip:" + host
}

// auditAdmin records an admin change, one record per object, and waits
// (briefly) until they are on disk, so an acknowledged change is an
// audited one.
func (s *Server) auditAdmin(r *http.Request, action string, objects []string, details string) {
	actor := adminPrincipal(r)
	for _, o := range objects {
		if err := s.Audit(audit.Record{Kind: audit.KindAdmin, Actor: actor, Action: action,
			Object: o, Reason: details}); err != nil {
			s.log.Error("control: audit admin change", "action", action, "object", o, "err", err)
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.audit.log.Flush(ctx); err != nil {
		s.log.Error("control: audit flush", "err", err)
	}
}

// AuditChain is one chain in GET /v1/audit answers.
type AuditChain struct {
	Node string `json:"node"`
	// Source is "control" for the control plane's own chain, "node" for
	// an agent's chain as shipped, "archived" for a node's chain archived
	// when the node started a new one (Node is then the archive's name).
	Source   string `json:"source"`
	LastSeq  uint64 `json:"lastSeq"`
	LastHash string `json:"lastHash,omitempty"`
	// Report is set with ?verify=1: the whole chain re-read and checked,
	// against the head the control plane stored when it took the records.
	Report *audit.Report `json:"report,omitempty"`
	// Intact is Report.Intact(): no problem, and anchored at both ends.
	Intact *bool `json:"intact,omitempty"`
}

// AuditResponse is the body of GET /v1/audit and GET /v1/audit/{node}.
type AuditResponse struct {
	Chains []AuditChain `json:"chains"`
}

// isArchive reports whether a directory under the nodes' audit directory
// is an archived chain (<node>.archived-<unix time>; node names have no
// dots).
func isArchive(name string) bool { return strings.Contains(name, ".archived-") }

// handleAudit serves GET /v1/audit (every chain) and GET
// /v1/audit/{node} (one node's, an archive's, or the control plane's own
// under its Name); ?verify=1 re-reads and checks them, each against its
// stored head and with the node's stored key.
func (s *Server) handleAudit(w http.ResponseWriter, r *http.Request) {
	verify, _ := strconv.ParseBool(r.URL.Query().Get("verify"))
	node := r.PathValue("node")
	var resp AuditResponse
	own := node == ""
	if node == s.cfg.Name {
		// The control plane's own chain, unless an agent has its name.
		if _, err := os.Stat(filepath.Join(s.auditNodesDir(), node)); err != nil {
			own, node = true, ""
		}
	}
	if own {
		if verify {
			s.audit.log.Flush(r.Context()) // what was appended before this request is covered
		}
		seq, hash := s.audit.log.Last()
		c := AuditChain{Node: s.cfg.Name, Source: "control", LastSeq: seq, LastHash: hash}
		if verify {
			// Anchored at what the log itself wrote last, which checkOwnHead
			// compared with the stored head when it opened.
			rep, err := s.audit.log.VerifyAnchored(audit.Verifier{PublicKey: signerKey(s.cfg.AuditSigner), FromGenesis: true})
			if err != nil {
				writeError(w, http.StatusInternalServerError, err)
				return
			}
			c.Report, c.Intact = rep, ptr(rep.Intact())
		}
		resp.Chains = append(resp.Chains, c)
	}
	var nodes []string
	if own && r.PathValue("node") != "" {
		// Only the control plane's own chain was asked for.
	} else if node != "" {
		if !audit.ValidNodeName(node) || isRemoving(node) {
			writeError(w, http.StatusBadRequest, fmt.Errorf("bad node name %q", node))
			return
		}
		if _, err := os.Stat(filepath.Join(s.auditNodesDir(), node)); err != nil {
			if h, herr := s.storedHead(keyAuditHead + node); herr != nil || h == nil {
				writeError(w, http.StatusNotFound, fmt.Errorf("no audit records of node %q", node))
				return
			}
			// else: its records were removed; nodeChain reports it.
		}
		nodes = []string{node}
	} else {
		ents, err := os.ReadDir(s.auditNodesDir())
		if err != nil && !os.IsNotExist(err) {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		for _, e := range ents {
			if e.IsDir() && audit.ValidNodeName(e.Name()) && !isRemoving(e.Name()) {
				nodes = append(nodes, e.Name())
			}
		}
		// And every chain the store holds a head of: a directory removed
		// by hand must show as a chain whose records are all gone, not
		// vanish from the list.
		heads, err := s.st.ListSecure(keyAuditHead)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		for _, kv := range heads {
			if n := strings.TrimPrefix(kv.Key, keyAuditHead); audit.ValidNodeName(n) && !slices.Contains(nodes, n) {
				nodes = append(nodes, n)
			}
		}
		slices.Sort(nodes)
	}
	for _, n := range nodes {
		c, err := s.nodeChain(n, verify)
		if errors.Is(err, errChainGone) {
			if r.PathValue("node") != "" {
				writeError(w, http.StatusNotFound, fmt.Errorf("no audit records of node %q: %w", n, err))
				return
			}
			continue
		}
		if err != nil {
			writeError(w, http.StatusInternalServerError, fmt.Errorf("node %s: %w", n, err))
			return
		}
		resp.Chains = append(resp.Chains, c)
	}
	writeJSON(w, http.StatusOK, resp)
}

// chainLock returns the lock of node's chain (see auditState.chainLocks).
func (s *Server) chainLock(node string) *sync.Mutex {
	mu, _ := s.audit.chainLocks.LoadOrStore(node, new(sync.Mutex))
	return mu.(*sync.Mutex)
}

// nodeChain answers for one directory of the nodes' audit directory: a
// node's replica or an archived chain; errChainGone for an archive being
// removed (see removingPrefix) or removed since it was listed.
func (s *Server) nodeChain(n string, verify bool) (AuditChain, error) {
	mu := s.chainLock(n)
	mu.Lock()
	defer mu.Unlock()
	head, err := s.verifierHead(keyAuditHead + n)
	if err != nil {
		return AuditChain{}, err
	}
	_, serr := os.Stat(filepath.Join(s.auditNodesDir(), n))
	if os.IsNotExist(serr) && isArchive(n) {
		// Gone only if the store says so: no head, or a removal marked.
		// A directory named as its removal is no proof (see removingPrefix).
		gone := head == nil
		if !gone {
			if gone, err = s.removingOf(n); err != nil {
				return AuditChain{}, err
			}
		}
		if gone {
			return AuditChain{}, errChainGone
		}
	}
	if os.IsNotExist(serr) && head != nil {
		// The store knows the chain, its directory is gone: every record
		// was removed. Not opened as a replica (that would create it).
		c := AuditChain{Node: n, Source: "removed", LastSeq: head.Seq, LastHash: head.Hash}
		if verify {
			rep := &audit.Report{Node: n, Head: head, Verdict: audit.VerdictTampered, Problems: []audit.Problem{{
				File: filepath.Join(s.auditNodesDir(), n), Kind: audit.ProblemHead,
				Msg: fmt.Sprintf("every record was removed: the stored head is seq %d", head.Seq)}}}
			if _, err := os.Stat(filepath.Join(s.auditNodesDir(), removingPrefix+n)); err == nil {
				rep.Problems[0].Msg += fmt.Sprintf(" (a directory %s%s is there, but the store holds no removal of it: not made by DELETE)", removingPrefix, n)
			}
			c.Report, c.Intact = rep, ptr(false)
		}
		return c, nil
	}
	if isArchive(n) {
		// Not opened as a replica (nothing is appended to it): its files
		// are read as they are.
		c := AuditChain{Node: n, Source: "archived"}
		if head != nil {
			c.LastSeq, c.LastHash = head.Seq, head.Hash
		}
		if verify {
			files, err := audit.ChainFiles(filepath.Join(s.auditNodesDir(), n), "")
			var rep *audit.Report
			if err == nil {
				rep, err = audit.Verifier{Head: head, FromGenesis: true}.Verify(files...)
			}
			if errors.Is(err, fs.ErrNotExist) && head != nil {
				// Its directory is there, a file of its records is not.
				rep, err = &audit.Report{Node: n, Head: head, Verdict: audit.VerdictTampered, Problems: []audit.Problem{{
					File: filepath.Join(s.auditNodesDir(), n), Kind: audit.ProblemHead,
					Msg: fmt.Sprintf("a file of the archive's records is missing (%v): the stored head is seq %d", err, head.Seq)}}}, nil
			}
			if err != nil {
				return c, err
			}
			c.Report, c.Intact = rep, ptr(rep.Intact())
		}
		return c, nil
	}
	rp, err := s.replica(n)
	if err != nil {
		return AuditChain{}, err
	}
	seq, hash := rp.Last()
	c := AuditChain{Node: n, Source: "node", LastSeq: seq, LastHash: hash}
	if verify {
		s.mu.Lock()
		key := s.audit.keys[n]
		s.mu.Unlock()
		rep, err := rp.Verify(audit.Verifier{PublicKey: key, Head: head, FromGenesis: true})
		if err != nil {
			return c, err
		}
		if head == nil && rep.Records > 0 {
			rep.Notes = append(rep.Notes, "the control plane has stored no head of this chain yet (records taken by an older version); the next batch it takes stores one")
		}
		if key == nil && rep.Checkpoints > 0 {
			rep.Notes = append(rep.Notes, "the control plane holds no key of this node (it has not been issued a certificate by this control plane)")
		}
		c.Report, c.Intact = rep, ptr(rep.Intact())
	}
	return c, nil
}

func signerKey(s crypto.Signer) crypto.PublicKey {
	if s == nil {
		return nil
	}
	return s.Public()
}

func ptr[T any](v T) *T { return &v }

// AuditKeyFile and AuditPubFile, in the state directory: the key that signs
// the control plane's own audit checkpoints (made on first secure start,
// mode 0600) and its public half, for `fogmesh audit verify --pubkey`.
const (
	AuditKeyFile = "audit-key.pem"
	AuditPubFile = "audit-key.pub.pem"
)

func auditKey(dir string) (crypto.Signer, error) {
	path := filepath.Join(dir, AuditKeyFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		k, err := identity.NewKey()
		if err != nil {
			return nil, err
		}
		b, err := identity.EncodeKeyPEM(k)
		if err != nil {
			return nil, err
		}
		if err := identity.WriteFileAtomic(path, b, 0o600); err != nil {
			return nil, fmt.Errorf("control: audit key: %w", err)
		}
	}
	key, err := identity.ReadKeyFile(path)
	if err != nil {
		return nil, fmt.Errorf("control: audit key: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	pub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	if err := identity.WriteFileAtomic(filepath.Join(dir, AuditPubFile), pub, 0o644); err != nil {
		return nil, fmt.Errorf("control: audit public key: %w", err)
	}
	return key, nil
}
