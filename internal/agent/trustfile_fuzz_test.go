package agent

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/svid"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// trustSeed is a trust.json as an agent saves it: the own roots, a
// federated bundle, a revoked node and the gossip key.
func trustSeed(t testing.TB) []byte {
	ca, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	fed, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir(), TrustDomain: "other.example"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.MarshalIndent(&wire.Trust{TrustDomain: "fogmesh.local",
		Bundles: map[string][][]byte{"fogmesh.local": identity.DERs(ca.Roots()), "other.example": identity.DERs(fed.Roots())},
		Revoked: []string{"spiffe://fogmesh.local/site/s1/node/gone"}, GossipKey: bytes.Repeat([]byte{7}, 32)}, "", " ")
	return b
}

// TestTrustBadGossipKeyDropped: a trust document whose gossip key
// memberlist does not take (not 16, 24 or 32 bytes) applies without it:
// the agent keeps the key it holds, and saves that one with the rest.
// Before, the whole document was refused (and before that, the key was
// kept and saved, and refused by the gossip at the next start).
func TestTrustBadGossipKeyDropped(t *testing.T) {
	var tr wire.Trust
	if err := json.Unmarshal(trustSeed(t), &tr); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	a := &Agent{cfg: Config{StateDir: dir}, ident: &nodeIdentity{src: identity.NewSource()}, svids: svid.NewStore(slog.New(slog.DiscardHandler)), log: slog.New(slog.DiscardHandler)}
	if err := a.applyTrust(&tr, false); err != nil {
		t.Fatalf("a good trust document: %v", err)
	}
	for _, n := range []int{5, 31, 64} {
		bad := tr
		bad.GossipKey = bytes.Repeat([]byte{1}, n)
		bad.Revoked = []string{"spiffe://fogmesh.local/site/s1/node/other"}
		if err := a.applyTrust(&bad, true); err != nil {
			t.Errorf("gossip key of %d bytes: %v, want the key dropped", n, err)
		}
		if !bytes.Equal(a.ident.gossipKey, tr.GossipKey) || a.ident.gossipKeyErr == nil {
			t.Errorf("gossip key of %d bytes: the agent holds a key of %d bytes (dropped: %v)", n, len(a.ident.gossipKey), a.ident.gossipKeyErr)
		}
		if !a.ident.src.Denied(bad.Revoked[0]) {
			t.Errorf("gossip key of %d bytes: the rest of the trust not applied", n)
		}
		saved, _, err := readTrust(mustReadFile(t, filepath.Join(dir, trustFile)))
		if err != nil || !bytes.Equal(saved.GossipKey, tr.GossipKey) {
			t.Errorf("gossip key of %d bytes: saved with a key of %d bytes (%v)", n, len(saved.GossipKey), err)
		}
	}
}

func mustReadFile(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTrustBundleNameAsWritten: a bundle is taken only under its trust
// domain's name as written. Before, a bundle named "" passed (it parses as
// the default trust domain), so the agent held two bundles for its own
// trust domain and verified with whichever of them came last in map order.
func TestTrustBundleNameAsWritten(t *testing.T) {
	var tr wire.Trust
	if err := json.Unmarshal(trustSeed(t), &tr); err != nil {
		t.Fatal(err)
	}
	tr.Bundles[""] = tr.Bundles["other.example"]
	if _, _, err := checkTrust(&tr, spiffeid.TrustDomain{}); err == nil {
		t.Fatal(`a bundle named "" taken beside the own trust domain's`)
	}
}

// FuzzTrustFile: trust.json, read back at start (and each trust message
// the agent saves as it), is applied only as a whole valid document: its
// trust domain with roots, parsed bundles (a gossip key memberlist does
// not take is dropped on its own, checkGossipKey); what is
// taken saves (as saveJSON writes it) and reads back to the same trust;
// a document of another trust domain than the node's is refused.
func FuzzTrustFile(f *testing.F) {
	seed := trustSeed(f)
	f.Add(seed)
	var tr wire.Trust
	json.Unmarshal(seed, &tr)
	for _, mut := range []func(t *wire.Trust){
		func(t *wire.Trust) { t.GossipKey = []byte("short") },
		func(t *wire.Trust) { t.TrustDomain = "" },
		func(t *wire.Trust) { t.TrustDomain = "Fogmesh.Local" },
		func(t *wire.Trust) { t.Bundles["bad td!"] = t.Bundles["fogmesh.local"] },
		func(t *wire.Trust) { t.Bundles[""] = t.Bundles["other.example"] },
		func(t *wire.Trust) { t.Bundles["fogmesh.local"] = [][]byte{{0x30, 0x03, 1, 2, 3}} },
		func(t *wire.Trust) { t.Bundles["fogmesh.local"] = nil },
		func(t *wire.Trust) { t.Revoked = []string{"", "spiffe://fogmesh.local/a#b", "x\ny"} },
	} {
		c := tr
		c.Bundles = map[string][][]byte{}
		for k, v := range tr.Bundles {
			c.Bundles[k] = v
		}
		mut(&c)
		b, _ := json.Marshal(&c)
		f.Add(b)
	}
	f.Add([]byte(`{"trustDomain":"fogmesh.local","bundles":{"fogmesh.local":[]}}`))
	f.Add([]byte(`{"trustDomain":"fogmesh.local","bundles":null,"gossipKey":"AAAA"}`))
	f.Add([]byte(`{`))
	f.Add([]byte(`null`))
	other := spiffeid.RequireTrustDomainFromString("other.example")
	f.Fuzz(func(t *testing.T, b []byte) {
		var tr wire.Trust
		if json.Unmarshal(b, &tr) != nil {
			return
		}
		td, bundles, err := checkTrust(&tr, spiffeid.TrustDomain{})
		if err != nil {
			return
		}
		if td.Name() != tr.TrustDomain || len(tr.Bundles[td.Name()]) == 0 || len(bundles) != len(tr.Bundles) {
			t.Fatalf("trust of %q taken with %d bundles (%d roots of its own)", tr.TrustDomain, len(bundles), len(tr.Bundles[td.Name()]))
		}
		if n := len(tr.GossipKey); (checkGossipKey(tr.GossipKey) == nil) != (n == 0 || n == 16 || n == 24 || n == 32) {
			t.Fatalf("gossip key of %d bytes: %v", n, checkGossipKey(tr.GossipKey))
		}
		seen := map[string]bool{}
		for _, bd := range bundles {
			if n := bd.TrustDomain().Name(); seen[n] {
				t.Fatalf("two bundles for trust domain %s taken", n)
			} else {
				seen[n] = true
			}
		}
		if td != other {
			if _, _, err := checkTrust(&tr, other); err == nil {
				t.Fatalf("trust of %s taken by a node of %s", td, other)
			}
		}
		saved, err := json.MarshalIndent(&tr, "", " ")
		if err != nil {
			t.Fatal(err)
		}
		var back wire.Trust
		if err := json.Unmarshal(saved, &back); err != nil {
			t.Fatalf("saved trust does not read back: %v", err)
		}
		td2, bundles2, err := checkTrust(&back, td)
		if err != nil || td2 != td || len(bundles2) != len(bundles) || !bytes.Equal(back.GossipKey, tr.GossipKey) ||
			strings.Join(back.Revoked, "\n") != strings.Join(tr.Revoked, "\n") {
			t.Fatalf("saved trust reads back otherwise: %v", err)
		}
	})
}

// TestTrustRevokedCanonical: the agent takes a revoked entry only as a
// SPIFFE ID written canonically (identity.CanonicalIDs, as a joined relay
// does): another entry is dropped with a warning and the rest of the trust
// applies. Before, every entry was taken as it came.
func TestTrustRevokedCanonical(t *testing.T) {
	var tr wire.Trust
	if err := json.Unmarshal(trustSeed(t), &tr); err != nil {
		t.Fatal(err)
	}
	good := tr.Revoked[0]
	tr.Revoked = append(tr.Revoked, "", good+"#x", "SPIFFE://fogmesh.local/site/s1/node/gone")
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	a := &Agent{ident: &nodeIdentity{src: identity.NewSource()}, svids: svid.NewStore(log), log: log}
	if err := a.applyTrust(&tr, false); err != nil {
		t.Fatalf("trust with damaged revoked entries: %v", err)
	}
	for _, s := range tr.Revoked {
		if a.ident.src.Denied(s) != (s == good) {
			t.Errorf("%q denied: %v", s, a.ident.src.Denied(s))
		}
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), `gone#x`) {
		t.Errorf("no warning naming the dropped entries: %s", logs.String())
	}
}
