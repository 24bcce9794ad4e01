package audit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func openLog(t testing.TB, dir string, mod func(*Config)) *Log {
	t.Helper()
	cfg := Config{Dir: dir, Node: "edge-1"}
	if mod != nil {
		mod(&cfg)
	}
	l, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func authz(i int) Record {
	d := Allow
	if i%3 == 0 {
		d = Deny
	}
	return Record{Kind: KindAuthz, Actor: "spiffe://fogmesh.local/ns/shop/sa/web", Action: "connect",
		Object: fmt.Sprintf("shop/orders#%d", i), Decision: d, Reason: "policy shop/allow-web"}
}

// writeN appends n records, closes the log and returns its files.
func writeN(t *testing.T, dir string, n int, mod func(*Config)) []string {
	t.Helper()
	l := openLog(t, dir, mod)
	for i := range n {
		if err := l.Append(authz(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files, err := l.Files()
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// logHead is the head of l's chain, as the writer knows it.
func logHead(l *Log) *Head {
	seq, hash := l.Last()
	return &Head{Seq: seq, Hash: hash}
}

func mustVerify(t *testing.T, v Verifier, files ...string) *Report {
	t.Helper()
	rep, err := v.Verify(files...)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestConcurrentAppendsFormOneGaplessChain(t *testing.T) {
	dir := t.TempDir()
	// A small buffer makes appenders wait for the writer; none may give up.
	l := openLog(t, dir, func(c *Config) { c.Buffer = 16; c.BlockFor = time.Minute })
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				if err := l.Append(authz(g*1000 + i)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if seq, _ := l.Last(); seq != 1600 {
		t.Fatalf("last seq %d, want 1600", seq)
	}
	l.Close()
	files, _ := l.Files()
	rep := mustVerify(t, Verifier{Head: logHead(l)}, files...)
	if !rep.Intact() || rep.Records != 1600 || rep.FirstSeq != 1 || rep.LastSeq != 1600 || rep.Node != "edge-1" {
		t.Fatalf("report %+v", rep)
	}
	if l.Dropped() != 0 {
		t.Fatalf("dropped %d", l.Dropped())
	}
}

// tamper rewrites the lines of a file.
func tamper(t *testing.T, path string, f func(lines []string) []string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	if err := os.WriteFile(path, []byte(strings.Join(f(lines), "")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// rehash recomputes a line's hash after an edit, as a forger would.
func rehash(t *testing.T, line string) string {
	t.Helper()
	r, _ := DecodeLine([]byte(line))
	if r == nil {
		t.Fatalf("cannot decode %q", line)
	}
	r.Hash, _ = r.ComputeHash()
	b, _ := r.MarshalLine()
	return string(b)
}

func TestTamperingIsDetectedAndNamed(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(t *testing.T, l []string) []string
		// want: "kind seq line" of each expected problem, in order.
		want []string
	}{
		{"intact", func(t *testing.T, l []string) []string { return l }, nil},
		{"edited field", func(t *testing.T, l []string) []string {
			l[4] = strings.Replace(l[4], `"decision":"allow"`, `"decision":"deny"`, 1)
			return l
		}, []string{"edited 5 5"}},
		{"edited and rehashed", func(t *testing.T, l []string) []string {
			l[4] = rehash(t, strings.Replace(l[4], `"decision":"allow"`, `"decision":"deny"`, 1))
			return l
		}, []string{"broken 6 6"}},
		{"reformatted", func(t *testing.T, l []string) []string {
			l[2] = strings.Replace(l[2], `"seq":3,`, `"seq": 3,`, 1)
			return l
		}, []string{"edited 3 3"}},
		{"removed", func(t *testing.T, l []string) []string {
			return slices.Delete(l, 3, 5) // seq 4 and 5
		}, []string{"removed 6 4"}},
		{"inserted forged copy", func(t *testing.T, l []string) []string {
			forged := rehash(t, strings.Replace(l[7], `"decision":"allow"`, `"decision":"deny"`, 1))
			return slices.Insert(l, 7, forged) // a second seq 8 before the real one
		}, []string{"inserted 8 9", "broken 9 10"}},
		{"inserted with bad hash", func(t *testing.T, l []string) []string {
			return slices.Insert(l, 2, strings.Replace(l[1], `#1"`, `#99"`, 1))
		}, []string{"edited 2 3", "inserted 2 3"}},
		{"reordered", func(t *testing.T, l []string) []string {
			l[3], l[4] = l[4], l[3] // seq 4 and 5 swapped
			return l
		}, []string{"reordered 5 4", "reordered 4 5"}},
		{"garbage line", func(t *testing.T, l []string) []string {
			return slices.Insert(l, 1, "\x00\xff{not json\n")
		}, []string{"malformed 0 2"}},
		{"truncated last line", func(t *testing.T, l []string) []string {
			l[len(l)-1] = l[len(l)-1][:40]
			return l
		}, []string{"torn 0 10"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := writeN(t, t.TempDir(), 10, nil)
			tamper(t, files[0], func(l []string) []string { return tt.tamper(t, l) })
			rep := mustVerify(t, Verifier{}, files...)
			var got []string
			for _, p := range rep.Problems {
				got = append(got, fmt.Sprintf("%s %d %d", p.Kind, p.Seq, p.Line))
				if p.File != files[0] || p.Msg == "" {
					t.Errorf("problem %+v", p)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("problems %q, want %q\n%v", got, tt.want, rep.Problems)
			}
		})
	}
}

func TestRotationKeepsTheChain(t *testing.T) {
	dir := t.TempDir()
	files := writeN(t, dir, 300, func(c *Config) { c.MaxFileBytes = 8 << 10 })
	if len(files) < 5 {
		t.Fatalf("only %d files", len(files))
	}
	// Any order: Verify sorts by first seq.
	shuffled := slices.Clone(files)
	slices.Reverse(shuffled)
	rep := mustVerify(t, Verifier{}, shuffled...)
	if rep.Tampered() || rep.Records != 300 || rep.LastSeq != 300 || !slices.Equal(rep.Files, files) {
		t.Fatalf("report %+v\nfiles %v", rep, files)
	}
	// Reopening goes on across the boundary.
	l := openLog(t, dir, func(c *Config) { c.MaxFileBytes = 8 << 10 })
	l.Append(authz(1))
	l.Close()
	files, _ = l.Files()
	if rep := mustVerify(t, Verifier{Head: logHead(l)}, files...); !rep.Intact() || rep.LastSeq != 301 {
		t.Fatalf("after reopen: %+v", rep)
	}
	// A whole rotated file removed from the middle is a removal.
	mid := files[2]
	rest := slices.DeleteFunc(slices.Clone(files), func(f string) bool { return f == mid })
	rep = mustVerify(t, Verifier{}, rest...)
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemRemoved || rep.Problems[0].File != files[3] || rep.Problems[0].Line != 1 {
		t.Fatalf("problems %v", rep.Problems)
	}
	// Giving only later files is not tampering, but it is said.
	rep = mustVerify(t, Verifier{Head: logHead(l)}, files[1:]...)
	if rep.Tampered() || rep.Verdict != VerdictUnanchored || len(rep.Unanchored) != 1 || !strings.Contains(rep.Unanchored[0], "starts at seq 22") {
		t.Fatalf("report %+v", rep)
	}
	// ReadFrom crosses file boundaries.
	l2 := openLog(t, dir, nil)
	recs, err := l2.ReadFrom(40, 100)
	if err != nil || len(recs) != 100 || recs[0].Seq != 40 || recs[99].Seq != 139 {
		t.Fatalf("ReadFrom: %d records, %v", len(recs), err)
	}
	if recs, err := l2.ReadFrom(302, 10); err != nil || len(recs) != 0 {
		t.Fatalf("ReadFrom past the end: %v %v", recs, err)
	}
}

func TestCheckpointsAreSignedAndChecked(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	dir := t.TempDir()
	files := writeN(t, dir, 25, func(c *Config) { c.Signer = key; c.CheckpointEvery = 10 })
	rep := mustVerify(t, Verifier{PublicKey: &key.PublicKey}, files...)
	// 10 records, checkpoint, 10, checkpoint, 5, checkpoint on Close.
	if rep.Tampered() || rep.LastSigned != 28 || rep.Records != 28 || rep.Checkpoints != 3 || rep.Signed != 3 {
		t.Fatalf("report %+v", rep)
	}
	b, _ := os.ReadFile(files[len(files)-1])
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if !strings.Contains(lines[len(lines)-1], `"kind":"checkpoint"`) {
		t.Fatalf("last line is not a checkpoint: %s", lines[len(lines)-1])
	}
	rep = mustVerify(t, Verifier{PublicKey: &other.PublicKey}, files...)
	if len(rep.Problems) != 3 || rep.Problems[0].Kind != ProblemSignature || rep.Problems[0].Seq != 11 {
		t.Fatalf("wrong key: %v", rep.Problems)
	}
	// A checkpoint re-signed by someone else's key (rehash is not needed:
	// sig is outside the hash) fails with the real key.
	tamper(t, files[0], func(l []string) []string {
		r, _ := DecodeLine([]byte(l[10]))
		r.Sig, _ = sign(other, r.Hash)
		nb, _ := r.MarshalLine()
		l[10] = string(nb)
		return l
	})
	rep = mustVerify(t, Verifier{PublicKey: &key.PublicKey}, files...)
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemSignature || rep.Problems[0].Line != 11 {
		t.Fatalf("re-signed: %v", rep.Problems)
	}
}

func TestCheckpointOnInterval(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	l := openLog(t, t.TempDir(), func(c *Config) { c.Signer = key; c.CheckpointInterval = 40 * time.Millisecond })
	l.Append(authz(1))
	deadline := time.Now().Add(5 * time.Second)
	for {
		if seq, _ := l.Last(); seq == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no checkpoint after the interval")
		}
		time.Sleep(10 * time.Millisecond)
	}
	recs, err := l.ReadFrom(2, 1)
	if err != nil || len(recs) != 1 || recs[0].Kind != KindCheckpoint {
		t.Fatalf("%v %v", recs, err)
	}
}

// TestKilledMidWriteRecovers: a process killed mid-write leaves a partial
// last line. Verify names it; reopening keeps every whole record, moves the
// partial one aside and goes on with a chain that verifies.
func TestKilledMidWriteRecovers(t *testing.T) {
	dir := t.TempDir()
	files := writeN(t, dir, 20, nil)
	active := files[len(files)-1]
	b, _ := os.ReadFile(active)
	// A 21st record half written.
	partial := `{"seq":21,"time":"2026-01-01T00:00:00Z","node":"edge-1","kind":"authz","act`
	os.WriteFile(active, append(b, partial...), 0o600)

	rep := mustVerify(t, Verifier{}, files...)
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemTorn || rep.Problems[0].Line != 21 || rep.Records != 20 {
		t.Fatalf("report %+v", rep)
	}
	var logBuf bytes.Buffer
	l := openLog(t, dir, func(c *Config) { c.Logger = newTextLogger(&logBuf) })
	if seq, _ := l.Last(); seq != 20 {
		t.Fatalf("recovered at seq %d, want 20", seq)
	}
	if !strings.Contains(logBuf.String(), "partial record") {
		t.Fatalf("recovery not logged: %s", logBuf.String())
	}
	torn, _ := filepath.Glob(active + ".torn-*")
	if len(torn) != 1 {
		t.Fatalf("torn tail not kept: %v", torn)
	}
	if tb, _ := os.ReadFile(torn[0]); string(tb) != partial {
		t.Fatalf("torn file holds %q", tb)
	}
	l.Append(authz(21))
	l.Close()
	rep = mustVerify(t, Verifier{Head: logHead(l)}, files...)
	if !rep.Intact() || rep.LastSeq != 21 {
		t.Fatalf("after recovery: %+v", rep)
	}
}

// TestFullBufferIsNotSilent: with the writer stalled, Append blocks for
// BlockFor, then fails with ErrFull; the loss is counted and written into
// the chain when the writer catches up.
func TestFullBufferIsNotSilent(t *testing.T) {
	stall := make(chan struct{})
	var once sync.Once
	l := openLogStalled(t, t.TempDir(), stall, &once)
	if err := l.Append(authz(0)); err != nil { // taken by the writer, which stalls on it
		t.Fatal(err)
	}
	waitStalled(t, l)
	if err := l.Append(authz(1)); err != nil { // fills the buffer (1)
		t.Fatal(err)
	}
	start := time.Now()
	err := l.Append(authz(2))
	if !errors.Is(err, ErrFull) || time.Since(start) < 20*time.Millisecond {
		t.Fatalf("Append on a full buffer: %v after %v", err, time.Since(start))
	}
	if l.Dropped() != 1 {
		t.Fatalf("dropped %d", l.Dropped())
	}
	close(stall)
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	recs, err := l.ReadFrom(1, 10)
	if err != nil || len(recs) != 3 {
		t.Fatalf("%v %v", recs, err)
	}
	if r := recs[1]; r.Kind != KindAudit || r.Action != "lost" || !strings.Contains(r.Reason, "1 records lost") {
		t.Fatalf("loss not in the chain: %+v", r)
	}
}

func TestReplicaRefusesForgedBatches(t *testing.T) {
	files := writeN(t, t.TempDir(), 12, nil)
	var recs []Record
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, ln := range strings.SplitAfter(string(b), "\n") {
			if ln != "" {
				r, err := DecodeLine([]byte(ln))
				if err != nil {
					t.Fatal(err)
				}
				recs = append(recs, *r)
			}
		}
	}
	rdir := t.TempDir()
	rp, err := OpenReplica(rdir, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	defer rp.Close()
	if last, err := rp.Append(recs[:5]); err != nil || last != 5 {
		t.Fatal(last, err)
	}
	edited := slices.Clone(recs[5:8])
	edited[1].Reason = "edited"
	rehashed := slices.Clone(recs[5:8])
	rehashed[0].Reason = "forged"
	rehashed[0].Hash, _ = rehashed[0].ComputeHash()
	other := slices.Clone(recs[5:6])
	other[0].Node = "edge-2"
	forkAt5 := slices.Clone(recs[4:6])
	forkAt5[0].Hash = strings.Repeat("ab", 32)
	for _, tt := range []struct {
		name  string
		batch []Record
		want  error
	}{
		{"gap", recs[6:8], ErrGap},
		{"edited", edited, ErrInvalid},
		{"rehashed", rehashed, ErrFork},
		{"other node", other, ErrInvalid},
		{"different stored record", forkAt5, ErrFork},
	} {
		last, err := rp.Append(tt.batch)
		if !errors.Is(err, tt.want) || last != 5 {
			t.Errorf("%s: %d, %v; want %v", tt.name, last, err, tt.want)
		}
	}
	// A resend overlapping what is stored is fine.
	if last, err := rp.Append(recs[3:12]); err != nil || last != 12 {
		t.Fatal(last, err)
	}
	rp.Close()
	rp2, err := OpenReplica(rdir, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	defer rp2.Close()
	if seq, h := rp2.Last(); seq != 12 || h != recs[11].Hash {
		t.Fatalf("reopened at %d", seq)
	}
	if rep, err := rp2.Verify(Verifier{Head: &Head{12, recs[11].Hash}, FromGenesis: true}); err != nil || !rep.Intact() || rep.Records != 12 {
		t.Fatalf("%+v %v", rep, err)
	}
	if _, err := OpenReplica(rdir, "../x"); err == nil {
		t.Fatal("bad node name accepted")
	}
}

func TestVerifyUnreadable(t *testing.T) {
	if _, err := Verify(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Fatal("no error for a missing file")
	}
	if _, err := Verify(); err == nil {
		t.Fatal("no error for no files")
	}
	// A huge line is a problem, not a crash or an error.
	p := filepath.Join(t.TempDir(), "audit.log")
	os.WriteFile(p, append(bytes.Repeat([]byte("x"), 3*maxLine), '\n'), 0o600)
	rep, err := Verify(p)
	if err != nil || len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemMalformed {
		t.Fatalf("%+v %v", rep, err)
	}
}

func FuzzDecodeLine(f *testing.F) {
	r := Record{Seq: 1, Time: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), Node: "edge-1", Kind: KindAuthz,
		Actor: "spiffe://x/ns/a/sa/b", Action: "connect", Object: "a/b", Decision: Deny, Reason: "<policy & \"q\">", Prev: Genesis}
	r.Hash, _ = r.ComputeHash()
	good, _ := r.MarshalLine()
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte(`{"seq":1,"seq":2}`))
	f.Add([]byte(`{"seq":18446744073709551615,"time":"9999-12-31T23:59:59Z","node":"n","kind":"k","action":"a","prev":"` + Genesis + `","hash":"` + Genesis + `"}`))
	f.Add([]byte(`{"seq":1,"extra":true}`))
	f.Add([]byte("\xff\xfe"))
	f.Add([]byte(`{"seq":1,"time":"0000-01-01T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeLine(b)
		if err != nil {
			return
		}
		// Whatever decodes cleanly re-encodes to the same bytes.
		line, err := r.MarshalLine()
		if err != nil {
			t.Fatalf("accepted record does not encode: %v", err)
		}
		if !bytes.Equal(bytes.TrimSuffix(line, []byte("\n")), bytes.TrimSuffix(b, []byte("\n"))) {
			t.Fatalf("accepted %q, re-encodes as %q", b, line)
		}
	})
}

// BenchmarkAppend measures records/s through Append to disk (fsync per
// batch) and without fsync.
func BenchmarkAppend(b *testing.B) {
	for _, noSync := range []bool{false, true} {
		b.Run(fmt.Sprintf("nosync=%v", noSync), func(b *testing.B) {
			l := openLog(b, b.TempDir(), func(c *Config) { c.NoSync = noSync; c.BlockFor = time.Minute })
			rec := authz(1)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := l.Append(rec); err != nil {
						b.Fatal(err)
					}
				}
			})
			if err := l.Flush(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// TestFlushGivesWayToClose: a Flush blocked on a full buffer (the disk has
// stalled) returns ErrClosed as soon as Close starts, instead of keeping
// Close from taking the lock.
func TestFlushGivesWayToClose(t *testing.T) {
	stall := make(chan struct{})
	var once sync.Once
	l := openLogStalled(t, t.TempDir(), stall, &once)
	if err := l.Append(authz(0)); err != nil {
		t.Fatal(err)
	}
	waitStalled(t, l)
	if err := l.Append(authz(1)); err != nil { // the buffer (1) is full now
		t.Fatal(err)
	}
	flushed := make(chan error, 1)
	go func() { flushed <- l.Flush(context.Background()) }()
	time.Sleep(50 * time.Millisecond) // Flush is blocked on the full buffer
	closed := make(chan error, 1)
	go func() { closed <- l.Close() }()
	select {
	case err := <-flushed:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Flush: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Flush still blocked after Close started")
	}
	close(stall)
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return after the disk came back")
	}
}

// forgeAfter returns n records that chain after the last line of lines,
// well formed and rehashed, as someone who can write the files but does
// not hold the key would append them.
func forgeAfter(t *testing.T, lines []string, n int) []string {
	t.Helper()
	last, err := DecodeLine([]byte(lines[len(lines)-1]))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i := range n {
		r := Record{Seq: last.Seq + 1, Time: last.Time.Add(time.Second), Node: last.Node, Kind: KindAuthz,
			Actor: "spiffe://fogmesh.local/ns/shop/sa/web", Action: "connect", Object: fmt.Sprintf("shop/forged#%d", i),
			Decision: Allow, Prev: last.Hash}
		r.Hash, _ = r.ComputeHash()
		b, _ := r.MarshalLine()
		out = append(out, string(b))
		last = &r
	}
	return out
}

// TestChainEndsAreAnchored (issue 9): records removed from the start or cut
// off the end, and records appended after the last checkpoint, are never
// "intact": with a head (and a key) they are tampering where that can be
// proven, and unanchored where it cannot; without a head the end is always
// unanchored.
func TestChainEndsAreAnchored(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signed := func(c *Config) { c.Signer = key; c.CheckpointEvery = 10; c.NoSync = true }
	pub := &key.PublicKey
	type want struct {
		verdict string
		problem string // "kind seq line" of the first problem, or ""
		says    string // in the first unanchored sentence, or ""
	}
	tests := []struct {
		name string
		// edit edits the single file of a 25-record signed log (28 lines:
		// checkpoints at seq 11, 22, 28) and returns the head to verify
		// against (nil: none).
		edit func(t *testing.T, l []string, head *Head) ([]string, *Head)
		v    Verifier
		want want
	}{
		{"untouched with head and key", func(t *testing.T, l []string, h *Head) ([]string, *Head) { return l, h },
			Verifier{PublicKey: pub}, want{VerdictIntact, "", ""}},
		{"untouched with head, no key", func(t *testing.T, l []string, h *Head) ([]string, *Head) { return l, h },
			Verifier{}, want{VerdictIntact, "", ""}},
		{"untouched without head", func(t *testing.T, l []string, h *Head) ([]string, *Head) { return l, nil },
			Verifier{PublicKey: pub}, want{VerdictUnanchored, "", "end: no head:"}},
		{"untouched, no head, no key", func(t *testing.T, l []string, h *Head) ([]string, *Head) { return l, nil },
			Verifier{}, want{VerdictUnanchored, "", "end: no head and no key"}},
		{"first records deleted", func(t *testing.T, l []string, h *Head) ([]string, *Head) { return l[4:], h },
			Verifier{PublicKey: pub}, want{VerdictUnanchored, "", "start: the chain starts at seq 5"}},
		{"first records deleted from a replica", func(t *testing.T, l []string, h *Head) ([]string, *Head) { return l[4:], h },
			Verifier{PublicKey: pub, FromGenesis: true}, want{VerdictTampered, "removed 5 1", ""}},
		{"tail with checkpoints cut, no head", func(t *testing.T, l []string, h *Head) ([]string, *Head) { return l[:15], nil },
			Verifier{PublicKey: pub}, want{VerdictUnanchored, "", "end: no head:"}},
		{"tail with checkpoints cut", func(t *testing.T, l []string, h *Head) ([]string, *Head) { return l[:15], h },
			Verifier{PublicKey: pub}, want{VerdictTampered, "head 15 15", ""}},
		{"tail cut back to a checkpoint", func(t *testing.T, l []string, h *Head) ([]string, *Head) { return l[:22], h },
			Verifier{PublicKey: pub}, want{VerdictTampered, "head 22 22", ""}},
		{"appended after the last checkpoint, no head", func(t *testing.T, l []string, h *Head) ([]string, *Head) {
			return append(l, forgeAfter(t, l, 3)...), nil
		}, Verifier{PublicKey: pub}, want{VerdictUnanchored, "", "end: no head:"}},
		{"appended after the head", func(t *testing.T, l []string, h *Head) ([]string, *Head) {
			return append(l, forgeAfter(t, l, 3)...), h
		}, Verifier{PublicKey: pub}, want{VerdictUnanchored, "", "tail: seq 29..31 follow the head (seq 28): unsigned"}},
		{"rewritten and rehashed, no key", func(t *testing.T, l []string, h *Head) ([]string, *Head) {
			// Everything from seq 20 on rebuilt: consistent, but not the head.
			return append(l[:19], forgeAfter(t, l[:19], 9)...), h
		}, Verifier{}, want{VerdictTampered, "head 28 28", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			l := openLog(t, dir, signed)
			for i := range 25 {
				l.Append(authz(i))
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			files, _ := l.Files()
			if len(files) != 1 {
				t.Fatalf("files %v", files)
			}
			var head *Head
			tamper(t, files[0], func(lines []string) []string {
				if len(lines) != 28 {
					t.Fatalf("%d lines", len(lines))
				}
				var out []string
				out, head = tt.edit(t, lines, logHead(l))
				return out
			})
			v := tt.v
			v.Head = head
			rep := mustVerify(t, v, files...)
			var problem, says string
			if len(rep.Problems) > 0 {
				p := rep.Problems[0]
				problem = fmt.Sprintf("%s %d %d", p.Kind, p.Seq, p.Line)
			}
			if len(rep.Unanchored) > 0 {
				says = rep.Unanchored[0]
			}
			if rep.Verdict != tt.want.verdict || problem != tt.want.problem || !strings.Contains(says, tt.want.says) ||
				(tt.want.says == "" && says != "") || rep.Intact() != (tt.want.verdict == VerdictIntact) {
				t.Fatalf("verdict %s, problem %q, unanchored %q; want %+v\n%+v", rep.Verdict, problem, rep.Unanchored, tt.want, rep)
			}
		})
	}
}

// TestRotatedFileStartIsChecked: a rotated file's name says its first seq,
// so records deleted from the start of the oldest file show as removed;
// the oldest file deleted whole leaves an unanchored start.
func TestRotatedFileStartIsChecked(t *testing.T) {
	dir := t.TempDir()
	files := writeN(t, dir, 60, func(c *Config) { c.MaxFileBytes = 4 << 10 })
	if len(files) < 3 {
		t.Fatalf("files %v", files)
	}
	tamper(t, files[0], func(l []string) []string { return l[3:] })
	rep := mustVerify(t, Verifier{}, files...)
	if rep.Verdict != VerdictTampered || len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemRemoved ||
		rep.Problems[0].Seq != 4 || !strings.Contains(rep.Problems[0].Msg, "seq 1..3 were removed from its start") {
		t.Fatalf("%+v", rep)
	}
	rep = mustVerify(t, Verifier{}, files[1:]...)
	if rep.Verdict != VerdictUnanchored || rep.Tampered() || !strings.Contains(rep.Unanchored[0], "start: the chain starts at seq") {
		t.Fatalf("%+v", rep)
	}
}

func TestParseHead(t *testing.T) {
	h, err := ParseHead("12:" + strings.ToUpper(Genesis[:63]) + "a")
	if err != nil || h.Seq != 12 || h.Hash != Genesis[:63]+"a" || h.String() != "12:"+Genesis[:63]+"a" {
		t.Fatal(h, err)
	}
	for _, bad := range []string{"", "12", ":" + Genesis, "0:" + Genesis, "x:" + Genesis, "12:abc", "12:" + Genesis + "0", "-1:" + Genesis} {
		if _, err := ParseHead(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// FuzzParseHead: --head is outside input; it parses or errs, never
// panics, and what parses prints back to itself.
func FuzzParseHead(f *testing.F) {
	for _, s := range []string{"1:" + Genesis, "25:" + strings.ToUpper(Genesis), " 7:" + Genesis + " ", "18446744073709551615:" + Genesis,
		"18446744073709551616:" + Genesis, "0:" + Genesis, "", ":", "1:", "1:xyz", "1:" + Genesis + ":2", "+1:" + Genesis} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHead(s)
		if err != nil {
			return
		}
		if h.Seq == 0 || !isHex32(h.Hash) {
			t.Fatalf("%q parsed to %+v", s, h)
		}
		if h2, err := ParseHead(h.String()); err != nil || h2 != h {
			t.Fatalf("%q: %+v does not round-trip: %+v %v", s, h, h2, err)
		}
	})
}

// TestVerifyAnchoredWhileWriting: an open log verifies its files against
// what it wrote itself, consistently while appends go on (never a false
// "unanchored" or "tampered"), and shows records cut off or appended
// behind its back.
func TestVerifyAnchoredWhileWriting(t *testing.T) {
	l := openLog(t, t.TempDir(), func(c *Config) { c.NoSync = true; c.MaxFileBytes = 32 << 10 })
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 2000 {
			l.Append(authz(i))
		}
	}()
	for i := 0; ; i++ {
		rep, err := l.VerifyAnchored(Verifier{FromGenesis: true})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Records > 0 && !rep.Intact() {
			t.Fatalf("verification %d while writing: %+v", i, rep)
		}
		select {
		case <-done:
		default:
			continue
		}
		break
	}
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	files, _ := l.Files()
	active := files[len(files)-1]
	orig, _ := os.ReadFile(active)
	tamper(t, active, func(lines []string) []string { return lines[:len(lines)-2] })
	if rep, _ := l.VerifyAnchored(Verifier{}); rep.Verdict != VerdictTampered || rep.Problems[0].Kind != ProblemHead {
		t.Fatalf("cut behind the log's back: %+v", rep)
	}
	os.WriteFile(active, orig, 0o600)
	tamper(t, active, func(lines []string) []string { return append(lines, forgeAfter(t, lines, 1)...) })
	if rep, _ := l.VerifyAnchored(Verifier{}); rep.Verdict != VerdictUnanchored || !strings.Contains(rep.Unanchored[0], "tail: seq 2001..2001 follow the head (seq 2000)") {
		t.Fatalf("appended behind the log's back: %+v", rep)
	}
}
