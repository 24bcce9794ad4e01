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
// (or none) means the log has no more yet.
func (s *segments) readFrom(seq uint64, max int) ([]Record, error) {
	s.mu.Lock()
	rot, err := s.rotated()
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	paths := append(rot, filepath.Join(s.dir, s.base))
	// Start in the last file whose first seq is ≤ seq.
	start := 0
	for i, p := range rot {
		if v, _ := s.rotatedSeq(filepath.Base(p)); v <= seq {
			start = i
		}
	}
	if s.first > 0 && s.first <= seq {
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
	for _, f := range files {
		br := bufio.NewReaderSize(f, 64<<10)
		for len(out) < max {
			// readLine, not ReadSlice: a record's line may be longer
			// than the buffer (up to maxLine, as DecodeLine takes).
			line, err := readLine(br)
			if errors.Is(err, errLongLine) {
				return nil, fmt.Errorf("audit: %s: %w", f.Name(), err)
			}
			if err != nil {
				break // EOF, or a line still being written
			}
			r, derr := DecodeLine(line)
			if derr != nil {
				return nil, fmt.Errorf("audit: %s: %w", f.Name(), derr)
			}
			if r.Seq < seq {
				continue
			}
			if len(out) == 0 && r.Seq != seq {
				return nil, fmt.Errorf("%w: want seq %d, the log goes on at %d", ErrNotFound, seq, r.Seq)
			}
			if len(out) > 0 && r.Seq != out[len(out)-1].Seq+1 {
				return nil, fmt.Errorf("audit: %s: seq %d after %d", f.Name(), r.Seq, out[len(out)-1].Seq)
			}
			out = append(out, *r)
		}
	}
	return out, nil
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
