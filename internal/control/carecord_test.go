package control

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// caRecordDir makes a CA directory and returns it with its shared CA
// record (readCAFiles).
func caRecordDir(t testing.TB, td string) (string, []byte) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if _, err := identity.OpenCA(identity.CAConfig{Dir: dir, TrustDomain: td}); err != nil {
		t.Fatal(err)
	}
	rec, err := readCAFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, rec
}

// resetCADir makes dir hold exactly the files of rec again.
func resetCADir(t testing.TB, dir string, rec []byte) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	var files map[string][]byte
	if err := json.Unmarshal(rec, &files); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDamagedSharedCARecordKeepsCA: a shared CA record (another replica's
// CA files in the store) that does not hold a usable CA of the trust
// domain is refused and the CA on disk is left as it was. Before, its
// files were written over the local ones first and the reload failed
// after: the replica's ca.json was garbage (or named a key it did not
// have) and the control plane no longer started.
func TestDamagedSharedCARecordKeepsCA(t *testing.T) {
	dir, rec := caRecordDir(t, "")
	var files map[string][]byte
	if err := json.Unmarshal(rec, &files); err != nil {
		t.Fatal(err)
	}
	_, foreign := caRecordDir(t, "other.example")
	noKey := map[string][]byte{identity.CAStateFile: files[identity.CAStateFile]}
	garbage := map[string][]byte{identity.CAStateFile: []byte("{not json")}
	_, rec3 := caRecordDir(t, "")
	longName := map[string][]byte{}
	json.Unmarshal(rec3, &longName)
	longName[strings.Repeat("z", 250)] = []byte("x") // its temporary name is over NAME_MAX
	for name, bad := range map[string]any{"garbage ca.json": garbage, "no key": noKey, "empty": map[string][]byte{}, "long name": longName} {
		b, _ := json.Marshal(bad)
		if err := writeCARecord(dir, "", b); err == nil {
			t.Errorf("%s: record taken", name)
		}
	}
	if err := writeCARecord(dir, "", foreign); err == nil {
		t.Error("a CA of another trust domain taken")
	}
	if now, err := readCAFiles(dir); err != nil || !bytes.Equal(now, rec) {
		t.Fatalf("a refused record changed the CA dir (%v)", err)
	}
	if _, err := identity.OpenCA(identity.CAConfig{Dir: dir}); err != nil {
		t.Fatalf("the CA no longer opens: %v", err)
	}
	// A good record (another replica's rotation) is written and opens.
	other, rec2 := caRecordDir(t, "")
	_ = other
	if err := writeCARecord(dir, "", rec2); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.OpenCA(identity.CAConfig{Dir: dir}); err != nil {
		t.Fatalf("the CA written from a good record does not open: %v", err)
	}
}

// FuzzSharedCARecord: a shared CA record, as a replica reads it from the
// store, is written only when it holds a CA of the trust domain that
// opens from the files written; a refused record leaves the CA directory
// as it was (never a panic, never a replica whose CA no longer opens).
func FuzzSharedCARecord(f *testing.F) {
	dir, rec := caRecordDir(f, "")
	_, other := caRecordDir(f, "")
	_, foreign := caRecordDir(f, "other.example")
	var files map[string][]byte
	json.Unmarshal(rec, &files)
	var st map[string]any
	json.Unmarshal(files[identity.CAStateFile], &st)
	variant := func(k string, v any) []byte {
		c := map[string]any{}
		for n, x := range st {
			c[n] = x
		}
		c[k] = v
		sb, _ := json.Marshal(c)
		fs := map[string][]byte{}
		for n, b := range files {
			fs[n] = b
		}
		fs[identity.CAStateFile] = sb
		b, _ := json.Marshal(fs)
		return b
	}
	for _, b := range [][]byte{rec, other, foreign,
		variant("keyFile", "../ca.json"), variant("keyFile", ""), variant("trustDomain", "x"), variant("active", "junk"),
		variant("previous", []map[string]any{{"cert": st["active"], "until": "2030-01-01T00:00:00Z"}}),
		variant("previous", []map[string]any{{"cert": "", "until": "x"}}),
		[]byte(`{"ca.json":"e30=","../x":""}`), []byte(`{"ca.json":"e30=","` + strings.Repeat("z", 250) + `":""}`), []byte(`{"":""}`), []byte(`{"a\u0000b":""}`), []byte(`{}`), []byte(`null`), []byte(`[`),
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		err := writeCARecord(dir, "", b)
		if err != nil {
			if now, rerr := readCAFiles(dir); rerr != nil || !bytes.Equal(now, rec) {
				t.Fatalf("refused record %q (%v) changed the CA dir (%v)", b, err, rerr)
			}
			return
		}
		defer resetCADir(t, dir, rec)
		if _, err := identity.OpenCA(identity.CAConfig{Dir: dir}); err != nil {
			t.Fatalf("record %q taken, but the CA written does not open: %v", b, err)
		}
	})
}
