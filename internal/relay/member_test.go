package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestOpenMemberRefusals: what cannot work is a *ConfigError (exit 2)
// before any connection: no state dir or control plane, no certificate and
// no token, a token of another kind, a negative handshake bound. The key is made once, mode 0600.
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
		{"negative handshake bound", MemberConfig{StateDir: dir, Control: []string{"127.0.0.1:1"}, ControlHandshakeTimeout: -time.Second}, "controlHandshakeTimeout"},
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

// fakeControl is the control plane's side of relay streams, on a real
// loopback socket: each accepted stream is handed to the test.
type fakeControl struct {
	ln      net.Listener
	streams chan *tls.Conn
}

func newFakeControl(t *testing.T, ca *identity.CA) *fakeControl {
	t.Helper()
	key, _ := identity.NewKey()
	certs, err := ca.Sign(key.Public(), identity.ControlID(ca.TrustDomain()), identity.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svid, _ := identity.NewSVID(certs, key)
	src := identity.NewSource()
	src.SetSVID(svid)
	src.SetBundles(ca.Bundle())
	cfg := src.ServerConfig(func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if _, ok := identity.ParseRelayID(id); !ok {
			return fmt.Errorf("%s is not a relay", id)
		}
		return nil
	}, identity.ALPNRelay)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeControl{ln: ln, streams: make(chan *tls.Conn, 4)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(c, cfg)
			tc.SetDeadline(time.Now().Add(20 * time.Second))
			if tc.Handshake() != nil {
				c.Close()
				continue
			}
			f.streams <- tc
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return f
}

func (f *fakeControl) next(t *testing.T) *tls.Conn {
	t.Helper()
	select {
	case c := <-f.streams:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(20 * time.Second):
		t.Fatal("the relay opened no stream to the control plane")
		return nil
	}
}

// TestMemberRestartsRenewsAndRedials: a relay whose state dir holds a
// certificate needs no token; on its stream it applies the pushed trust
// document, asks for a renewal once past half-life and installs the
// answer; when the stream breaks it dials again and applies the deny list
// the new stream brings first.
func TestMemberRestartsRenewsAndRedials(t *testing.T) {
	// The CA's clock is an hour behind: the relay certificate it issues
	// (90 min) is past half-life now.
	past := func() time.Time { return time.Now().Add(-time.Hour) }
	ca, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir(), NodeTTL: 90 * time.Minute, Now: past})
	if err != nil {
		t.Fatal(err)
	}
	td := ca.TrustDomain()
	fc := newFakeControl(t, ca)
	dir, rid, first := memberStateDir(t, ca, "r1")
	trust := func(revoked ...string) *wire.Trust { return caTrust(ca, revoked...) }

	ms := metrics.NewSet()
	m, err := OpenMember(context.Background(), MemberConfig{StateDir: dir, Control: []string{fc.ln.Addr().String()}, Name: "r1", Metrics: ms})
	if err != nil {
		t.Fatal(err)
	}
	if m.ID() != rid || m.Certificate().SerialNumber.Cmp(first[0].SerialNumber) != 0 {
		t.Fatalf("loaded %s serial %s", m.ID(), m.Certificate().SerialNumber)
	}
	denied := make(chan []string, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx, func(ids []string) { denied <- ids }) }()
	defer func() { cancel(); <-done }()

	c := fc.next(t)
	if err := wire.Write(c, &wire.Message{Type: wire.TypeTrust, Trust: trust()}); err != nil {
		t.Fatal(err)
	}
	r := wire.NewReader(c)
	var renew *wire.Message
	for renew == nil {
		msg, err := r.Read()
		if err != nil {
			t.Fatalf("waiting for the renewal: %v", err)
		}
		if msg.Type == wire.TypeRenew {
			renew = msg
		}
	}
	csr, err := identity.ParseCSR(renew.CSR)
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := ca.SignRelayCSR(csr, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if err := wire.Write(c, &wire.Message{Type: wire.TypeCert, Certificates: identity.DERs(renewed)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the renewed certificate installed", func() bool {
		return m.Certificate().SerialNumber.Cmp(renewed[0].SerialNumber) == 0
	})
	// Saved and counted just after the certificate is in place: wait for
	// the count, which comes last.
	waitFor(t, "the renewal counted", func() bool {
		return strings.Contains(metricsText(ms), "fogmesh_relay_certificate_renewals_total 1")
	})
	if onDisk, _ := os.ReadFile(filepath.Join(dir, MemberCertFile)); string(onDisk) != string(identity.EncodeCertificatesPEM(renewed...)) {
		t.Fatal("renewed certificate not saved")
	}

	// The stream breaks; the relay dials again and the new stream's first
	// trust document carries a revocation.
	c.Close()
	x := "spiffe://" + td.Name() + "/site/s/node/x"
	c2 := fc.next(t)
	if err := wire.Write(c2, &wire.Message{Type: wire.TypeTrust, Trust: trust(x)}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(20 * time.Second)
	for {
		select {
		case ids := <-denied:
			if len(ids) == 1 && ids[0] == x {
				waitFor(t, "the connected gauge", func() bool {
					return strings.Contains(metricsText(ms), "fogmesh_relay_control_connected 1")
				})
				return
			}
		case <-deadline:
			t.Fatal("the revocation on the new stream was not applied")
		}
	}
}

// memberStateDir is the state directory of relay name, joined before to
// ca's trust domain: its key, its certificate and the trust document
// (without revocations). It returns the relay's ID and certificate.
func memberStateDir(t *testing.T, ca *identity.CA, name string) (string, spiffeid.ID, []*x509.Certificate) {
	t.Helper()
	dir := t.TempDir()
	key, _ := identity.NewKey()
	keyPEM, _ := identity.EncodeKeyPEM(key)
	rid, _ := identity.RelayID(ca.TrustDomain(), name)
	certs, err := ca.Sign(key.Public(), rid, identity.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(caTrust(ca))
	for file, data := range map[string][]byte{MemberKeyFile: keyPEM, MemberCertFile: identity.EncodeCertificatesPEM(certs...), MemberTrustFile: b} {
		if err := os.WriteFile(filepath.Join(dir, file), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir, rid, certs
}

// caTrust is the trust document of ca's trust domain revoking revoked.
func caTrust(ca *identity.CA, revoked ...string) *wire.Trust {
	td := ca.TrustDomain().Name()
	return &wire.Trust{TrustDomain: td, Bundles: map[string][][]byte{td: identity.DERs(ca.Roots())}, Revoked: revoked}
}

// TestMemberSavesRevokedAsApplied: a joined relay saves the revoked IDs
// it applies, not the entries CanonicalIDs drops: pushed a trust document
// whose revoked list holds a dot segment, an upper-case scheme and a
// trailing slash beside a canonical ID, it saves the canonical ID alone,
// and a restart from that file takes the same deny list without a
// warning. Before, the document was saved as it came, and every restart
// dropped the same entries again.
func TestMemberSavesRevokedAsApplied(t *testing.T) {
	ca, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	td := ca.TrustDomain().Name()
	fc := newFakeControl(t, ca)
	dir, _, _ := memberStateDir(t, ca, "r1")
	good := "spiffe://" + td + "/site/a/node/b"
	dropped := []string{"spiffe://" + td + "/site/a/node/../node/b", "SPIFFE://" + td + "/site/a/node/c", good + "/"}
	var logs testenv.Buffer
	cfg := MemberConfig{StateDir: dir, Control: []string{fc.ln.Addr().String()}, Name: "r1", Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	m, err := OpenMember(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	denied := make(chan []string, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx, func(ids []string) { denied <- ids }) }()
	defer func() { cancel(); <-done }()
	if err := wire.Write(fc.next(t), &wire.Message{Type: wire.TypeTrust, Trust: caTrust(ca, append(dropped, good)...)}); err != nil {
		t.Fatal(err)
	}
	select {
	case ids := <-denied:
		if !slices.Equal(ids, []string{good}) {
			t.Fatalf("applied deny list %q, want %q", ids, good)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the pushed trust was not applied")
	}
	// Saved just after the deny list is set: wait for the file.
	var saved wire.Trust
	waitFor(t, "the pushed trust saved", func() bool {
		b, err := os.ReadFile(filepath.Join(dir, MemberTrustFile))
		return err == nil && json.Unmarshal(b, &saved) == nil && len(saved.Revoked) > 0
	})
	if !slices.Equal(saved.Revoked, []string{good}) {
		t.Errorf("saved revoked %q, want only %q", saved.Revoked, good)
	}
	cancel()
	<-done

	var again testenv.Buffer
	cfg.Logger = slog.New(slog.NewTextHandler(&again, nil))
	m2, err := OpenMember(context.Background(), cfg)
	if err != nil {
		t.Fatalf("restart from the saved trust: %v", err)
	}
	if !slices.Equal(m2.Denied(), []string{good}) || !m2.Source().Denied(good) {
		t.Errorf("after the restart the deny list is %q, want %q", m2.Denied(), good)
	}
	if strings.Contains(again.String(), "dropped") {
		t.Errorf("the restart dropped saved entries: %s", again.String())
	}
}

func metricsText(ms *metrics.Set) string {
	var b strings.Builder
	ms.WritePrometheus(&b)
	return b.String()
}
