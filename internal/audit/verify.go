package audit

import (
	"bufio"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
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
)

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
	Signed   int       `json:"signed"`
	Problems []Problem `json:"problems,omitempty"`
	// Notes are facts that are not tampering by themselves (the chain
	// starts after seq 1, no key to check signatures with).
	Notes []string `json:"notes,omitempty"`
}

// Intact reports whether no problem was found.
func (r *Report) Intact() bool { return len(r.Problems) == 0 }

// maxProblems bounds a report; a wholly garbled file does not need a
// million lines to say so.
const maxProblems = 100

// Verifier checks chains. The zero value checks hashes and links only.
type Verifier struct {
	// PublicKey, if set, checks every checkpoint's signature.
	PublicKey crypto.PublicKey
}

// Verify checks a chain given as files with Verifier{}: see
// Verifier.Verify.
func Verify(files ...string) (*Report, error) { return Verifier{}.Verify(files...) }

// Verify reads files (the active file and rotated ones, in any order: they
// are put in chain order by their first seq) and checks the chain: every
// line a canonical record with a correct hash, seqs gapless and in order,
// every prev the hash of the record before, one node, checkpoint
// signatures with PublicKey. Each problem names the record (seq) and where
// it is (file:line). An error means a file could not be read; tampering is
// in the Report, not an error.
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
		if r.Kind == KindCheckpoint {
			rep.Checkpoints++
			if v.PublicKey != nil && l.err == nil {
				if err := VerifySignature(v.PublicKey, r); err != nil {
					add(l, r.Seq, ProblemSignature, "%v", err)
				} else {
					rep.Signed++
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
		seen[r.Seq] = pos{hash: r.Hash, prev: r.Prev, i: i}
		// Links to the records on either side, wherever they are.
		if p, ok := seen[r.Seq-1]; ok && r.Seq > 1 && r.Prev != p.hash {
			o := all[p.i]
			add(l, r.Seq, ProblemBroken, "prev does not match the hash of seq %d at %s:%d (this record or that one was edited and rehashed, or replaced)", r.Seq-1, o.file, o.n)
		}
		if p, ok := seen[r.Seq+1]; ok && p.prev != r.Hash {
			o := all[p.i]
			add(o, r.Seq+1, ProblemBroken, "prev does not match the hash of seq %d at %s:%d (this record or that one was edited and rehashed, or replaced)", r.Seq, l.file, l.n)
		}
		switch {
		case last == nil:
			rep.FirstSeq = r.Seq
			if r.Seq != 1 {
				rep.Notes = append(rep.Notes, fmt.Sprintf("the chain starts at seq %d (%s:%d): records 1..%d were not given (rotated away?)", r.Seq, l.file, l.n, r.Seq-1))
			}
		case r.Seq < maxSeq:
			add(l, r.Seq, ProblemReordered, "seq %d comes after seq %d", r.Seq, maxSeq)
		case r.Seq > maxSeq+1:
			missing := maxSeq + 1
			if later := laterThan(at[missing], i); later >= 0 {
				add(l, r.Seq, ProblemReordered, "seq %d comes before seq %d, which is at %s:%d", r.Seq, missing, all[later].file, all[later].n)
			} else {
				add(l, r.Seq, ProblemRemoved, "seq %d..%d missing before this record", missing, r.Seq-1)
			}
		}
		if r.Seq > maxSeq {
			maxSeq, last = r.Seq, r
		}
		if rep.FirstSeq == 0 || r.Seq < rep.FirstSeq {
			rep.FirstSeq = r.Seq
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
