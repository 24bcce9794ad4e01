package audit

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
)

// Errors of Replica.Append, for callers that count refusals by cause.
var (
	// ErrGap: the batch starts after the next seq the replica expects
	// (records in between were never shipped).
	ErrGap = errors.New("gap")
	// ErrFork: a record does not chain to the replica's last record (its
	// prev differs), or a record the replica holds was sent with another
	// hash: the sender's chain was rewritten.
	ErrFork = errors.New("fork")
	// ErrInvalid: a record is malformed, has a wrong hash or signature,
	// or belongs to another node.
	ErrInvalid = errors.New("invalid record")
)

// Replica is a verified copy of another node's chain, kept by the control
// plane: Append accepts a batch only if it continues the chain it holds.
// Its files are open only while a batch is written or read. It is safe
// for concurrent use.
type Replica struct {
	node string
	seg  *segments

	mu   sync.Mutex // guards the following
	seq  uint64
	hash string
	// damaged: the last record held is a damage marker, so the next
	// record's prev cannot be checked.
	damaged bool
	pub     crypto.PublicKey
}

// ValidNodeName reports whether name can name a replica directory: a
// non-empty single path element.
func ValidNodeName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, `/\`) && filepath.IsLocal(name) && len(name) <= 253
}

// OpenReplica opens (or creates) node's replica in dir. A torn tail is cut
// off as Open does; the sender ships those records again.
func OpenReplica(dir, node string) (*Replica, error) {
	if !ValidNodeName(node) {
		return nil, fmt.Errorf("audit: bad node name %q", node)
	}
	seg, t, err := openSegments(dir, "audit.log", 16<<20, 0, false)
	if err != nil {
		return nil, err
	}
	r := &Replica{node: node, seg: seg, hash: Genesis}
	if t.last != nil {
		if t.last.Node != node {
			seg.close()
			return nil, fmt.Errorf("audit: %s holds the chain of node %q, not %q", dir, t.last.Node, node)
		}
		r.seq, r.hash = t.last.Seq, t.last.Hash
		_, _, r.damaged = DamagedSpan(t.last)
	}
	// The control plane holds a replica per node it has heard from: one
	// open file each would double its fds (and at 10,000 agents reach the
	// limit). The chain's end stays in memory; Append opens the file.
	seg.keepClosed()
	return r, nil
}

// SetPublicKey makes Append check checkpoint signatures with the node's key.
func (r *Replica) SetPublicKey(pub crypto.PublicKey) {
	r.mu.Lock()
	r.pub = pub
	r.mu.Unlock()
}

// Last returns the seq and hash of the last record held.
func (r *Replica) Last() (uint64, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seq, r.hash
}

// ReadFrom returns up to max records from seq on.
func (r *Replica) ReadFrom(seq uint64, max int) ([]Record, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if seq == 0 {
		seq = 1
	}
	return r.seg.readFrom(seq, max)
}

// Files lists the replica's files in chain order.
func (r *Replica) Files() ([]string, error) { return r.seg.files() }

// Append checks that recs (in seq order) continue the chain and writes
// them, fsynced, all or none. Records the replica already holds are
// skipped (a batch resent after a lost ack), but the last of them must
// carry the hash stored at its seq (ErrFork if not: the sender's chain
// differs from the one held; hashes chain, so the records before it
// match too); once the batch goes past them, a record that
// goes back is refused (ErrInvalid), as is seq 0. It returns the last seq held afterwards; an
// error wraps ErrGap, ErrFork or ErrInvalid when the batch is refused.
func (r *Replica) Append(recs []Record) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	seq, hash, damaged := r.seq, r.hash, r.damaged
	if err := r.checkHeld(recs); err != nil {
		return r.seq, err
	}
	var buf []byte
	var first uint64
	for i := range recs {
		rec := &recs[i]
		if rec.Node != r.node {
			return r.seq, fmt.Errorf("%w: seq %d is a record of node %q", ErrInvalid, rec.Seq, rec.Node)
		}
		if rec.Seq == 0 {
			return r.seq, fmt.Errorf("%w: seq 0", ErrInvalid)
		}
		if rec.Seq <= seq {
			if first != 0 {
				// Not a record held before the batch: the batch goes
				// back, and this record would be dropped unchecked.
				return r.seq, fmt.Errorf("%w: seq %d after seq %d: the batch is not in seq order", ErrInvalid, rec.Seq, seq)
			}
			if rec.Seq == seq && rec.Hash != hash {
				return r.seq, fmt.Errorf("%w: seq %d has hash %.12s…, the stored record has %.12s…", ErrFork, rec.Seq, rec.Hash, hash)
			}
			continue
		}
		line, err := checkNext(rec, seq, hash, damaged, r.pub)
		if err != nil {
			return r.seq, err
		}
		if first == 0 {
			first = rec.Seq
		}
		buf = append(buf, line...)
		seq, hash = rec.Seq, rec.Hash
		_, _, damaged = DamagedSpan(rec)
	}
	if len(buf) == 0 {
		return r.seq, nil
	}
	if n, err := r.seg.write(buf, first, Head{Seq: seq, Hash: hash}); err != nil {
		if n > 0 {
			// Some records are on disk: hold them, so the chain state
			// matches the files.
			// A marker's seq skips the seqs it stands in for: find the
			// last record written by its line.
			part := bytes.Count(buf[:n], []byte{'\n'})
			for i := range recs {
				if recs[i].Seq > r.seq && part > 0 {
					part--
					r.seq, r.hash = recs[i].Seq, recs[i].Hash
					_, _, r.damaged = DamagedSpan(&recs[i])
				}
			}
		}
		return r.seq, err
	}
	r.seq, r.hash, r.damaged = seq, hash, damaged
	return r.seq, nil
}

// checkHeld checks the records at the start of recs that the replica
// holds already (seq at or below its head): the last of them must be the
// record stored at its seq. The one at the head is checked against the
// hash in memory (by Append); one below it costs one read (resends
// only). Damage markers, sent or held, and records the replica cannot
// read are not checked. Called with r.mu held.
func (r *Replica) checkHeld(recs []Record) error {
	last := -1
	for i := range recs {
		if recs[i].Seq == 0 || recs[i].Seq > r.seq {
			break
		}
		last = i
	}
	if last < 0 || recs[last].Seq == r.seq {
		return nil
	}
	rec := &recs[last]
	if _, _, ok := DamagedSpan(rec); ok {
		return nil // a marker is made anew for each send (its time, so its hash, differ)
	}
	got, err := r.seg.readFrom(rec.Seq, 1)
	if err != nil || len(got) != 1 {
		return nil // unreadable here: not checked, as before (verify reports the replica's damage)
	}
	if got[0].Seq != rec.Seq {
		return nil // within a damage marker's span held: its records differ from it by nature
	}
	if got[0].Hash != rec.Hash {
		return fmt.Errorf("%w: seq %d has hash %.12s…, the stored record (seq %d) has %.12s…", ErrFork, rec.Seq, rec.Hash, got[0].Seq, got[0].Hash)
	}
	return nil
}

// checkNext checks that rec, a well-formed record, follows seq (whose
// hash is hash) and returns its line; pub, if set, checks the signature of
// a checkpoint or a damage marker. A damage marker for seq+1..rec.Seq may
// skip seqs; after one (afterDamage) rec's prev is not checked: it is the
// hash of a record lost to the damage. An error wraps ErrGap, ErrFork or
// ErrInvalid.
func checkNext(rec *Record, seq uint64, hash string, afterDamage bool, pub crypto.PublicKey) ([]byte, error) {
	from, _, marker := DamagedSpan(rec)
	switch {
	case marker && from != seq+1:
		return nil, fmt.Errorf("%w: damage marker for seq %d..%d, want one from seq %d", ErrGap, from, rec.Seq, seq+1)
	case !marker && rec.Seq != seq+1:
		return nil, fmt.Errorf("%w: got seq %d, want %d", ErrGap, rec.Seq, seq+1)
	}
	if err := rec.checkFields(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := rec.checkHash(); err != nil {
		return nil, fmt.Errorf("%w: seq %d: %v", ErrInvalid, rec.Seq, err)
	}
	if rec.Prev != hash && !afterDamage {
		return nil, fmt.Errorf("%w: seq %d does not chain to seq %d", ErrFork, rec.Seq, seq)
	}
	if (rec.Kind == KindCheckpoint || marker) && pub != nil {
		if err := VerifySignature(pub, rec); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
	}
	line, err := rec.MarshalLine()
	if err != nil {
		return nil, fmt.Errorf("%w: seq %d: %v", ErrInvalid, rec.Seq, err)
	}
	if _, err := DecodeLine(line); err != nil {
		// Decoded from JSON into a form that does not re-encode the
		// same (a non-UTC time, say): its hash cannot be checked
		// from the stored line later.
		return nil, fmt.Errorf("%w: seq %d: %v", ErrInvalid, rec.Seq, err)
	}
	return line, nil
}

// CheckStart checks, writing nothing, that recs begin a chain of node
// from seq 1 as Append would take them into an empty replica (pub, if
// set, checks checkpoint signatures): what a restart must pass before the
// chain held is archived for it.
func CheckStart(node string, pub crypto.PublicKey, recs []Record) error {
	seq, hash, damaged := uint64(0), Genesis, false
	for i := range recs {
		rec := &recs[i]
		if rec.Node != node {
			return fmt.Errorf("%w: seq %d is a record of node %q", ErrInvalid, rec.Seq, rec.Node)
		}
		if _, err := checkNext(rec, seq, hash, damaged, pub); err != nil {
			return err
		}
		seq, hash = rec.Seq, rec.Hash
		_, _, damaged = DamagedSpan(rec)
	}
	return nil
}

// Verify verifies the replica's files with v.
func (r *Replica) Verify(v Verifier) (*Report, error) { return r.seg.verify(v) }

// Close closes the replica's files.
func (r *Replica) Close() error { return r.seg.close() }
