package control

import (
	"encoding/json"
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

// makeRegionFixture makes the fixture in dir (the servers that made it
// stop with t; dir stays).
func makeRegionFixture(t *testing.T, dir string) regionFixture {
	g := startSecure(t)
	tok, _ := g.CreateToken(identity.TokenRegion, "east", "", time.Minute)
	if _, err := startRegional(t, dir, "east", g.SyncAddr(), tok); err != nil {
		t.Fatal(err)
	}
	rd := filepath.Join(dir, regionDirName)
	b, err := os.ReadFile(filepath.Join(rd, regionTrustFile))
	if err != nil {
		t.Fatal(err)
	}
	return regionFixture{dir: rd, trust: b}
}

// loadRegionTrust loads the fixture's region identity with trust.json b.
func loadRegionTrust(t *testing.T, fx regionFixture, b []byte) (*regional, error) {
	if err := os.WriteFile(filepath.Join(fx.dir, regionTrustFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	td, _ := identity.ParseTrustDomain("")
	r := &regional{s: &Server{}, name: "east", dir: fx.dir, src: identity.NewSource(), td: td}
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

// TestRegionTrustFileBadBundleRefused: a regional plane's trust.json (the
// global plane's last trust document, read back at start) with a bundle
// agents cannot take is refused at load with an error naming it. Before,
// only the own roots were checked: the bad bundle went into the trust
// document pushed to the region's agents (mergeTrust), each of which
// refuses such a document whole, so none got trust updates (a root
// rotation, revocations) any more.
func TestRegionTrustFileBadBundleRefused(t *testing.T) {
	fx := makeRegionFixture(t, t.TempDir())
	if _, err := loadRegionTrust(t, fx, fx.trust); err != nil {
		t.Fatalf("the trust.json saved: %v", err)
	}
	for name, b := range map[string][]byte{
		"bad DER":        withBundle(t, fx.trust, "other.example", [][]byte{{0x30, 0x03, 1, 2, 3}}),
		"bad td":         withBundle(t, fx.trust, "Not A Domain!", nil),
		"no certificate": withBundle(t, fx.trust, "other.example", [][]byte{}),
	} {
		if _, err := loadRegionTrust(t, fx, b); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
}

// FuzzRegionTrustFile: a regional plane's trust.json loads only when its
// own roots verify the region's intermediate and every bundle in it is
// one an agent takes (a trust domain name, parsed roots): what it holds
// is pushed to the region's agents (mergeTrust); otherwise it is an
// error, never a panic.
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
		if _, err := identity.ParseTrustDomain(name); err != nil {
			t.Fatalf("trust.json %q loaded with bundle %q: %v", b, name, err)
		}
		if _, err := identity.ParseDERs(ders); err != nil {
			t.Fatalf("trust.json %q loaded with bundle %q: %v", b, name, err)
		}
	}
}
