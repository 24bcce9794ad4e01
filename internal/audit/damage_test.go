package audit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// damage overwrites lines from..to (1-based) of path with '#', keeping
// their newlines (a bad sector in the middle of a file).
func damage(t *testing.T, path string, from, to int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	line := 1
	for i := range b {
		if b[i] == '\n' {
			line++
		} else if line >= from && line <= to {
			b[i] = '#'
		}
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestReadFromSkipsDamage: ReadFrom stops a batch before unreadable lines,
// then names the lost seqs (up to the next record that reads), the bytes
// skipped and the hash the span follows, and goes on after them. A junk
// line between two records that follow each other loses nothing.
func TestReadFromSkipsDamage(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	files := writeN(t, dir, 10, nil)
	active := files[len(files)-1]
	all, err := os.ReadFile(active)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(all), "\n")
	damage(t, active, 4, 6)
	l := openLog(t, dir, func(c *Config) { c.Signer = key })

	recs, err := l.ReadFrom(1, 100)
	if err != nil || len(recs) != 3 {
		t.Fatalf("read before the damage: %d records, %v; want 1..3", len(recs), err)
	}
	_, err = l.ReadFrom(4, 100)
	var d *DamageError
	if !errors.As(err, &d) {
		t.Fatalf("read at the damage: %v, want a DamageError", err)
	}
	start := int64(len(lines[0]) + len(lines[1]) + len(lines[2]))
	size := int64(len(lines[3]) + len(lines[4]) + len(lines[5]))
	if d.From != 4 || d.To != 6 || d.Prev != recs[2].Hash || d.Lines != 3 || d.Start != start || d.Bytes != size || d.File != active {
		t.Fatalf("damage %+v; want seq 4..6, 3 lines, %d bytes from %d of %s, after %s", d, size, start, active, recs[2].Hash)
	}
	if _, err := l.ReadFrom(5, 100); !errors.As(err, &d) || d.From != 5 || d.To != 6 || d.Prev != "" {
		t.Fatalf("read inside the damage: %v", err)
	}
	after, err := l.ReadFrom(7, 100)
	if err != nil || len(after) != 4 || after[0].Seq != 7 {
		t.Fatalf("read after the damage: %d records, %v", len(after), err)
	}

	mk, err := l.DamageMarker(d, recs[2].Hash)
	if err != nil {
		t.Fatal(err)
	}
	if from, to, ok := DamagedSpan(&mk); !ok || from != 5 || to != 6 || mk.Seq != 6 || VerifySignature(key.Public(), &mk) != nil {
		t.Fatalf("marker %+v", mk)
	}
	if !strings.Contains(mk.Reason, "2 records unreadable") || !strings.Contains(mk.Reason, "3 lines") {
		t.Fatalf("marker reason %q", mk.Reason)
	}

	// A junk line inserted between seq 8 and 9 loses nothing.
	b, _ := os.ReadFile(active)
	i := strings.Index(string(b), `{"seq":9,`)
	b = append(b[:i:i], append([]byte("#junk#\n"), b[i:]...)...)
	if err := os.WriteFile(active, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := l.ReadFrom(8, 100); err != nil || len(got) != 3 || got[1].Seq != 9 {
		t.Fatalf("read across a junk line: %d records, %v", len(got), err)
	}
}

// TestReplicaTakesDamageMarker: a replica takes a damage marker in place
// of the lost seqs and the record after it (whose prev it cannot check),
// refuses a marker that does not follow what it holds, keeps the state
// across a reopen, and its verification names the damage, is never intact,
// and goes on checking the records after it.
func TestReplicaTakesDamageMarker(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	dir := t.TempDir()
	files := writeN(t, dir, 12, nil)
	damage(t, files[len(files)-1], 5, 7)
	l := openLog(t, dir, func(c *Config) { c.Signer = key })
	before, err := l.ReadFrom(1, 100)
	if err != nil || len(before) != 4 {
		t.Fatal(len(before), err)
	}
	_, err = l.ReadFrom(5, 100)
	var d *DamageError
	if !errors.As(err, &d) {
		t.Fatal(err)
	}
	after, err := l.ReadFrom(d.To+1, 100)
	if err != nil || len(after) != 5 {
		t.Fatal(len(after), err)
	}

	rdir := t.TempDir()
	rp, err := OpenReplica(rdir, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	rp.SetPublicKey(key.Public())
	if _, err := rp.Append(before); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		d    DamageError
		prev string
		want error
	}{
		"starts past the next seq": {DamageError{From: 6, To: 7}, before[3].Hash, ErrGap},
		"does not chain":           {DamageError{From: 5, To: 7}, before[2].Hash, ErrFork},
		"stands in for a held seq": {DamageError{From: 4, To: 7}, before[2].Hash, ErrGap},
		"ends before the next seq": {DamageError{From: 5, To: 5}, before[3].Hash, ErrGap},
	} {
		mk, err := l.DamageMarker(&c.d, c.prev)
		if err != nil {
			t.Fatal(err)
		}
		batch := append([]Record{mk}, after...)
		if _, err := rp.Append(batch); !errors.Is(err, c.want) {
			t.Errorf("%s: Append: %v, want %v", name, err, c.want)
		}
	}
	forged, _ := l.DamageMarker(d, before[3].Hash)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged.Sig, _ = sign(other, forged.Hash)
	if _, err := rp.Append([]Record{forged}); !errors.Is(err, ErrInvalid) {
		t.Errorf("marker signed by another key: %v, want ErrInvalid", err)
	}

	mk, err := l.DamageMarker(d, before[3].Hash)
	if err != nil {
		t.Fatal(err)
	}
	if last, err := rp.Append([]Record{mk}); err != nil || last != 7 {
		t.Fatalf("marker: %d, %v", last, err)
	}
	rp.Close()
	rp, err = OpenReplica(rdir, "edge-1") // the next record's prev is unchecked across a reopen too
	if err != nil {
		t.Fatal(err)
	}
	defer rp.Close()
	if last, err := rp.Append(after); err != nil || last != 12 {
		t.Fatalf("records after the marker: %d, %v", last, err)
	}
	if got, err := rp.ReadFrom(4, 100); err != nil || len(got) != 7 || got[1].Seq != 7 || got[2].Seq != 8 {
		t.Fatalf("replica ReadFrom across the marker: %d records, %v", len(got), err)
	}

	rep, err := rp.Verify(Verifier{PublicKey: key.Public(), FromGenesis: true, Head: &Head{Seq: 12, Hash: after[4].Hash}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Intact() || rep.Verdict != VerdictTampered || rep.Records != 10 || rep.LastSeq != 12 || rep.Damaged != 3 ||
		len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemDamaged || rep.Problems[0].Seq != 7 ||
		!strings.Contains(rep.Problems[0].Msg, "seq 5..7") {
		t.Fatalf("report %+v", rep)
	}
	// The records after the marker are still checked.
	rfiles, _ := rp.Files()
	tamper(t, rfiles[len(rfiles)-1], func(lines []string) []string {
		lines[len(lines)-2] = strings.Replace(lines[len(lines)-2], "shop/orders", "shop/orderz", 1)
		return lines
	})
	rep, err = rp.Verify(Verifier{PublicKey: key.Public(), FromGenesis: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 2 || rep.Problems[1].Kind != ProblemEdited || rep.Problems[1].Seq != 11 {
		t.Fatalf("an edit after the marker: problems %v", rep.Problems)
	}
}

// TestVerifyChecksUnsignedMarker: with the node's key, a damage marker
// without a signature is a signature problem. The signature is outside the
// hash, so whoever edits a replica could otherwise stand one (unsigned) in
// for records already held and have their removal read as damage on the
// node's disk.
func TestVerifyChecksUnsignedMarker(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	dir := t.TempDir()
	files := writeN(t, dir, 8, nil)
	damage(t, files[len(files)-1], 4, 5)
	l := openLog(t, dir, func(c *Config) { c.Signer = key })
	before, err := l.ReadFrom(1, 100)
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.ReadFrom(4, 100)
	var d *DamageError
	if !errors.As(err, &d) {
		t.Fatal(err)
	}
	after, err := l.ReadFrom(d.To+1, 100)
	if err != nil {
		t.Fatal(err)
	}
	mk, err := l.DamageMarker(d, before[len(before)-1].Hash)
	if err != nil {
		t.Fatal(err)
	}
	rp, err := OpenReplica(t.TempDir(), "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	defer rp.Close()
	rp.SetPublicKey(key.Public())
	if _, err := rp.Append(append(append(before, mk), after...)); err != nil {
		t.Fatal(err)
	}
	rfiles, _ := rp.Files()
	tamper(t, rfiles[len(rfiles)-1], func(lines []string) []string {
		for i, line := range lines {
			if strings.Contains(line, `"damaged"`) {
				lines[i] = regexp.MustCompile(`,?"sig":"[^"]*"`).ReplaceAllString(line, "")
			}
		}
		return lines
	})
	rep, err := rp.Verify(Verifier{PublicKey: key.Public(), FromGenesis: true})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(rep.Problems, func(p Problem) bool { return p.Kind == ProblemSignature && p.Seq == mk.Seq }) {
		t.Fatalf("an unsigned damage marker: problems %v, want a signature problem at seq %d", rep.Problems, mk.Seq)
	}
}

// TestReplicaRotatesAfterDamageMarker: a file rotated right after a damage
// marker (whose seq skips the seqs it stands in for) is named by the seq
// of its first record, so the chain reads and verifies across it.
func TestReplicaRotatesAfterDamageMarker(t *testing.T) {
	dir := t.TempDir()
	files := writeN(t, dir, 14, nil)
	damage(t, files[len(files)-1], 3, 4)
	l := openLog(t, dir, nil)
	var d *DamageError
	if _, err := l.ReadFrom(3, 10); !errors.As(err, &d) {
		t.Fatal(err)
	}
	before, _ := l.ReadFrom(1, 2)
	after, _ := l.ReadFrom(5, 10)
	mk, err := l.DamageMarker(d, before[1].Hash)
	if err != nil {
		t.Fatal(err)
	}
	rdir := t.TempDir()
	// Room for about three lines per file.
	seg, _, err := openSegments(rdir, "audit.log", int64(3*len(mustLine(t, &after[0]))), 0, true)
	if err != nil {
		t.Fatal(err)
	}
	rp := &Replica{node: "edge-1", seg: seg, hash: Genesis}
	defer rp.Close()
	if last, err := rp.Append(append(append(before, mk), after...)); err != nil || last != 14 {
		t.Fatalf("append: %d, %v", last, err)
	}
	rfiles, _ := rp.Files()
	var names []string
	for _, f := range rfiles {
		names = append(names, filepath.Base(f))
	}
	for _, f := range rfiles[:len(rfiles)-1] {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r, _ := DecodeLine(b[:strings.IndexByte(string(b), '\n')+1])
		if named, _ := rotatedSeqOf(f); r == nil || named != lowSeq(r) {
			t.Errorf("files %v: %s starts with %+v", names, filepath.Base(f), r)
		}
		// Verified from this file on (as if the files before were
		// pruned), its name is no problem.
		rep := mustVerify(t, Verifier{}, rfiles[slices.Index(rfiles, f):]...)
		for _, p := range rep.Problems {
			if p.Kind != ProblemDamaged {
				t.Errorf("files %v from %s: %v", names, filepath.Base(f), p)
			}
		}
	}
	rep := mustVerify(t, Verifier{FromGenesis: true}, rfiles...)
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemDamaged || rep.LastSeq != 14 || rep.Records != 13 {
		t.Fatalf("files %v: report %+v", names, rep)
	}
	if got, err := rp.ReadFrom(1, 100); err != nil || len(got) != 13 {
		t.Fatalf("files %v: ReadFrom: %d records, %v", names, len(got), err)
	}
	for seq := uint64(2); seq <= 14; seq++ {
		want := seq
		if seq == 3 {
			want = 4 // read as the marker
		}
		if got, err := rp.ReadFrom(seq, 1); err != nil || len(got) != 1 || got[0].Seq != want {
			t.Errorf("files %v: ReadFrom(%d): %v, %v", names, seq, got, err)
		}
	}
}

func mustLine(t *testing.T, r *Record) []byte {
	t.Helper()
	b, err := r.MarshalLine()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAppendRefusesDamageMarkers: a caller of Append cannot write a record
// that reads as a damage marker into a log's own files (a replica would
// refuse it there, and shipping would stop at it).
func TestAppendRefusesDamageMarkers(t *testing.T) {
	l := openLog(t, t.TempDir(), nil)
	if err := l.Append(Record{Kind: KindAudit, Action: ActionDamaged, Object: "seq 1..1"}); err == nil {
		t.Fatal("Append took a damage marker")
	}
	if err := l.Append(Record{Kind: KindAudit, Action: "lost"}); err != nil {
		t.Fatal(err)
	}
}

// TestReadFromPrunedNotDamaged: unreadable lines at the very start of what
// a log keeps (its older files pruned) do not read as damage of the seqs
// asked for before them: those may be pruned records, and a marker would
// tell the control plane they were lost on the node's disk.
func TestReadFromPrunedNotDamaged(t *testing.T) {
	dir := t.TempDir()
	files := writeN(t, dir, 30, func(c *Config) { c.MaxFileBytes = 2 << 10 })
	if len(files) < 3 {
		t.Fatalf("%d files; want 3 or more", len(files))
	}
	if err := os.Remove(files[0]); err != nil { // pruned
		t.Fatal(err)
	}
	damage(t, files[1], 1, 1)
	l := openLog(t, dir, nil)
	_, err := l.ReadFrom(2, 100)
	var d *DamageError
	if errors.As(err, &d) || !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadFrom a pruned seq before an unreadable first line: %v, want ErrNotFound", err)
	}
}
