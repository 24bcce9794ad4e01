package relay

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestMemberTrustBundleNameAsWritten: a joined relay takes a bundle only
// under its trust domain's name as written. Before, a bundle named ""
// passed (it parses as the default trust domain): the relay held two
// bundles for its own trust domain and verified with whichever came last
// in map order.
func TestMemberTrustBundleNameAsWritten(t *testing.T) {
	ca, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	other, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	tr := wire.Trust{TrustDomain: "fogmesh.local", Bundles: map[string][][]byte{
		"fogmesh.local": identity.DERs(ca.Roots()), "": identity.DERs(other.Roots())}}
	m := &Member{cfg: MemberConfig{StateDir: t.TempDir()}, log: slog.New(slog.DiscardHandler), src: identity.NewSource()}
	if err := m.applyTrust(&tr, nil, false); err == nil {
		t.Fatal(`a bundle named "" taken beside the own trust domain's`)
	}
	delete(tr.Bundles, "")
	if err := m.applyTrust(&tr, nil, false); err != nil {
		t.Fatalf("the trust without it: %v", err)
	}
}

// FuzzMemberTrustFile: a joined relay's trust.json (read back at start,
// and each trust message it saves as it) applies only whole and valid:
// its trust domain with roots, each bundle parsed; what applies saves
// (without the gossip key, never on a relay's disk, and with the revoked
// IDs as applied) and applies again, from the file, to the same trust
// domain, bundles and deny list.
func FuzzMemberTrustFile(f *testing.F) {
	ca, err := identity.OpenCA(identity.CAConfig{Dir: f.TempDir()})
	if err != nil {
		f.Fatal(err)
	}
	good := wire.Trust{TrustDomain: "fogmesh.local", Bundles: map[string][][]byte{"fogmesh.local": identity.DERs(ca.Roots())},
		Revoked: []string{"spiffe://fogmesh.local/site/a/node/x"}, GossipKey: bytes.Repeat([]byte{1}, 32)}
	b, _ := json.Marshal(&good)
	f.Add(b)
	f.Add(bytes.Replace(b, []byte(`"bundles":{`), []byte(`"bundles":{"bad td!":[],`), 1))
	f.Add(bytes.Replace(b, []byte(`"bundles":{`), []byte(`"bundles":{"other.example":["MAMBAgM="],`), 1))
	f.Add(bytes.Replace(b, []byte(`"bundles":{`), []byte(`"bundles":{"":["MAMBAgM="],`), 1))
	f.Add(bytes.Replace(b, []byte(`"revoked":[`), []byte(`"revoked":["spiffe://fogmesh.local/site/a/node/../node/b",`), 1))
	f.Add([]byte(`{"trustDomain":"fogmesh.local","bundles":{"fogmesh.local":[]}}`))
	f.Add([]byte(`{"trustDomain":"","bundles":null}`))
	f.Add([]byte(`{`))
	dir := f.TempDir()
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, b []byte) {
		var tr wire.Trust
		if json.Unmarshal(b, &tr) != nil {
			return
		}
		m := &Member{cfg: MemberConfig{StateDir: dir}, log: log, src: identity.NewSource()}
		os.Remove(filepath.Join(dir, MemberTrustFile))
		if err := m.applyTrust(&tr, nil, true); err != nil {
			if _, err := os.Stat(filepath.Join(dir, MemberTrustFile)); err == nil {
				t.Fatalf("refused trust %q saved", b)
			}
			return
		}
		if m.td.Name() != tr.TrustDomain || len(tr.Bundles[m.td.Name()]) == 0 {
			t.Fatalf("trust %q applied as %s", b, m.td)
		}
		for name, ders := range tr.Bundles {
			if td, err := identity.ParseTrustDomain(name); err != nil || td.Name() != name {
				t.Fatalf("trust %q applied with bundle %q: %v", b, name, err)
			}
			if _, err := identity.ParseDERs(ders); err != nil {
				t.Fatalf("trust %q applied with bundle %q: %v", b, name, err)
			}
		}
		saved, err := os.ReadFile(filepath.Join(dir, MemberTrustFile))
		if err != nil {
			t.Fatal(err)
		}
		var back wire.Trust
		if err := json.Unmarshal(saved, &back); err != nil {
			t.Fatalf("saved trust does not read: %v", err)
		}
		if len(back.GossipKey) != 0 {
			t.Fatal("gossip key on the relay's disk")
		}
		if !slices.Equal(back.Revoked, m.denied) {
			t.Fatalf("saved revoked %q, applied %q", back.Revoked, m.denied)
		}
		m2 := &Member{cfg: MemberConfig{StateDir: dir}, log: log, src: identity.NewSource()}
		if err := m2.applyTrust(&back, nil, false); err != nil || m2.td != m.td || !slices.Equal(m2.denied, m.denied) ||
			m2.src.Bundles().Len() != m.src.Bundles().Len() {
			t.Fatalf("saved trust applies otherwise: %v", err)
		}
	})
}

// TestMemberTrustRevokedCanonical: a joined relay takes a revoked entry
// only as a SPIFFE ID written canonically (a deny list matches a peer by
// its ID's string: another spelling denies no one), as its deny file's
// trust JSON is read (ParseDenyList); another entry is dropped with a
// warning naming it, and the rest of the trust applies. Before, every
// entry was taken as it came.
func TestMemberTrustRevokedCanonical(t *testing.T) {
	ca, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	good := "spiffe://fogmesh.local/site/a/node/x"
	tr := wire.Trust{TrustDomain: "fogmesh.local", Bundles: map[string][][]byte{"fogmesh.local": identity.DERs(ca.Roots())},
		Revoked: []string{"", good, "spiffe://fogmesh.local/site/a/node/y#z", "SPIFFE://fogmesh.local/site/a/node/y", "x\ny"}}
	var logs bytes.Buffer
	m := &Member{cfg: MemberConfig{StateDir: t.TempDir()}, log: slog.New(slog.NewTextHandler(&logs, nil)), src: identity.NewSource()}
	if err := m.applyTrust(&tr, nil, false); err != nil {
		t.Fatalf("trust with damaged revoked entries: %v", err)
	}
	if !slices.Equal(m.Denied(), []string{good}) {
		t.Errorf("deny list %q, want only %q", m.Denied(), good)
	}
	if !m.src.Denied(good) || m.src.Bundles().Len() != 1 {
		t.Errorf("the rest of the trust not applied (%s denied: %v)", good, m.src.Denied(good))
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), `node/y#z`) {
		t.Errorf("no warning naming the dropped entries: %s", logs.String())
	}
}
