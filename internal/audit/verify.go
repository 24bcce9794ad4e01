package audit

// Over 500 lines: chains, checkpoints and archives are verified by one walk over the log files.

import (
	"bufio"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Problem kinds a verifier reports.
const (
	ProblemMalformed = "malformed" // not a record at all
	ProblemTorn      = "torn"      // the last line of the last file is cut short (a crash mid-write)
	ProblemEdited    = "edited"    // content does not match its hash, or not canonical
	ProblemBroken    = "broken"    // hash fine but prev does not match: edited and rehashed, or replaced
	ProblemRemoved   = "removed"   // seqs missing
	ProblemInserted  = "inserted"  // a second record with a seq already seen
	ProblemReordered = "reordered" // a record out of seq order
	ProblemNode      = "node"      // a record of another node's chain
	ProblemSignature = "signature" // a checkpoint whose signature does not verify
	ProblemHead      = "head"      // the chain does not reach the trusted head, or holds another record there
	ProblemMisnamed  = "misnamed"  // a rotated file whose name says it starts at another seq than its first record
	ProblemDamaged   = "damaged"   // a damage marker: records unreadable on the node's disk, lost (damage.go)
)

// Verdicts of a Report.
const (
	// VerdictIntact: no problem, and every record from seq 1 to the last
	// is anchored (see Report.Unanchored): the chain reaches the trusted
	// head and nothing follows it.
	VerdictIntact = "intact"
	// VerdictTampered: at least one problem.
	VerdictTampered = "tampered"
	// VerdictUnanchored: no problem in the records given, but the chain's
	// ends are not anchored: records removed from the start or the end,
	// or appended after the last anchored record, would not show.
	VerdictUnanchored = "unanchored"
)

// Head is a trusted end of a chain, known from outside its files: the seq
// and hash of the last record the control plane received of a node (it
// stores it on every batch), or one an operator noted down. A hash chain
// alone cannot show records cut off its end (nor, without a key, a chain
// rebuilt from scratch); a head can: the files must hold a record with
// this seq and exactly this hash, which pins every record before it.
type Head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

func (h Head) String() string { return fmt.Sprintf("%d:%s", h.Seq, h.Hash) }

// ParseHead parses "SEQ:HASH" (a hex SHA-256), as Head.String writes it.
func ParseHead(s string) (Head, error) {
	seq, hash, ok := strings.Cut(strings.TrimSpace(s), ":")
	n, err := strconv.ParseUint(seq, 10, 64)
	switch {
	case !ok:
		return Head{}, fmt.Errorf("head %q: want SEQ:HASH", s)
	case err != nil || n == 0:
		return Head{}, fmt.Errorf("head %q: seq is not a number from 1", s)
	case !isHex32(strings.ToLower(hash)):
		return Head{}, fmt.Errorf("head %q: hash is not 64 hex digits", s)
	}
	return Head{Seq: n, Hash: strings.ToLower(hash)}, nil
}

// Problem is one finding of Verify.
type Problem struct {
	Kind string `json:"kind"`
	File string `json:"file"`
	Line int    `json:"line"`          // 1-based
	Seq  uint64 `json:"seq,omitempty"` // 0 when the line did not decode
	Msg  string `json:"msg"`
}

func (p Problem) String() string {
	if p.Seq > 0 {
		return fmt.Sprintf("%s:%d: seq %d: %s: %s", p.File, p.Line, p.Seq, p.Kind, p.Msg)
	}
	return fmt.Sprintf("%s:%d: %s: %s", p.File, p.Line, p.Kind, p.Msg)
}

// Report is the result of verifying a chain.
type Report struct {
	Node        string   `json:"node,omitempty"`
	Files       []string `json:"files,omitempty"` // in chain order
	Records     int      `json:"records"`
	FirstSeq    uint64   `json:"firstSeq,omitempty"`
	LastSeq     uint64   `json:"lastSeq,omitempty"`
	LastHash    string   `json:"lastHash,omitempty"`
	Checkpoints int      `json:"checkpoints"`
	// Signed counts checkpoints whose signature verified (0 without a key).
	Signed int `json:"signed"`
	// LastSigned is the seq of the last checkpoint whose signature
	// verified: it vouches for every record up to it.
	LastSigned uint64 `json:"lastSigned,omitempty"`
	// Head is the trusted head the chain was checked against, if any.
	Head     *Head     `json:"head,omitempty"`
	Problems []Problem `json:"problems,omitempty"`
	// Unanchored says, one sentence each, what the chain cannot prove
	// about its ends although no record is wrong: a start after seq 1, an
	// end not pinned by a head, records after the head and after the last
	// signed checkpoint. Any of them makes the verdict VerdictUnanchored.
	Unanchored []string `json:"unanchored,omitempty"`
	// Damaged counts the records lost to damage on the node's disk, as
	// its damage markers declare (each is also a ProblemDamaged).
	Damaged int `json:"damaged,omitempty"`
	// Notes are facts that are neither (no key to check signatures with).
	Notes []string `json:"notes,omitempty"`
	// Verdict is VerdictIntact, VerdictTampered or VerdictUnanchored.
	Verdict string `json:"verdict"`
}

// Tampered reports whether a problem was found.
func (r *Report) Tampered() bool { return len(r.Problems) > 0 }

// Intact reports whether no problem was found and the chain is anchored
// from seq 1 to its trusted head (VerdictIntact).
func (r *Report) Intact() bool { return !r.Tampered() && len(r.Unanchored) == 0 }

func (r *Report) setVerdict() {
	switch {
	case r.Tampered():
		r.Verdict = VerdictTampered
	case len(r.Unanchored) > 0:
		r.Verdict = VerdictUnanchored
	default:
		r.Verdict = VerdictIntact
	}
}

// maxProblems bounds a report; a wholly garbled file does not need a
// million lines to say so.
const maxProblems = 100

// Verifier checks chains. The zero value checks hashes and links only.
type Verifier struct {
	// PublicKey, if set, checks every checkpoint's signature.
	PublicKey crypto.PublicKey
	// Head, if set, anchors the chain's end: the chain must hold a record
	// with Head.Seq and exactly Head.Hash (else ProblemHead: records were
	// cut off the end, or the chain was rewritten); records after it are
	// reported as unanchored. Without a head the end is always unanchored.
	Head *Head
	// FromGenesis says the chain is known to start at seq 1 (a control
	// plane replica always does): a later start is ProblemRemoved, not
	// merely unanchored. An empty chain without a Head is then intact:
	// nothing was ever written to it.
	FromGenesis bool
}

// Verify checks a chain given as files with Verifier{}: see
// Verifier.Verify.
func Verify(files ...string) (*Report, error) { return Verifier{}.Verify(files...) }

// Verify reads files (the active file and rotated ones, in any order: they
// are put in chain order by their first seq) and checks the chain: every
// line a canonical record with a correct hash, seqs gapless and in order,
// every prev the hash of the record before, one node, checkpoint
// signatures with PublicKey, the end against Head. Each problem names the
// record (seq) and where it is (file:line). What cannot be proven either
// way (see Report.Unanchored) is said, never passed as intact. An error
// means a file could not be read; tampering is in the Report, not an error.
func (v Verifier) Verify(files ...string) (*Report, error) {
	if len(files) == 0 {
		return nil, errors.New("audit: no files to verify")
	}
	type fileRecs struct {
		name  string
		lines []line
		first uint64
	}
	var fs []fileRecs
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
		ls, err := readLines(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("audit: %s: %w", name, err)
		}
		fr := fileRecs{name: name, lines: ls, first: ^uint64(0)}
		for _, l := range ls {
			if l.rec != nil {
				fr.first = l.rec.Seq
				break
			}
		}
		fs = append(fs, fr)
	}
	slices.SortStableFunc(fs, func(a, b fileRecs) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return 0
	})
	var all []line
	rep := &Report{}
	for i, f := range fs {
		rep.Files = append(rep.Files, f.name)
		for j := range f.lines {
			f.lines[j].file = f.name
			if i == len(fs)-1 && j == len(f.lines)-1 && f.lines[j].partial {
				f.lines[j].torn = true
			}
		}
		all = append(all, f.lines...)
	}
	v.check(rep, all)
	v.anchor(rep, all, fs[0].name)
	rep.setVerdict()
	return rep, nil
}

// line is one line of a log file as read.
type line struct {
	file    string
	n       int // 1-based line number
	rec     *Record
	err     error
	partial bool // no '\n' at the end
	torn    bool // partial and the very last line of the set
}

// readLines reads a file's lines, decoding each. A line longer than
// maxLine is an error line, not a reason to stop.
func readLines(r io.Reader) ([]line, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var out []line
	for n := 1; ; n++ {
		b, err := readLine(br)
		if err == io.EOF && len(b) == 0 {
			return out, nil
		}
		if err != nil && err != io.EOF && !errors.Is(err, errLongLine) {
			return nil, err
		}
		l := line{n: n, partial: err == io.EOF}
		if errors.Is(err, errLongLine) {
			l.err = err
		} else {
			l.rec, l.err = DecodeLine(b)
		}
		out = append(out, l)
		if err == io.EOF {
			return out, nil
		}
	}
}

var errLongLine = fmt.Errorf("line longer than %d bytes", maxLine)

// readLine returns one line without its '\n'; io.EOF with the bytes of a
// last line that has no '\n'. A line above maxLine is skipped whole and
// reported as errLongLine.
func readLine(br *bufio.Reader) ([]byte, error) {
	var b []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(b)+len(chunk) <= maxLine+1 {
			b = append(b, chunk...)
		} else {
			b = b[:0]
			if err == nil || err == io.EOF {
				return nil, errLongLine
			}
			for err == bufio.ErrBufferFull {
				_, err = br.ReadSlice('\n')
			}
			if err != nil && err != io.EOF {
				return nil, err
			}
			return nil, errLongLine
		}
		switch err {
		case nil:
			return b[:len(b)-1], nil
		case bufio.ErrBufferFull:
			continue
		default:
			return b, err
		}
	}
}

// check walks lines in chain order.
func (v Verifier) check(rep *Report, all []line) {
	add := func(l line, seq uint64, kind, format string, args ...any) {
		if len(rep.Problems) < maxProblems {
			rep.Problems = append(rep.Problems, Problem{Kind: kind, File: l.file, Line: l.n, Seq: seq, Msg: fmt.Sprintf(format, args...)})
		}
	}
	// Where each seq is, to tell a reordering from a removal.
	at := map[uint64][]int{}
	for i, l := range all {
		if l.rec != nil {
			at[l.rec.Seq] = append(at[l.rec.Seq], i)
		}
	}
	type pos struct {
		hash, prev string
		i          int
		damaged    bool // a damage marker: the next record's prev is a lost record's hash
	}
	seen := map[uint64]pos{}
	var maxSeq uint64
	var last *Record
	for i, l := range all {
		r := l.rec
		switch {
		case l.torn && (r == nil || l.err != nil):
			add(l, 0, ProblemTorn, "the last line is cut short (the writer was killed mid-write?); the records before it are intact; reopening the log moves it aside")
			continue
		case r == nil:
			add(l, 0, ProblemMalformed, "%v", l.err)
			continue
		case errors.Is(l.err, ErrBadHash):
			add(l, r.Seq, ProblemEdited, "content does not match its hash (record edited)")
		case errors.Is(l.err, ErrNotCanonical):
			add(l, r.Seq, ProblemEdited, "line is not in canonical form (edited by hand)")
		case l.err != nil:
			add(l, r.Seq, ProblemMalformed, "%v", l.err)
		}
		rep.Records++
		if rep.Node == "" {
			rep.Node = r.Node
		} else if r.Node != rep.Node {
			add(l, r.Seq, ProblemNode, "record of node %q in the chain of %q", r.Node, rep.Node)
		}
		if r.Kind == KindAudit && r.Action == ActionHeadMismatch {
			add(l, r.Seq, ProblemHead, "recorded by the chain's owner: %s", r.Reason)
		}
		if r.Kind == KindAudit && r.Action == ActionPastHead {
			rep.Unanchored = append(rep.Unanchored, fmt.Sprintf("recorded by the chain's owner at seq %d: %s", r.Seq, r.Reason))
		}
		from, _, marker := DamagedSpan(r)
		if marker {
			rep.Damaged += int(r.Seq - from + 1)
			add(l, r.Seq, ProblemDamaged, "seq %d..%d were unreadable on the node and are lost; this marker stands in for them, and the link from it to seq %d cannot be checked: %s",
				from, r.Seq, r.Seq+1, r.Reason)
			// With a key every marker must be signed: a genuine one always is
			// (the node signs it, a replica refuses one unsigned), and the
			// signature is outside the hash, so a marker made from records
			// already held would otherwise pass as damage on the node.
			if v.PublicKey != nil && l.err == nil {
				if err := VerifySignature(v.PublicKey, r); err != nil {
					add(l, r.Seq, ProblemSignature, "damage marker: %v", err)
				}
			}
		}
		if r.Kind == KindCheckpoint {
			rep.Checkpoints++
			if v.PublicKey != nil && l.err == nil {
				if err := VerifySignature(v.PublicKey, r); err != nil {
					add(l, r.Seq, ProblemSignature, "%v", err)
				} else {
					rep.Signed++
					rep.LastSigned = max(rep.LastSigned, r.Seq)
				}
			}
		}
		if p, dup := seen[r.Seq]; dup {
			o := all[p.i]
			if p.hash == r.Hash {
				add(l, r.Seq, ProblemInserted, "a copy of seq %d (first at %s:%d)", r.Seq, o.file, o.n)
			} else {
				add(l, r.Seq, ProblemInserted, "a second record with seq %d (the other is at %s:%d): one of them was inserted", r.Seq, o.file, o.n)
			}
			continue
		}
		seen[r.Seq] = pos{hash: r.Hash, prev: r.Prev, i: i, damaged: marker}
		// Links to the records on either side, wherever they are (a
		// damage marker's to the record before its span).
		below := r.Seq - 1
		if marker {
			below = from - 1
		}
		if p, ok := seen[below]; ok && below > 0 && !p.damaged && r.Prev != p.hash {
			o := all[p.i]
			add(l, r.Seq, ProblemBroken, "prev does not match the hash of seq %d at %s:%d (this record or that one was edited and rehashed, or replaced)", below, o.file, o.n)
		}
		if p, ok := seen[r.Seq+1]; ok && !marker && p.prev != r.Hash {
			o := all[p.i]
			add(o, r.Seq+1, ProblemBroken, "prev does not match the hash of seq %d at %s:%d (this record or that one was edited and rehashed, or replaced)", r.Seq, l.file, l.n)
		}
		lo := r.Seq // the lowest seq the record holds or stands in for
		if marker {
			lo = from
		}
		switch {
		case last == nil:
			rep.FirstSeq = lo
		case r.Seq < maxSeq:
			add(l, r.Seq, ProblemReordered, "seq %d comes after seq %d", r.Seq, maxSeq)
		case marker && from == maxSeq+1:
			// The seqs it stands in for: reported above.
		case r.Seq > maxSeq+1:
			missing := maxSeq + 1
			if later := laterThan(at[missing], i); later >= 0 {
				add(l, r.Seq, ProblemReordered, "seq %d comes before seq %d, which is at %s:%d", r.Seq, missing, all[later].file, all[later].n)
			} else {
				add(l, r.Seq, ProblemRemoved, "seq %d..%d missing before this record", missing, lo-1)
			}
		}
		if r.Seq > maxSeq {
			maxSeq, last = r.Seq, r
		}
		if rep.FirstSeq == 0 || lo < rep.FirstSeq {
			rep.FirstSeq = lo
		}
	}
	if last != nil {
		rep.LastSeq, rep.LastHash = last.Seq, last.Hash
	}
	if v.PublicKey == nil && rep.Checkpoints > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d checkpoints; signatures not checked (no key given)", rep.Checkpoints))
	}
	if v.PublicKey != nil && rep.Checkpoints == 0 {
		rep.Notes = append(rep.Notes, "no checkpoints to check signatures of")
	}
}

// laterThan returns the first index in idx after i, or -1.
func laterThan(idx []int, i int) int {
	for _, j := range idx {
		if j > i {
			return j
		}
	}
	return -1
}

// anchor checks the chain's ends: its start (seq 1, or what a rotated
// file's name says) and its end against v.Head, and says in
// rep.Unanchored what neither the head nor a verified checkpoint pins.
//
// What can be proven: a chain from seq 1 whose record at the head's seq
// has the head's hash is, up to the head, exactly what the head's source
// saw (a different chain cannot reach the same hash); a checkpoint whose
// signature verifies vouches for every record up to it, against anyone
// without the key. What cannot: records after the last of those (they
// could have been appended by anyone able to write the files), records
// cut off after it, and, without a head or a key, anything at all (the
// whole chain could be rebuilt and rehashed).
func (v Verifier) anchor(rep *Report, all []line, firstFile string) {
	add := func(kind, file string, n int, seq uint64, format string, args ...any) {
		if len(rep.Problems) < maxProblems {
			rep.Problems = append(rep.Problems, Problem{Kind: kind, File: file, Line: n, Seq: seq, Msg: fmt.Sprintf(format, args...)})
		}
	}
	unanchored := func(format string, args ...any) {
		rep.Unanchored = append(rep.Unanchored, fmt.Sprintf(format, args...))
	}
	rep.Head = v.Head
	if rep.Records == 0 {
		switch {
		case v.Head != nil:
			add(ProblemHead, firstFile, 0, 0, "no records, but the head is seq %d: every record was removed", v.Head.Seq)
		case !v.FromGenesis:
			unanchored("no records: nothing to anchor")
		}
		return
	}
	// find returns the first whole record with seq.
	find := func(seq uint64) *line {
		for i := range all {
			if r := all[i].rec; r != nil && r.Seq == seq && all[i].err == nil {
				return &all[i]
			}
		}
		return nil
	}

	// The start.
	first := find(rep.FirstSeq)
	if first == nil { // the lowest seq is on a damaged line, already a problem
		first = &line{file: firstFile, n: 1}
	}
	named, isRotated := rotatedSeqOf(first.file)
	switch {
	case isRotated && named < rep.FirstSeq:
		add(ProblemRemoved, first.file, first.n, rep.FirstSeq, "the file's name says it starts at seq %d: seq %d..%d were removed from its start", named, named, rep.FirstSeq-1)
	case isRotated && named > rep.FirstSeq:
		add(ProblemMisnamed, first.file, first.n, rep.FirstSeq, "the file's name says it starts at seq %d, its first record is seq %d (renamed?)", named, rep.FirstSeq)
	case rep.FirstSeq == 1:
		// Anchored: seq 1 chains to the genesis hash (DecodeLine checks).
	case v.FromGenesis:
		add(ProblemRemoved, first.file, first.n, rep.FirstSeq, "the chain starts at seq %d: seq 1..%d were removed (this chain is known to start at seq 1)", rep.FirstSeq, rep.FirstSeq-1)
	default:
		unanchored("start: the chain starts at seq %d (%s:%d) and no file before it was given: whether seq 1..%d were rotated away or removed cannot be told (give every audit.log* file)",
			rep.FirstSeq, first.file, first.n, rep.FirstSeq-1)
	}

	// The end. anchored is the last seq pinned by the head or a signature.
	var anchored uint64
	if h := v.Head; h != nil {
		at := find(h.Seq)
		switch {
		case h.Seq > rep.LastSeq:
			last := find(rep.LastSeq)
			if last == nil {
				last = &line{file: firstFile}
			}
			add(ProblemHead, last.file, last.n, rep.LastSeq, "the chain ends at seq %d but the head is seq %d: seq %d..%d were cut off the end", rep.LastSeq, h.Seq, rep.LastSeq+1, h.Seq)
		case at == nil:
			add(ProblemHead, firstFile, 0, h.Seq, "the head's record, seq %d, is not in the chain", h.Seq)
		case at.rec.Hash != h.Hash:
			add(ProblemHead, at.file, at.n, h.Seq, "hash %.16s… is not the head's %.16s…: the chain was rewritten up to here (or the head is another chain's)", at.rec.Hash, h.Hash)
		default:
			anchored = h.Seq
		}
		if anchored == 0 {
			return // tampered at the end: what follows the head is beside the point
		}
	}
	signed := rep.LastSigned
	if anchored < signed {
		anchored = signed
	}
	switch {
	case v.Head == nil && v.PublicKey == nil:
		unanchored("end: no head and no key: nothing ties these records to what was written; a chain cut short, extended, or rewritten and rehashed from any record on looks the same (give --head SEQ:HASH, and --pubkey or --cert)")
		return
	case v.Head == nil:
		unanchored("end: no head: records cut off the end would not show (for files, give --head SEQ:HASH: the control plane's lastSeq:lastHash of this node)")
	}
	if anchored >= rep.LastSeq {
		if v.Head != nil && rep.LastSeq > v.Head.Seq {
			unanchored("end: seq %d..%d follow the head (seq %d); signed checkpoints vouch for them, but records cut off after seq %d would not show", v.Head.Seq+1, rep.LastSeq, v.Head.Seq, rep.LastSeq)
		}
		return
	}
	from := max(anchored+1, rep.FirstSeq)
	var after string
	switch {
	case v.Head != nil && signed > v.Head.Seq:
		after = fmt.Sprintf("follow the head (seq %d) and the last signed checkpoint (seq %d)", v.Head.Seq, signed)
	case v.Head != nil:
		after = fmt.Sprintf("follow the head (seq %d)", v.Head.Seq)
	case signed > 0:
		after = fmt.Sprintf("follow the last signed checkpoint (seq %d)", signed)
	default: // a key, but no checkpoint it verified
		after = "are covered by no verified checkpoint signature"
	}
	unanchored("tail: seq %d..%d %s: unsigned and unanchored, they could have been appended by anyone able to write the files, and records cut off after them would not show", from, rep.LastSeq, after)
}

// rotatedSeqOf returns the first seq a rotated file's name declares
// (NAME.<20 digits>).
func rotatedSeqOf(path string) (uint64, bool) {
	base := filepath.Base(path)
	i := strings.LastIndexByte(base, '.')
	if i <= 0 || len(base)-i-1 != 20 {
		return 0, false
	}
	for _, c := range base[i+1:] {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(base[i+1:], 10, 64)
	return n, err == nil && n > 0
}
