package audit

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// segments is a log's set of files in one directory: the active file
// (base, e.g. audit.log) and rotated files named base.<first seq, 20
// digits>, so names sort by position in the chain and a rotation renames
// one file only. The first record of a new active file chains to the last
// record of the file rotated before it; nothing about a file boundary is
// special to a verifier.
type segments struct {
	dir, base string
	maxBytes  int64 // rotate the active file before it grows past this
	maxFiles  int   // rotated files kept; 0 keeps all
	noSync    bool
	// idle: the active file is open only while write runs (a replica's:
	// the control plane holds one per node, and one fd each would double
	// its fds). The state below stays in memory between writes.
	idle bool

	closed bool // by close; guarded by mu

	mu   sync.Mutex // guards the following; held while rotating and while readers open files
	f    *os.File
	size int64
	// rotBytes is the size of the rotated files (for Config.MaxBytes).
	rotBytes int64
	first    uint64 // seq of the active file's first record; 0 when it is empty
	// last is the last record written whole by this process (or found at
	// open): the head verifyAnchored checks the files against.
	last Head
}

// tail is what openSegments found at the end of the chain.
type tail struct {
	last *Record // nil for an empty log
	// torn is where bytes that did not hold a whole record were moved,
	// "" when the active file ended cleanly.
	torn      string
	tornBytes int
}

func openSegments(dir, base string, maxBytes int64, maxFiles int, noSync bool) (*segments, tail, error) {
	s := &segments{dir: dir, base: base, maxBytes: maxBytes, maxFiles: maxFiles, noSync: noSync}
	var t tail
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, t, fmt.Errorf("audit: %w", err)
	}
	active := filepath.Join(dir, base)
	f, err := os.OpenFile(active, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, t, fmt.Errorf("audit: %w", err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return nil, t, fmt.Errorf("audit: read %s: %w", active, err)
	}
	good, last, first := lastGood(b)
	if good < len(b) {
		// A crash mid-write (or damage) left bytes that are not a whole
		// record. Keep them aside for forensics, cut them off, and go on
		// from the last whole record: nothing before it is lost.
		t.torn = fmt.Sprintf("%s.torn-%d", active, time.Now().UnixNano())
		t.tornBytes = len(b) - good
		if err := writeSynced(t.torn, b[good:]); err != nil {
			f.Close()
			return nil, t, fmt.Errorf("audit: save torn tail of %s: %w", active, err)
		}
		if err := f.Truncate(int64(good)); err != nil {
			f.Close()
			return nil, t, fmt.Errorf("audit: truncate torn tail of %s: %w", active, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, t, fmt.Errorf("audit: %w", err)
		}
	}
	if _, err := f.Seek(int64(good), io.SeekStart); err != nil {
		f.Close()
		return nil, t, fmt.Errorf("audit: %w", err)
	}
	s.f, s.size, s.first = f, int64(good), first
	t.last = last
	rot, rotErr := s.rotated() // read once: a replica is opened per node
	if rotErr == nil {
		for _, p := range rot {
			if fi, err := os.Stat(p); err == nil {
				s.rotBytes += fi.Size()
			}
		}
	}
	defer func() {
		if t.last != nil {
			s.last = Head{Seq: t.last.Seq, Hash: t.last.Hash}
		}
	}()
	if last == nil {
		// Empty active file (new log, or a crash right after a rotation):
		// the chain goes on from the newest rotated file.
		if rotErr != nil {
			f.Close()
			return nil, t, rotErr
		}
		if len(rot) > 0 {
			rb, err := os.ReadFile(rot[len(rot)-1])
			if err != nil {
				f.Close()
				return nil, t, fmt.Errorf("audit: %w", err)
			}
			n, rl, _ := lastGood(rb)
			if n < len(rb) || rl == nil {
				f.Close()
				return nil, t, fmt.Errorf("audit: %s does not end with a whole record; run fogmesh audit verify", rot[len(rot)-1])
			}
			t.last = rl
		}
	}
	return s, t, nil
}

// lastGood returns the length of the prefix of b that ends with the last
// line holding a valid record, that record, and the seq of the first valid
// record (a damaged first line must not leave the file without a first
// seq: it would be rotated to a name the rotated-file listing skips).
// A valid record here is one that decodes with a correct hash; whether it
// chains is Verify's business.
func lastGood(b []byte) (n int, last *Record, first uint64) {
	for rest := b; first == 0; {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		if r, err := DecodeLine(rest[:i]); err == nil {
			first = lowSeq(r)
		}
		rest = rest[i+1:]
	}
	end := len(b)
	for end > 0 {
		// The line ending at end-1 (if b[end-1] is '\n') or the torn
		// bytes after the last '\n'.
		if b[end-1] != '\n' {
			end = bytes.LastIndexByte(b[:end], '\n') + 1
			continue
		}
		start := bytes.LastIndexByte(b[:end-1], '\n') + 1
		if r, err := DecodeLine(b[start : end-1]); err == nil {
			return end, r, first
		}
		end = start
	}
	return 0, nil, 0
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// rotatedName is the name of a rotated file whose first record is seq.
func (s *segments) rotatedName(seq uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%s.%020d", s.base, seq))
}

// rotated lists rotated files, oldest first.
func (s *segments) rotated() ([]string, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	var out []string
	for _, e := range ents {
		if seq, ok := s.rotatedSeq(e.Name()); ok && seq > 0 {
			out = append(out, filepath.Join(s.dir, e.Name()))
		}
	}
	slices.Sort(out) // zero-padded: names sort by first seq
	return out, nil
}

func (s *segments) rotatedSeq(name string) (uint64, bool) {
	suf, ok := strings.CutPrefix(name, s.base+".")
	if !ok || len(suf) != 20 {
		return 0, false
	}
	v, err := strconv.ParseUint(suf, 10, 64)
	return v, err == nil
}

// ChainFiles lists the files of a log in dir whose active file is base
// ("audit.log" if empty), in chain order, the active one last: what Verify
// takes for a log that is not open (an archived replica).
func ChainFiles(dir, base string) ([]string, error) {
	if base == "" {
		base = "audit.log"
	}
	s := &segments{dir: dir, base: base}
	rot, err := s.rotated()
	if err != nil {
		return nil, err
	}
	return append(rot, filepath.Join(dir, base)), nil
}

// files lists every file of the log in chain order, the active one last.
func (s *segments) files() ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rot, err := s.rotated()
	if err != nil {
		return nil, err
	}
	return append(rot, filepath.Join(s.dir, s.base)), nil
}

// write appends whole lines (records firstSeq.. in order, the last of
// them last), rotating whenever the next line would take the active file
// past maxBytes, and fsyncs unless noSync. It returns how many bytes of
// lines are durably written; on error the active file is cut back to that
// point, so a retry of lines[n:] cannot duplicate records.
func (s *segments) write(lines []byte, firstSeq uint64, last Head) (n int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	if s.f == nil {
		if !s.idle {
			return 0, ErrClosed
		}
		// Reopened where this process left it, as a held file would
		// write: at the end of the last whole record it wrote.
		f, err := os.OpenFile(filepath.Join(s.dir, s.base), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return 0, fmt.Errorf("audit: %w", err)
		}
		if fi, err := f.Stat(); err != nil || fi.Size() < s.size {
			// Shorter than what was written (or unreadable): writing at
			// s.size would leave a gap of zeros in the chain's file.
			f.Close()
			if err == nil {
				err = fmt.Errorf("%s is %d bytes, %d were written to it", f.Name(), fi.Size(), s.size)
			}
			return 0, fmt.Errorf("audit: %w", err)
		}
		if _, err := f.Seek(s.size, io.SeekStart); err != nil {
			f.Close()
			return 0, fmt.Errorf("audit: %w", err)
		}
		s.f = f
	}
	if s.idle {
		defer s.closeIdleLocked()
	}
	for n < len(lines) {
		rest := lines[n:]
		// The whole lines of rest that fit; at least one in an empty file.
		fit := len(rest)
		if s.size+int64(fit) > s.maxBytes {
			room := max(s.maxBytes-s.size, 0)
			fit = bytes.LastIndexByte(rest[:min(int64(len(rest)), room)], '\n') + 1
			if fit == 0 && s.size == 0 {
				fit = bytes.IndexByte(rest, '\n') + 1
			}
		}
		if fit == 0 {
			if err := s.rotateLocked(); err != nil {
				return n, err
			}
			continue
		}
		chunk := rest[:fit]
		if _, err := s.f.Write(chunk); err != nil {
			s.f.Truncate(s.size)
			s.f.Seek(s.size, io.SeekStart)
			return n, fmt.Errorf("audit: write: %w", err)
		}
		if !s.noSync {
			if err := s.f.Sync(); err != nil {
				// The bytes may or may not be on disk; cut them off so the
				// retry writes them once.
				s.f.Truncate(s.size)
				s.f.Seek(s.size, io.SeekStart)
				return n, fmt.Errorf("audit: fsync: %w", err)
			}
		}
		if s.size == 0 {
			// From the line, not counted from firstSeq: a damage
			// marker (in a replica) skips seqs.
			s.first = firstSeq
			if r, err := DecodeLine(chunk[:bytes.IndexByte(chunk, '\n')+1]); err == nil {
				s.first = lowSeq(r)
			}
		}
		s.size += int64(fit)
		n += fit
	}
	s.last = last
	return n, nil
}

func (s *segments) rotateLocked() error {
	active := filepath.Join(s.dir, s.base)
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	if err := s.f.Close(); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	s.f = nil
	if err := os.Rename(active, s.rotatedName(s.first)); err != nil {
		// Keep writing to the old file rather than lose records.
		f, oerr := os.OpenFile(active, os.O_RDWR|os.O_APPEND, 0o600)
		if oerr != nil {
			return fmt.Errorf("audit: rotate: %w (and reopen: %v)", err, oerr)
		}
		s.f = f
		return fmt.Errorf("audit: rotate: %w", err)
	}
	// Renamed: the active file is a new, empty one from here on, even if
	// creating it fails now (an idle replica creates it at its next write).
	s.rotBytes += s.size
	s.size, s.first = 0, 0
	f, err := os.OpenFile(active, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	syncDir(s.dir)
	s.f = f
	if s.maxFiles > 0 {
		rot, err := s.rotated()
		if err == nil && len(rot) > s.maxFiles {
			for _, p := range rot[:len(rot)-s.maxFiles] {
				s.removeLocked(p)
			}
		}
	}
	return nil
}

func (s *segments) removeLocked(p string) {
	fi, err := os.Stat(p)
	if err == nil && os.Remove(p) == nil {
		s.rotBytes -= fi.Size()
	}
}

// total is the size of every file of the log.
func (s *segments) total() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rotBytes + s.size
}

// pruneThrough removes rotated files, oldest first, whose records all have
// seqs up to seq, while the log's files take more than keep bytes. It
// returns how many it removed.
func (s *segments) pruneThrough(seq uint64, keep int64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	rot, err := s.rotated()
	if err != nil {
		return 0
	}
	n := 0
	for i, p := range rot {
		if s.rotBytes+s.size <= keep {
			break
		}
		next := s.first // the file after it starts there
		if i+1 < len(rot) {
			next, _ = s.rotatedSeq(filepath.Base(rot[i+1]))
		} else if next == 0 {
			next = s.last.Seq + 1 // the active file is empty
		}
		if next == 0 || next-1 > seq {
			break
		}
		s.removeLocked(p)
		n++
	}
	if n > 0 {
		syncDir(s.dir)
	}
	return n
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// verify verifies the files with v while no write or rotation runs, so a
// batch being written is not mistaken for a torn line.
func (s *segments) verify(v Verifier) (*Report, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rot, err := s.rotated()
	if err != nil {
		return nil, err
	}
	return v.Verify(append(rot, filepath.Join(s.dir, s.base))...)
}

// verifyAnchored verifies the files with v, its Head the last record
// this process wrote (or found at open), while no write runs: files and
// head are consistent, so records on disk that this process did not write
// (appended behind its back) or missing from it (cut) show.
func (s *segments) verifyAnchored(v Verifier) (*Report, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last.Seq > 0 {
		h := s.last
		v.Head = &h
	}
	rot, err := s.rotated()
	if err != nil {
		return nil, err
	}
	return v.Verify(append(rot, filepath.Join(s.dir, s.base))...)
}

// keepClosed makes the active file open only while write runs, and
// closes it now.
func (s *segments) keepClosed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.idle = true
	s.closeIdleLocked()
}

// closeIdleLocked closes the active file between writes. What write
// returned success for is fsynced, so a close error loses nothing.
func (s *segments) closeIdleLocked() {
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

func (s *segments) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.f == nil {
		return nil
	}
	err := s.f.Sync()
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	s.f = nil
	return err
}
