package control

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// loadRegionInfo opens the fixture's region identity (as a regional plane
// of region "east" does at start) with region.json b.
func loadRegionInfo(t *testing.T, fx regionFixture, b []byte) (*regional, error) {
	if err := os.WriteFile(filepath.Join(fx.dir, regionInfoFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	s := &Server{cfg: Config{StateDir: filepath.Dir(fx.dir), Mode: ModeRegional, Region: "east"}, log: slog.New(slog.DiscardHandler)}
	_, r, err := openRegional(s)
	return r, err
}

// TestRegionInfoFileRefused: a region.json that does not name the region
// and its trust domain as written is an error naming the file. Before, a
// region.json without a trust domain (or with "") loaded as the default
// trust domain's, whatever the region's intermediate was for.
func TestRegionInfoFileRefused(t *testing.T) {
	fx := makeRegionFixture(t, t.TempDir())
	saved, err := os.ReadFile(filepath.Join(fx.dir, regionInfoFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := loadRegionInfo(t, fx, saved); err != nil {
		t.Fatalf("the region.json saved: %v", err)
	}
	for _, b := range []string{
		`{"region":"east"}`,
		`{"region":"east","trustDomain":""}`,
		`{"region":"east","trustDomain":"other.example"}`,
		`{"region":"west","trustDomain":"fogmesh.local"}`,
		`{"region":"east","trustDomain":"spiffe://fogmesh.local"}`,
		`null`,
		`{`,
	} {
		if _, err := loadRegionInfo(t, fx, []byte(b)); err == nil || !strings.Contains(err.Error(), "region") {
			t.Errorf("region.json %s: %v, want refused", b, err)
		}
	}
}

// FuzzRegionInfoFile: a regional plane's region.json (its region and
// trust domain, read at every start) opens the region's identity only
// when it names this region and the trust domain of its certificates as
// written; otherwise it is an error, never a panic or another domain.
func FuzzRegionInfoFile(f *testing.F) {
	f.Add([]byte(`{"region":"east","trustDomain":"fogmesh.local"}`))
	f.Add([]byte(`{"region":"east"}`))
	f.Add([]byte(`{"region":"east","trustDomain":"other.example"}`))
	f.Add([]byte(`{"region":"east","trustDomain":"FOGMESH.LOCAL"}`))
	f.Add([]byte(`{"REGION":"east","trustdomain":"fogmesh.local"}`))
	f.Add([]byte(`{"region":"east","trustDomain":"fogmesh.local"} {}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{`))
	dir := f.TempDir()
	var fx regionFixture
	f.Fuzz(func(t *testing.T, b []byte) {
		if fx.dir == "" {
			fx = makeRegionFixture(t, dir)
		}
		r, err := loadRegionInfo(t, fx, b)
		if err != nil {
			if !strings.Contains(err.Error(), "region") {
				t.Fatalf("region.json %q: error %q does not say it is the region's", b, err)
			}
			return
		}
		if r.td.Name() != "fogmesh.local" || r.ca == nil || r.ca.TrustDomain() != r.td {
			t.Fatalf("region.json %q opened trust domain %q", b, r.td.Name())
		}
		var info regionInfo
		if err := json.Unmarshal(b, &info); err != nil || info.TrustDomain != r.td.Name() || info.Region != "east" {
			t.Fatalf("region.json %q opened as region %q of %q (%v)", b, info.Region, info.TrustDomain, err)
		}
	})
}
