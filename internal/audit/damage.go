package audit

import (
	"errors"
	"fmt"
	"path/filepath"
)

// Damage on disk: a node's log file with lines in its middle that no
// longer decode (a bad sector, a bit flip, an edit). The records in them
// are lost, but the trail must go on past them, with the loss visible:
//
//   - ReadFrom, asked for a seq whose record is unreadable, returns a
//     *DamageError naming the unreadable seqs (From..To: up to the next
//     record that reads) and the bytes skipped;
//   - the shipper sends, in their place, a damage marker made by
//     Log.DamageMarker: a KindAudit record with Action ActionDamaged and
//     Object "seq FROM..TO", at seq TO, chained to the record before FROM
//     and signed like a checkpoint, followed by the records from TO+1 on;
//   - a Replica takes the marker in place of FROM..TO and, after it, a
//     record whose prev it cannot check (that record's prev is the hash
//     of a lost record);
//   - Verify reports every marker as ProblemDamaged (so the chain is
//     never intact) and goes on verifying the records after it.
//
// A node could declare records damaged to drop them, but it gains nothing
// by it: records it has not shipped are its own to rewrite anyway (it
// holds its key), and the marker stays in the control plane's copy for
// good.

// ActionDamaged is the action of a damage marker (see above).
const ActionDamaged = "damaged"

// errReserved refuses, in Log.Append, a record that would read as a
// damage marker: in the log's own files it would break shipping (a
// replica takes a marker only in place of unreadable records).
var errReserved = fmt.Errorf("audit: kind %q, action %q is reserved for damage markers", KindAudit, ActionDamaged)

// DamageError is returned (wrapped, see errors.As) by ReadFrom when the
// record asked for is on a line that does not read: seq From..To are
// lost; the records go on at To+1.
type DamageError struct {
	From, To uint64
	// Prev is the hash of seq From-1 as read from the files ("" if it was
	// not read; Genesis for From 1).
	Prev string
	// Lines and Bytes count the unreadable lines skipped (newlines
	// included); they start at byte Start of File and end before byte End
	// of EndFile.
	Lines      int
	Bytes      int64
	File       string
	Start      int64
	EndFile    string
	End        int64
	firstError error
}

func (d *DamageError) Error() string {
	return fmt.Sprintf("audit: seq %d..%d unreadable: %s", d.From, d.To, d.where())
}

// where says which bytes were skipped and why the first line did not read.
func (d *DamageError) where() string {
	span := fmt.Sprintf("%d lines, %d bytes from byte %d of %s", d.Lines, d.Bytes, d.Start, filepath.Base(d.File))
	if d.EndFile != d.File {
		span += fmt.Sprintf(" to byte %d of %s", d.End, filepath.Base(d.EndFile))
	}
	if d.firstError != nil {
		span += fmt.Sprintf(" (first: %v)", d.firstError)
	}
	return span
}

// damageSpan is what readFrom has seen of unreadable lines since the last
// record that read.
type damageSpan struct {
	lines      int
	bytes      int64
	file       string
	start      int64
	endFile    string
	end        int64
	firstError error
}

func (d *damageSpan) add(file string, start, end int64, err error) {
	if d.lines == 0 {
		d.file, d.start, d.firstError = file, start, err
	}
	d.lines++
	d.bytes += end - start
	d.endFile, d.end = file, end
}

func (d *damageSpan) error(from, to uint64, prev string) *DamageError {
	return &DamageError{From: from, To: to, Prev: prev, Lines: d.lines, Bytes: d.bytes,
		File: d.file, Start: d.start, EndFile: d.endFile, End: d.end, firstError: d.firstError}
}

// DamagedSpan reports whether r is a damage marker, and the seqs it
// stands in for.
func DamagedSpan(r *Record) (from, to uint64, ok bool) {
	if r == nil || r.Kind != KindAudit || r.Action != ActionDamaged {
		return 0, 0, false
	}
	if n, err := fmt.Sscanf(r.Object, "seq %d..%d", &from, &to); n != 2 || err != nil {
		return 0, 0, false
	}
	if r.Object != fmt.Sprintf("seq %d..%d", from, to) || from == 0 || from > to || to != r.Seq {
		return 0, 0, false
	}
	return from, to, true
}

// lowSeq is the lowest seq r holds or stands in for: what a file that
// begins with it is named by.
func lowSeq(r *Record) uint64 {
	if from, _, ok := DamagedSpan(r); ok {
		return from
	}
	return r.Seq
}

// DamageMarker returns the record that stands in for d's unreadable
// records when they are shipped: seq d.To, chained to prev (the hash of
// seq d.From-1 as the receiver holds it), signed with the log's Signer if
// it has one. It is not written to the log's own files (they keep the
// damaged lines, which Verify reports there).
func (l *Log) DamageMarker(d *DamageError, prev string) (Record, error) {
	if d == nil || d.From == 0 || d.From > d.To {
		return Record{}, errors.New("audit: damage marker: bad span")
	}
	if d.From == 1 {
		prev = Genesis
	}
	r := Record{Seq: d.To, Time: l.cfg.Now().UTC(), Node: l.cfg.Node, Kind: KindAudit, Action: ActionDamaged,
		Object: fmt.Sprintf("seq %d..%d", d.From, d.To),
		Reason: fmt.Sprintf("%d records unreadable on the node's disk, skipped when shipped: %s", d.To-d.From+1, d.where()),
		Prev:   prev}
	r.normalize(r.Time)
	h, err := r.ComputeHash()
	if err != nil {
		return Record{}, fmt.Errorf("audit: damage marker: %w", err)
	}
	r.Hash = h
	if l.cfg.Signer != nil {
		if r.Sig, err = sign(l.cfg.Signer, h); err != nil {
			return Record{}, fmt.Errorf("audit: damage marker: %w", err)
		}
	}
	line, err := r.MarshalLine()
	if err == nil {
		_, err = DecodeLine(line)
	}
	if err != nil {
		return Record{}, fmt.Errorf("audit: damage marker: %w", err)
	}
	return r, nil
}
