package relay

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestOpenMemberRefusals: what cannot work is a *ConfigError (exit 2)
// before any connection: no state dir or control plane, no certificate and
// no token, a token of another kind. The key is made once, mode 0600.
func TestOpenMemberRefusals(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pin := strings.Repeat("0", 64)
	join, _ := identity.NewToken(identity.TokenJoin, pin)
	for _, c := range []struct {
		name string
		cfg  MemberConfig
		want string
	}{
		{"no state dir", MemberConfig{Control: []string{"127.0.0.1:1"}}, "state directory"},
		{"no control", MemberConfig{StateDir: dir}, "control plane address"},
		{"no token", MemberConfig{StateDir: dir, Control: []string{"127.0.0.1:1"}}, "no usable relay certificate"},
		{"agent token", MemberConfig{StateDir: dir, Control: []string{"127.0.0.1:1"}, Name: "r1", JoinToken: join.String()}, "not a relay token"},
		{"malformed token", MemberConfig{StateDir: dir, Control: []string{"127.0.0.1:1"}, Name: "r1", JoinToken: "fmr1.x"}, "bad token"},
	} {
		_, err := OpenMember(ctx, c.cfg)
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a ConfigError naming %q", c.name, err, c.want)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, MemberKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	if _, err := os.Stat(filepath.Join(dir, MemberCertFile)); err == nil {
		t.Fatal("a certificate file appeared")
	}
}

// TestMemberApplyTrust: a trust document from another trust domain or
// without roots for its own is refused and changes nothing; a good one
// installs the deny list through setDenied and is saved without the
// gossip key.
func TestMemberApplyTrust(t *testing.T) {
	ca, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	td := ca.TrustDomain().Name()
	m := &Member{cfg: MemberConfig{StateDir: t.TempDir()}, src: identity.NewSource()}
	var got []string
	set := func(ids []string) { got = ids }
	good := &wire.Trust{TrustDomain: td, Bundles: map[string][][]byte{td: identity.DERs(ca.Roots())},
		Revoked: []string{"spiffe://" + td + "/site/s/node/x"}, GossipKey: make([]byte, 32)}
	if err := m.applyTrust(good, set, true); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != good.Revoked[0] || len(m.Denied()) != 1 {
		t.Fatalf("deny list %v / %v", got, m.Denied())
	}
	b, err := os.ReadFile(filepath.Join(m.cfg.StateDir, MemberTrustFile))
	if err != nil || strings.Contains(string(b), "gossipKey") {
		t.Fatalf("saved trust: %v %s", err, b)
	}
	got = nil
	for name, bad := range map[string]*wire.Trust{
		"other domain": {TrustDomain: "other.test", Bundles: map[string][][]byte{"other.test": identity.DERs(ca.Roots())}},
		"no roots":     {TrustDomain: td, Bundles: map[string][][]byte{}},
		"bad roots":    {TrustDomain: td, Bundles: map[string][][]byte{td: {[]byte("junk")}}},
		"no domain":    {},
	} {
		if err := m.applyTrust(bad, set, true); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if got != nil || len(m.Denied()) != 1 {
		t.Fatalf("a refused document changed the deny list: %v", got)
	}
}
