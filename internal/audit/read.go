package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// ErrNotFound is returned by ReadFrom when the records asked for are no
// longer (or not yet) in the log's files.
var ErrNotFound = errors.New("audit: records not in the log")

// readFrom returns up to max whole records from seq on, in order. Fewer
// (or none) means the log has no more yet. Lines that do not read are
// skipped: if the record at seq is on one, it returns a *DamageError
// naming the seqs lost up to the next record that reads (and nothing
// else); a batch stops before a later one, so the next call reports it.
func (s *segments) readFrom(seq uint64, max int) ([]Record, error) {
	s.mu.Lock()
	rot, err := s.rotated()
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	paths := append(rot, filepath.Join(s.dir, s.base))
	// Start in the last file whose first seq is ≤ seq-1: the record
	// before seq is what a damage marker for seq chains to.
	want := seq - 1
	if seq <= 1 {
		want = seq
	}
	start := 0
	for i, p := range rot {
		if v, _ := s.rotatedSeq(filepath.Base(p)); v <= want {
			start = i
		}
	}
	if s.first > 0 && s.first <= want {
		start = len(rot)
	}
	// Open while holding mu: a rotation cannot rename a file between
	// listing and opening it.
	var files []*os.File
	for _, p := range paths[start:] {
		f, err := os.Open(p)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			s.mu.Unlock()
			closeAll(files)
			return nil, fmt.Errorf("audit: %w", err)
		}
		files = append(files, f)
	}
	s.mu.Unlock()
	defer closeAll(files)
	var out []Record
	var dmg damageSpan
	prev := ""
	if seq == 1 {
		prev = Genesis
	}
	// before: a record before seq was read, so damage found before seq's
	// record is in the middle of the log. Unreadable lines at the very
	// start of what is kept may follow records pruned, not lost.
	before := seq == 1
	for i, f := range files {
		cr := &countReader{r: f}
		br := bufio.NewReaderSize(cr, 64<<10)
		for len(out) < max {
			// readLine, not ReadSlice: a record's line may be longer
			// than the buffer (up to maxLine, as DecodeLine takes).
			at := cr.n - int64(br.Buffered())
			line, err := readLine(br)
			end := cr.n - int64(br.Buffered())
			var r *Record
			var derr error
			switch {
			case errors.Is(err, errLongLine):
				derr = err
			case err == io.EOF && len(line) == 0:
			case err == io.EOF && i == len(files)-1:
				return out, nil // a line still being written
			case err == io.EOF:
				derr = errors.New("the file's last line is cut short")
			case err != nil:
				return nil, fmt.Errorf("audit: %s: %w", f.Name(), err)
			default:
				r, derr = DecodeLine(line)
			}
			if err == io.EOF && len(line) == 0 {
				break
			}
			if derr != nil {
				dmg.add(f.Name(), at, end, derr)
				if err == io.EOF {
					break
				}
				continue
			}
			// A damage marker (in a replica) stands in for the seqs
			// from its span's start: it follows the record before them.
			first := r.Seq
			if from, _, ok := DamagedSpan(r); ok {
				first = from
			}
			switch {
			case len(out) == 0 && first <= seq && seq <= r.Seq:
				// The record asked for, or the marker in its place.
			case r.Seq < seq:
				dmg, before = damageSpan{}, true
				if r.Seq == seq-1 {
					prev = r.Hash
				}
				continue
			case len(out) == 0 && r.Seq > seq && dmg.lines > 0 && before:
				return nil, dmg.error(seq, r.Seq-1, prev)
			case len(out) == 0 && r.Seq != seq:
				return nil, fmt.Errorf("%w: want seq %d, the log goes on at %d", ErrNotFound, seq, r.Seq)
			case len(out) > 0 && first > out[len(out)-1].Seq+1 && dmg.lines > 0:
				return out, nil // the next read reports the damage
			case len(out) > 0 && first != out[len(out)-1].Seq+1:
				return nil, fmt.Errorf("audit: %s: seq %d after %d", f.Name(), r.Seq, out[len(out)-1].Seq)
			}
			// A line that did not read between two records that follow
			// each other lost nothing: junk, which Verify reports.
			dmg = damageSpan{}
			out = append(out, *r)
		}
	}
	return out, nil
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// Tail returns the whole, well-formed records in about the last maxBytes
// of the log in dir whose active file is base ("audit.log" if empty), in
// chain order, reading the newest files first and without verifying the
// chain (a record that does not decode or whose hash is wrong is left
// out: Verify reports it). For a summary of recent records, such as the
// denials the control plane shows after a restart.
func Tail(dir, base string, maxBytes int64) ([]Record, error) {
	files, err := ChainFiles(dir, base)
	if err != nil {
		return nil, err
	}
	var out []Record
	for i := len(files) - 1; i >= 0 && maxBytes > 0; i-- {
		b, err := readTail(files[i], maxBytes)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
		maxBytes -= int64(len(b))
		var recs []Record
		for len(b) > 0 {
			line, rest, whole := bytes.Cut(b, []byte("\n"))
			b = rest
			if !whole {
				break // a line still being written
			}
			if r, err := DecodeLine(line); err == nil {
				recs = append(recs, *r)
			}
		}
		out = append(recs, out...)
	}
	return out, nil
}

// readTail reads the last n bytes of a file, from the first whole line in
// them on.
func readTail(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(fi.Size()-n, 0)
	b := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if off > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil, nil
		}
		b = b[i+1:]
	}
	return b, nil
}

// RecordAt returns the first whole, well-formed record with seq in files
// (a chain's, as ChainFiles lists them), nil if none: for example to tell
// which of two chains a stored head belongs to. It does not verify the
// chain.
func RecordAt(files []string, seq uint64) (*Record, error) {
	for _, name := range files {
		f, err := os.Open(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("audit: %w", err)
		}
		br := bufio.NewReaderSize(f, 64<<10)
		for {
			line, err := readLine(br)
			if errors.Is(err, errLongLine) {
				continue
			}
			if err != nil {
				break // EOF, a partial last line, or unreadable: the next file
			}
			if r, derr := DecodeLine(line); derr == nil && r.Seq == seq {
				f.Close()
				return r, nil
			}
		}
		f.Close()
	}
	return nil, nil
}
