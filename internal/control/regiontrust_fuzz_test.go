package control

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// regionFixture is a regional control plane's state dir (joined to a
// global plane, then stopped) and its trust.json as saved.
type regionFixture struct {
	dir   string // StateDir/region
	trust []byte
}

// makeRegionFixture makes the fixture in dir: a copy of the region dir of
// a regional plane joined to a global plane. A copy, because the planes
// run until t ends and the regional one saves every trust message it gets
// over its own trust.json (a test writing there raced with it).
func makeRegionFixture(t *testing.T, dir string) regionFixture {
	g := startSecure(t)
	tok, _ := g.CreateToken(identity.TokenRegion, "east", "", time.Minute)
	live := t.TempDir()
	if _, err := startRegional(t, live, "east", g.SyncAddr(), tok); err != nil {
		t.Fatal(err)
	}
	rd := filepath.Join(dir, regionDirName)
	copyDir(t, filepath.Join(live, regionDirName), rd)
	b, err := os.ReadFile(filepath.Join(rd, regionTrustFile))
	if err != nil {
		t.Fatal(err)
	}
	return regionFixture{dir: rd, trust: b}
}

// copyDir copies the files of directory src (no subdirectories) into dst,
// each with its mode (the region's key files must stay 0600).
func copyDir(t *testing.T, src, dst string) {
	des, err := os.ReadDir(src)
	if err == nil {
		err = os.MkdirAll(dst, 0o700)
	}
	for _, de := range des {
		if err != nil {
			break
		}
		var fi os.FileInfo
		var b []byte
		if fi, err = de.Info(); err == nil && fi.Mode().IsRegular() {
			if b, err = os.ReadFile(filepath.Join(src, de.Name())); err == nil {
				err = os.WriteFile(filepath.Join(dst, de.Name()), b, fi.Mode().Perm())
			}
		}
	}
	if err != nil {
		t.Fatal(err)
	}
}

// loadRegionTrust loads the fixture's region identity with trust.json b.
func loadRegionTrust(t *testing.T, fx regionFixture, b []byte) (*regional, error) {
	if err := os.WriteFile(filepath.Join(fx.dir, regionTrustFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	td, _ := identity.ParseTrustDomain("")
	r := &regional{s: &Server{log: slog.New(slog.DiscardHandler)}, name: "east", dir: fx.dir, src: identity.NewSource(), td: td}
	return r, r.load()
}

// withBundle is trust.json b with bundle name set to ders.
func withBundle(t *testing.T, b []byte, name string, ders [][]byte) []byte {
	var tr wire.Trust
	if err := json.Unmarshal(b, &tr); err != nil {
		t.Fatal(err)
	}
	tr.Bundles[name] = ders
	out, _ := json.Marshal(&tr)
	return out
}

// TestRegionTrustFileBadBundleDropped: a regional plane's trust.json (the
// global plane's last trust document, read back at start) with a
// federated bundle agents cannot take loads without that bundle (logged).
// Before, such a bundle went into the trust document pushed to the
// region's agents (mergeTrust), each of which refuses such a document
// whole, so none got trust updates (a root rotation, revocations) any
// more; refusing the file instead would keep the plane from starting. Bad
// own roots are still an error.
func TestRegionTrustFileBadBundleDropped(t *testing.T) {
	fx := makeRegionFixture(t, t.TempDir())
	if _, err := loadRegionTrust(t, fx, fx.trust); err != nil {
		t.Fatalf("the trust.json saved: %v", err)
	}
	for name, c := range map[string]struct {
		bundle string
		ders   [][]byte
	}{
		"bad DER":        {"other.example", [][]byte{{0x30, 0x03, 1, 2, 3}}},
		"bad td":         {"Not A Domain!", nil},
		"no certificate": {"other.example", [][]byte{}},
		"default's name": {"", nil},
	} {
		r, err := loadRegionTrust(t, fx, withBundle(t, fx.trust, c.bundle, c.ders))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if _, ok := r.trust.Bundles[c.bundle]; ok {
			t.Errorf("%s: bundle %q kept", name, c.bundle)
		}
		if len(r.trust.Bundles["fogmesh.local"]) == 0 {
			t.Errorf("%s: own roots lost", name)
		}
	}
	if _, err := loadRegionTrust(t, fx, withBundle(t, fx.trust, "fogmesh.local", [][]byte{{0x30, 0x03, 1, 2, 3}})); err == nil {
		t.Error("bad own roots loaded")
	}
}

// FuzzRegionTrustFile: a regional plane's trust.json loads only when its
// own roots verify the region's intermediate, and what it then holds is
// only bundles an agent takes (a trust domain name as written, parsed
// roots): it is pushed to the region's agents (mergeTrust); otherwise it
// is an error, never a panic.
func FuzzRegionTrustFile(f *testing.F) {
	f.Add([]byte(`{"trustDomain":"fogmesh.local","bundles":{"fogmesh.local":["MAMBAgM="]}}`))
	f.Add([]byte(`{"trustDomain":"other.example","bundles":{}}`))
	f.Add([]byte(`{"trustDomain":"fogmesh.local","bundles":{"fogmesh.local":[]},"revoked":[""]}`))
	f.Add([]byte(`{`))
	f.Add([]byte(`null`))
	dir := f.TempDir()
	var fx regionFixture
	f.Fuzz(func(t *testing.T, b []byte) {
		if fx.dir == "" { // the saved file and its variants, once the fixture exists
			fx = makeRegionFixture(t, dir)
			for _, s := range [][]byte{fx.trust,
				withBundle(t, fx.trust, "other.example", [][]byte{{0x30, 0x03, 1, 2, 3}}),
				withBundle(t, fx.trust, "Not A Domain!", nil)} {
				checkRegionTrust(t, fx, s)
			}
		}
		checkRegionTrust(t, fx, b)
	})
}

func checkRegionTrust(t *testing.T, fx regionFixture, b []byte) {
	r, err := loadRegionTrust(t, fx, b)
	if err != nil {
		return
	}
	for name, ders := range r.trust.Bundles {
		if td, err := identity.ParseTrustDomain(name); err != nil || td.Name() != name {
			t.Fatalf("trust.json %q loaded with bundle %q: %v", b, name, err)
		}
		if _, err := identity.ParseDERs(ders); err != nil {
			t.Fatalf("trust.json %q loaded with bundle %q: %v", b, name, err)
		}
	}
}
