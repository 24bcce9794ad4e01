package svid

import (
	"bytes"
	"crypto"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
)

// FuzzPersist: svids.json, read back when the agent starts, loads only
// SVIDs whose every chain is for its ID and its key and not all expired
// (any other entry skipped; an unreadable file an error, never a panic);
// what loaded saves and loads again to the same SVIDs.
func FuzzPersist(f *testing.F) {
	ca, err := identity.OpenCA(identity.CAConfig{Dir: f.TempDir()})
	if err != nil {
		f.Fatal(err)
	}
	key, _ := identity.NewKey()
	der, _ := identity.NewCSR(key)
	csr, _ := identity.ParseCSR(der)
	var chains [][][]byte
	for range 2 {
		ch, err := ca.SignWorkloadCSR(csr, "shop", "orders", time.Hour)
		if err != nil {
			f.Fatal(err)
		}
		chains = append(chains, identity.DERs(ch))
	}
	id := "spiffe://fogmesh.local/ns/shop/sa/orders"
	k, _ := identity.EncodeKeyPEM(key)
	other, _ := identity.NewKey()
	ko, _ := identity.EncodeKeyPEM(other)
	for _, st := range []stateFile{
		{SVIDs: []stateSVID{{ID: id, Key: string(k), Chains: chains}}},
		{SVIDs: []stateSVID{{ID: id, Key: string(k), Chains: chains[:1]}, {ID: id, Key: string(k), Chains: chains[1:]}}},
		{SVIDs: []stateSVID{{ID: id + "x", Key: string(k), Chains: chains}}},
		{SVIDs: []stateSVID{{ID: id, Key: string(ko), Chains: chains}}},
		{SVIDs: []stateSVID{{ID: id, Key: string(k), Chains: [][][]byte{{}}}}},
		{SVIDs: []stateSVID{{ID: id, Key: string(k), Chains: [][][]byte{{chains[0][0][:40]}}}}},
		{SVIDs: []stateSVID{{ID: id, Key: "", Chains: nil}}},
	} {
		b, _ := json.Marshal(&st)
		f.Add(b)
	}
	f.Add([]byte(`{"svids":null}`))
	f.Add([]byte(`{not json`))
	f.Add([]byte{})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(dir, "svids.json")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		s := NewStore(quiet())
		if err := s.Persist(path); err != nil {
			return
		}
		now := time.Now()
		for id, h := range s.byID {
			if len(h.chains) == 0 || !h.end().After(now) {
				t.Fatalf("%s: loaded with %d chains ending %s", id, len(h.chains), h.end())
			}
			for _, ch := range h.chains {
				if len(ch[0].URIs) != 1 || ch[0].URIs[0].String() != id ||
					!h.key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(ch[0].PublicKey) {
					t.Fatalf("%s: loaded with a chain for another identity or key", id)
				}
			}
		}
		s.mu.Lock()
		err := s.saveLocked()
		s.mu.Unlock()
		if err != nil {
			t.Fatalf("what loaded does not save: %v", err)
		}
		r := NewStore(quiet())
		if err := r.Persist(path); err != nil {
			t.Fatalf("what saved does not load: %v", err)
		}
		if len(r.byID) != len(s.byID) {
			t.Fatalf("%d SVIDs saved, %d loaded again", len(s.byID), len(r.byID))
		}
		for id, h := range s.byID {
			g := r.byID[id]
			if g == nil || len(g.chains) != len(h.chains) {
				t.Fatalf("%s does not load again the same", id)
			}
			for i := range h.chains {
				if len(g.chains[i]) != len(h.chains[i]) || !bytes.Equal(g.chains[i][0].Raw, h.chains[i][0].Raw) {
					t.Fatalf("%s: chain %d does not load again the same", id, i)
				}
			}
		}
	})
}
