package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/audit"
)

// auditFixture is a real node audit log: 20 records signed every 4
// (checkpoints at seq 5, 10, 15, 20, 25), rotated every 2 KiB, closed
// cleanly; head is its last seq and hash as the writer knew them.
type auditFixture struct {
	files  []string // in chain order
	head   string   // SEQ:HASH
	pubkey string   // PEM file of the signing key
}

func newAuditFixture(t *testing.T, maxFileBytes int64) auditFixture {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	l, err := audit.Open(audit.Config{Dir: t.TempDir(), Node: "edge-1", Signer: key, CheckpointEvery: 4,
		MaxFileBytes: maxFileBytes, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		l.Append(audit.Record{Kind: audit.KindAuthz, Actor: "spiffe://fogmesh.local/ns/a/sa/b", Action: "connect",
			Object: fmt.Sprintf("demo/svc-%d", i), Decision: audit.Deny, Reason: "policy demo/deny"})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := l.Files()
	seq, hash := l.Last()
	if seq != 25 {
		t.Fatalf("last seq %d", seq)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pub := filepath.Join(t.TempDir(), "node.pub")
	os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600)
	return auditFixture{files: files, head: fmt.Sprintf("%d:%s", seq, hash), pubkey: pub}
}

// editLines rewrites a log file's lines.
func editLines(t *testing.T, path string, f func([]string) []string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	lines = lines[:len(lines)-1] // after the last '\n'
	if err := os.WriteFile(path, []byte(strings.Join(f(lines), "")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// appendForged returns lines with n well-formed records chained after the
// last one, rehashed: what someone who can write the files but does not
// hold the key can append.
func appendForged(t *testing.T, lines []string, n int) []string {
	t.Helper()
	last, err := audit.DecodeLine([]byte(lines[len(lines)-1]))
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		r := audit.Record{Seq: last.Seq + 1, Time: last.Time.Add(time.Second), Node: last.Node, Kind: audit.KindAuthz,
			Actor: last.Actor, Action: "connect", Object: fmt.Sprintf("demo/forged-%d", i), Decision: audit.Allow, Prev: last.Hash}
		r.Hash, _ = r.ComputeHash()
		b, _ := r.MarshalLine()
		lines = append(lines, string(b))
		last = &r
	}
	return lines
}

// TestAuditVerifyAnchorsCLI (issue 9): fogmesh audit verify on real log
// files edited at their ends. Records removed from the start, cut off the
// end (signed checkpoints included) or appended after the last checkpoint
// are never reported "intact": exit 1 where the edit can be proven (a
// rotated file's name, a head), exit 3 "UNANCHORED" where it cannot, and
// exit 0 only for a chain anchored from seq 1 to its head.
func TestAuditVerifyAnchorsCLI(t *testing.T) {
	type result struct {
		code int
		want []string // in the output
	}
	tests := []struct {
		name     string
		rotateAt int64
		// edit edits the fixture and returns the arguments after
		// "audit verify" (the files last).
		edit func(t *testing.T, fx auditFixture) []string
		want result
	}{
		{"untouched, with key and head", 2048, func(t *testing.T, fx auditFixture) []string {
			return append([]string{"--pubkey", fx.pubkey, "--head", fx.head}, fx.files...)
		}, result{0, []string{"25 records, seq 1..25", "5 signed", "intact: seq 1..25, anchored at the head"}}},
		{"untouched, no head", 2048, func(t *testing.T, fx auditFixture) []string {
			return append([]string{"--pubkey", fx.pubkey}, fx.files...)
		}, result{3, []string{"unanchored: end: no head", "UNANCHORED"}}},
		{"untouched, no head, no key", 2048, func(t *testing.T, fx auditFixture) []string {
			return fx.files
		}, result{3, []string{"unanchored: end: no head and no key", "UNANCHORED"}}},
		{"first records deleted from the oldest rotated file", 2048, func(t *testing.T, fx auditFixture) []string {
			editLines(t, fx.files[0], func(l []string) []string { return l[2:] })
			return append([]string{"--pubkey", fx.pubkey, "--head", fx.head}, fx.files...)
		}, result{1, []string{": seq 3: removed: the file's name says it starts at seq 1: seq 1..2 were removed", "TAMPERED"}}},
		{"oldest rotated file deleted", 2048, func(t *testing.T, fx auditFixture) []string {
			os.Remove(fx.files[0])
			return append([]string{"--pubkey", fx.pubkey, "--head", fx.head}, fx.files[1:]...)
		}, result{3, []string{"unanchored: start: the chain starts at seq", "UNANCHORED"}}},
		{"first records deleted from a single file", 1 << 20, func(t *testing.T, fx auditFixture) []string {
			editLines(t, fx.files[0], func(l []string) []string { return l[3:] })
			return append([]string{"--pubkey", fx.pubkey, "--head", fx.head}, fx.files...)
		}, result{3, []string{"unanchored: start: the chain starts at seq 4", "UNANCHORED"}}},
		{"tail with signed checkpoints cut, head given", 2048, func(t *testing.T, fx auditFixture) []string {
			last := fx.files[len(fx.files)-1]
			os.Remove(last) // the active file, with the last checkpoints
			editLines(t, fx.files[len(fx.files)-2], func(l []string) []string { return l[:len(l)-1] })
			return append([]string{"--pubkey", fx.pubkey, "--head", fx.head}, fx.files[:len(fx.files)-1]...)
		}, result{1, []string{"head: the chain ends at seq", "were cut off the end", "TAMPERED"}}},
		{"tail with signed checkpoints cut, no head", 1 << 20, func(t *testing.T, fx auditFixture) []string {
			editLines(t, fx.files[0], func(l []string) []string { return l[:12] })
			return append([]string{"--pubkey", fx.pubkey}, fx.files...)
		}, result{3, []string{"seq 1..12", "unanchored: end: no head", "unanchored: tail: seq 11..12 follow the last signed checkpoint (seq 10)", "UNANCHORED"}}},
		{"appended after the last checkpoint, no head", 2048, func(t *testing.T, fx auditFixture) []string {
			editLines(t, fx.files[len(fx.files)-1], func(l []string) []string { return appendForged(t, l, 2) })
			return append([]string{"--pubkey", fx.pubkey}, fx.files...)
		}, result{3, []string{"unanchored: tail: seq 26..27 follow the last signed checkpoint (seq 25): unsigned", "UNANCHORED"}}},
		{"appended after the head", 2048, func(t *testing.T, fx auditFixture) []string {
			editLines(t, fx.files[len(fx.files)-1], func(l []string) []string { return appendForged(t, l, 2) })
			return append([]string{"--head", fx.head}, fx.files...)
		}, result{3, []string{"unanchored: tail: seq 26..27 follow the head (seq 25): unsigned", "UNANCHORED"}}},
		{"rewritten from seq 7 and rehashed, head given", 1 << 20, func(t *testing.T, fx auditFixture) []string {
			editLines(t, fx.files[0], func(l []string) []string { return appendForged(t, l[:6], 19) })
			return append([]string{"--head", fx.head}, fx.files...)
		}, result{1, []string{": seq 25: head: hash", "the chain was rewritten up to here", "TAMPERED"}}},
		{"bad head", 2048, func(t *testing.T, fx auditFixture) []string {
			return append([]string{"--head", "25:xyz"}, fx.files...)
		}, result{2, []string{"--head"}}},
		{"head with --all", 2048, func(t *testing.T, fx auditFixture) []string {
			return []string{"--all", "--head", fx.head}
		}, result{2, []string{"--head is for files"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newAuditFixture(t, tt.rotateAt)
			if tt.rotateAt < 1<<20 && len(fx.files) < 3 {
				t.Fatalf("want rotated files, got %v", fx.files)
			}
			out, code := run(t, append([]string{"audit", "verify"}, tt.edit(t, fx)...)...)
			if code != tt.want.code {
				t.Fatalf("exit %d, want %d\n%s", code, tt.want.code, out)
			}
			for _, w := range tt.want.want {
				if !strings.Contains(out, w) {
					t.Fatalf("output lacks %q:\n%s", w, out)
				}
			}
			if code != 0 && strings.Contains(out, "intact") {
				t.Fatalf("exit %d but the output says intact:\n%s", code, out)
			}
		})
	}
}
