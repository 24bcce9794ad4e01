package agent

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// damagedKeyStateDir is the state dir of a joined node s1/n1 (key,
// certificate, trust.json) whose trust.json has gossip key text key (a
// JSON value) in place of the one the control plane sent.
func damagedKeyStateDir(t *testing.T, key string) string {
	ca, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	src, err := ca.NodeSource("s1", "n1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kb, err := identity.EncodeKeyPEM(src.SVID().PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	tr, _ := json.Marshal(&wire.Trust{TrustDomain: "fogmesh.local", Bundles: map[string][][]byte{"fogmesh.local": identity.DERs(ca.Roots())},
		GossipKey: bytes.Repeat([]byte{7}, 32)})
	tr = bytes.Replace(tr, []byte(`"gossipKey":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="`), []byte(`"gossipKey":`+key), 1)
	for name, b := range map[string][]byte{nodeKeyFile: kb, nodeCertFile: identity.EncodeCertificatesPEM(src.SVID().Certificates...), trustFile: tr} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestTrustFileDamagedGossipKey: a trust.json whose gossip key is damaged
// (not 16, 24 or 32 bytes; not base64) keeps the rest of the trust: a node
// without a join token still starts with gossip off. With gossip on it
// does not start, with an error saying the key is unusable: its gossip
// would otherwise run unencrypted in a mesh that encrypts it. Before, the
// whole trust.json was refused and the node could not start without a
// token either way.
func TestTrustFileDamagedGossipKey(t *testing.T) {
	for _, key := range []string{`"c2hvcnQ="`, `"not base64!"`, `7`} {
		cfg := agentConfig(agentOpts{name: "n1", site: "s1", region: "r1", vipOctet: 98})
		cfg.Insecure, cfg.Control, cfg.StateDir = false, []string{"127.74.0.1:1"}, damagedKeyStateDir(t, key)
		cfg.MeshAddr, cfg.DNSAddr, cfg.AdminAddr, cfg.WorkloadAPISocket = "127.74.0.1:0", "127.74.0.1:0", "127.74.0.1:0", "off"
		a, err := New(cfg)
		if err != nil {
			t.Errorf("gossip key %s, gossip off: %v", key, err)
		} else {
			if a.ident.td.Name() != "fogmesh.local" || a.ident.id.String() != "spiffe://fogmesh.local/site/s1/node/n1" || a.ident.gossipKey != nil {
				t.Errorf("gossip key %s: started as %s of %s, holding a gossip key of %d bytes", key, a.ident.id, a.ident.td, len(a.ident.gossipKey))
			}
			a.Close()
		}
		cfg.GossipAddr = "127.74.0.1:0"
		a, err = New(cfg)
		if err == nil {
			a.Close()
			t.Errorf("gossip key %s, gossip on: started (gossip without the mesh's key)", key)
		} else if !strings.Contains(err.Error(), "gossip key") {
			t.Errorf("gossip key %s, gossip on: %v, want an error about the gossip key", key, err)
		}
	}
	// The state dir as saved starts with gossip on, encrypted.
	cfg := agentConfig(agentOpts{name: "n1", site: "s1", region: "r1", vipOctet: 98})
	cfg.Insecure, cfg.Control, cfg.StateDir = false, []string{"127.74.0.1:1"}, damagedKeyStateDir(t, `"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="`)
	cfg.MeshAddr, cfg.DNSAddr, cfg.AdminAddr, cfg.WorkloadAPISocket, cfg.GossipAddr = "127.74.0.1:0", "127.74.0.1:0", "127.74.0.1:0", "off", "127.74.0.1:0"
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("the trust.json saved, gossip on: %v", err)
	}
	defer a.Close()
	if !bytes.Equal(a.ident.gossipKey, bytes.Repeat([]byte{7}, 32)) || a.gossip == nil {
		t.Errorf("the trust.json saved: gossip key %x, gossip running: %v", a.ident.gossipKey, a.gossip != nil)
	}
}

// TestTrustSavedAsRun: what applyTrust saves is what the agent runs with,
// so a restart starts the same way. A node gossiping without a key that is
// sent a bad one saves no key (it saved the bad one, and then could not
// restart with gossip on); a node holding a key that is sent a trust
// without one keeps it in the file (the file lost it, and the restart
// gossiped unencrypted); revoked entries it dropped are not saved.
func TestTrustSavedAsRun(t *testing.T) {
	start := func(dir string) *Agent {
		t.Helper()
		cfg := agentConfig(agentOpts{name: "n1", site: "s1", region: "r1", vipOctet: 98})
		cfg.Insecure, cfg.Control, cfg.StateDir = false, []string{"127.74.0.1:1"}, dir
		cfg.MeshAddr, cfg.DNSAddr, cfg.AdminAddr, cfg.WorkloadAPISocket, cfg.GossipAddr = "127.74.0.1:0", "127.74.0.1:0", "127.74.0.1:0", "off", "127.74.0.1:0"
		a, err := New(cfg)
		if err != nil {
			t.Fatalf("start: %v", err)
		}
		return a
	}
	key := bytes.Repeat([]byte{7}, 32)
	for _, tc := range []struct {
		name     string
		held     string // trust.json's gossip key at start (JSON)
		sent     []byte // the next trust's key
		wantHeld []byte
	}{
		{"none held, a bad one sent", `""`, []byte("short"), nil},
		{"one held, none sent", `"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="`, nil, key},
		{"one held, a bad one sent", `"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="`, []byte("short"), key},
	} {
		dir := damagedKeyStateDir(t, tc.held)
		saved, err := os.ReadFile(filepath.Join(dir, trustFile))
		if err != nil {
			t.Fatal(err)
		}
		tr, _, err := readTrust(saved)
		if err != nil {
			t.Fatal(err)
		}
		tr.GossipKey, tr.Revoked = tc.sent, []string{"spiffe://fogmesh.local/site/s1/node/gone", "not an id"}
		a := start(dir)
		if err := a.applyTrust(&tr, true); err != nil {
			t.Fatalf("%s: applyTrust: %v", tc.name, err)
		}
		a.Close()
		a = start(dir) // with gossip on, as it ran
		if !bytes.Equal(a.ident.gossipKey, tc.wantHeld) {
			t.Errorf("%s: restarted holding gossip key %x, want %x", tc.name, a.ident.gossipKey, tc.wantHeld)
		}
		a.Close()
		b, err := os.ReadFile(filepath.Join(dir, trustFile))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte("not an id")) || !bytes.Contains(b, []byte("node/gone")) {
			t.Errorf("%s: trust.json's revoked entries: %s", tc.name, b)
		}
	}
}
