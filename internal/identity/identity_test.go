package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newCA(t *testing.T, dir string, clk *clock) *CA {
	t.Helper()
	cfg := CAConfig{Dir: dir}
	if clk != nil {
		cfg.Now = clk.now
	}
	ca, err := OpenCA(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// nodeSVID issues a node SVID the way an agent gets one: local key, CSR.
func nodeSVID(t *testing.T, ca *CA, site, node string) *x509svid.SVID {
	t.Helper()
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ca.SignNodeCSR(csr, site, node)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := NewSVID(certs, key)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

func TestCACreateReloadAndIssue(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir, nil)
	svid := nodeSVID(t, ca, "shop-1", "a")
	if got, want := svid.ID.String(), "spiffe://fogmesh.local/site/shop-1/node/a"; got != want {
		t.Fatalf("id %s, want %s", got, want)
	}
	leaf := svid.Certificates[0]
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d != DefaultNodeTTL+ClockSkew {
		t.Errorf("validity %v", d)
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.IsCA || leaf.Subject.CommonName != "" {
		t.Errorf("leaf: eku %v ca %v cn %q", leaf.ExtKeyUsage, leaf.IsCA, leaf.Subject.CommonName)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	// Key file is private.
	st, _ := os.ReadFile(filepath.Join(dir, "ca.json"))
	if strings.Contains(string(st), "PRIVATE") {
		t.Fatal("ca.json holds a private key")
	}
	keys, _ := filepath.Glob(filepath.Join(dir, "ca-key-*.pem"))
	if len(keys) != 1 {
		t.Fatalf("key files %v", keys)
	}
	if fi, _ := os.Stat(keys[0]); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", fi.Mode().Perm())
	}
	// Reload: same root.
	ca2 := newCA(t, dir, nil)
	if ca2.Pin() != ca.Pin() {
		t.Fatal("reloaded CA has another root")
	}
	// Another trust domain on the same dir is refused.
	if _, err := OpenCA(CAConfig{Dir: dir, TrustDomain: "other.example"}); err == nil || !strings.Contains(err.Error(), "cannot change") {
		t.Fatalf("td change: %v", err)
	}
	// Workload SVIDs.
	key, _ := NewKey()
	der, _ := NewCSR(key)
	csr, _ := ParseCSR(der)
	certs, err := ca.SignWorkloadCSR(csr, "demo", "hello", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := certs[0].URIs[0].String(); got != "spiffe://fogmesh.local/ns/demo/sa/hello" {
		t.Fatalf("workload id %s", got)
	}
	if d := certs[0].NotAfter.Sub(certs[0].NotBefore); d != DefaultWorkloadTTL+ClockSkew {
		t.Errorf("workload validity %v", d)
	}
	if _, err := ca.SignWorkloadCSR(csr, "demo", "bad/acct", 0); err == nil {
		t.Fatal("bad account accepted")
	}
}

func TestCARotationOverlap(t *testing.T) {
	clk := &clock{t: time.Now()}
	dir := t.TempDir()
	ca := newCA(t, dir, clk)
	oldPin := ca.Pin()
	old := nodeSVID(t, ca, "s", "old")
	if err := ca.Rotate(); err != nil {
		t.Fatal(err)
	}
	if ca.Pin() == oldPin {
		t.Fatal("rotation kept the root")
	}
	nu := nodeSVID(t, ca, "s", "new")
	if string(nu.Certificates[0].AuthorityKeyId) == string(old.Certificates[0].AuthorityKeyId) {
		t.Fatal("issuing did not switch")
	}
	if n := len(ca.Roots()); n != 2 {
		t.Fatalf("roots during overlap: %d", n)
	}
	for _, s := range []*x509svid.SVID{old, nu} {
		if _, _, err := x509svid.Verify(s.Certificates, ca.Bundle(), x509svid.WithTime(clk.t)); err != nil {
			t.Fatalf("%s during overlap: %v", s.ID, err)
		}
	}
	if next := ca.NextBundleChange(); next.Sub(clk.t) != DefaultOverlap {
		t.Fatalf("next change in %v", next.Sub(clk.t))
	}
	// Survives a restart.
	ca2 := newCA(t, dir, clk)
	if len(ca2.Roots()) != 2 || ca2.Pin() != ca.Pin() {
		t.Fatal("rotation state not persisted")
	}
	keys, _ := filepath.Glob(filepath.Join(dir, "ca-key-*.pem"))
	if len(keys) != 1 {
		t.Fatalf("old key kept: %v", keys)
	}
	// After the window the old root drops out.
	clk.t = clk.t.Add(DefaultOverlap + time.Minute)
	if n := len(ca.Roots()); n != 1 {
		t.Fatalf("roots after overlap: %d", n)
	}
	if _, _, err := x509svid.Verify(old.Certificates, ca.Bundle(), x509svid.WithTime(clk.t)); err == nil {
		t.Fatal("old-root certificate verified after the window")
	}
}

func TestExternalCA(t *testing.T) {
	// An operator CA made by another fogmesh CA's files.
	src := newCA(t, t.TempDir(), nil)
	dir := t.TempDir()
	cert := filepath.Join(dir, "ca.pem")
	os.WriteFile(cert, EncodeCertificatesPEM(src.Roots()[0]), 0o644)
	keys, _ := filepath.Glob(filepath.Join(src.cfg.Dir, "ca-key-*.pem"))
	ca, err := OpenCA(CAConfig{CertFile: cert, KeyFile: keys[0]})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(ca.Rotate(), ErrExternalCA) {
		t.Fatal("external CA rotated")
	}
	s := nodeSVID(t, ca, "s", "n")
	if _, _, err := x509svid.Verify(s.Certificates, src.Bundle()); err != nil {
		t.Fatal(err)
	}
	// A world-readable key is refused.
	os.Chmod(keys[0], 0o644)
	if _, err := OpenCA(CAConfig{CertFile: cert, KeyFile: keys[0]}); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("loose key: %v", err)
	}
}

func TestTokenRoundTrip(t *testing.T) {
	ca := newCA(t, t.TempDir(), nil)
	j, err := NewToken(TokenJoin, ca.Pin())
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseToken(j.String())
	if err != nil || p != j {
		t.Fatalf("parse %q: %v %+v", j, err, p)
	}
	if !p.MatchesHash(j.Hash()) {
		t.Fatal("hash mismatch")
	}
	a, _ := NewToken(TokenAdmin, "")
	if p, err := ParseToken(a.String()); err != nil || p != a {
		t.Fatalf("admin: %v", err)
	}
	if strings.Contains(a.Hash(), a.Secret) {
		t.Fatal("hash holds the secret")
	}
	for _, bad := range []string{"", "fmj1", "fma1.abc.def", "fmj1." + j.ID + "." + j.Secret + ".zz", "fma1." + strings.ToUpper(a.ID) + "." + a.Secret,
		j.String() + ".x", strings.Repeat("a", 500)} {
		if _, err := ParseToken(bad); !errors.Is(err, ErrBadToken) {
			t.Errorf("ParseToken(%q) = %v", bad, err)
		} else if a.Secret != "" && strings.Contains(err.Error(), a.Secret) {
			t.Errorf("error echoes the secret")
		}
	}
}

// TestRelayTokenIsAKindOfItsOwn: a relay token round-trips as kind relay,
// never as a join token (the same secret and pin under the join prefix is
// another token: its hash differs, so the store cannot match it either).
func TestRelayTokenIsAKindOfItsOwn(t *testing.T) {
	ca := newCA(t, t.TempDir(), nil)
	r, err := NewToken(TokenRelay, ca.Pin())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(r.String(), "fmr1.") {
		t.Fatalf("relay token %q", r)
	}
	p, err := ParseToken(r.String())
	if err != nil || p != r || p.Kind != TokenRelay {
		t.Fatalf("parse %q: %v %+v", r, err, p)
	}
	asJoin := Token{Kind: TokenJoin, ID: r.ID, Secret: r.Secret, Pin: r.Pin}
	if asJoin.MatchesHash(r.Hash()) {
		t.Fatal("a relay token's hash matches the join token of the same secret")
	}
	if _, err := NewToken(TokenRelay, ""); err == nil {
		t.Fatal("relay token without a pin")
	}
}

// TestRelayID: relay IDs are spiffe://<td>/relay/<name>, never node IDs.
func TestRelayID(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("mesh.test")
	id, err := RelayID(td, "r1")
	if err != nil || id.String() != "spiffe://mesh.test/relay/r1" {
		t.Fatalf("%v %v", id, err)
	}
	if n, ok := ParseRelayID(id); !ok || n != "r1" {
		t.Fatalf("ParseRelayID %q %v", n, ok)
	}
	if _, _, ok := ParseNodeID(id); ok {
		t.Fatal("a relay ID parses as a node ID")
	}
	node, _ := NodeID(td, "relay", "r1")
	for _, other := range []spiffeid.ID{node, spiffeid.RequireFromString("spiffe://mesh.test/relay/r1/x"), spiffeid.RequireFromString("spiffe://mesh.test/relay")} {
		if _, ok := ParseRelayID(other); ok {
			t.Errorf("ParseRelayID(%s) ok", other)
		}
	}
	if _, err := RelayID(td, ""); err == nil {
		t.Fatal("empty relay name")
	}
}

func TestParseCSRRejects(t *testing.T) {
	key, _ := NewKey()
	der, _ := NewCSR(key)
	cases := map[string][]byte{
		"empty":     nil,
		"garbage":   []byte("hello"),
		"truncated": der[:len(der)/2],
		"bad sig":   append(append([]byte{}, der[:len(der)-3]...), 1, 2, 3),
		"pem cert":  []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
		"huge":      make([]byte, MaxCSR+1),
	}
	for name, b := range cases {
		if _, err := ParseCSR(b); !errors.Is(err, ErrBadCSR) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestParseNodeID(t *testing.T) {
	for in, ok := range map[string]bool{
		"spiffe://fogmesh.local/site/s/node/n":   true,
		"spiffe://fogmesh.local/site/s/node":     false,
		"spiffe://fogmesh.local/ns/demo/sa/x":    false,
		"spiffe://fogmesh.local/site/s/node/n/x": false,
	} {
		id := spiffeid.RequireFromString(in)
		if _, _, got := ParseNodeID(id); got != ok {
			t.Errorf("%s: %v", in, got)
		}
	}
}

// tlsPair runs one handshake between a server and a client config over
// loopback and returns the server's error.
func tlsPair(t *testing.T, srv, cli *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		tc, err := ServerHandshake(context.Background(), c, srv, 3*time.Second)
		if err == nil {
			_, err = io.WriteString(tc, "ok")
		}
		errc <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), cli)
	if err == nil {
		var b [2]byte
		_, err = io.ReadFull(c, b[:])
		c.Close()
	}
	return <-errc, err
}

func TestMutualTLSReasons(t *testing.T) {
	ca := newCA(t, t.TempDir(), nil)
	other := newCA(t, t.TempDir(), nil)
	server := NewSource()
	server.SetSVID(nodeSVID(t, ca, "s", "server"))
	server.SetBundles(ca.Bundle())
	mk := func(svid *x509svid.SVID) *tls.Config {
		src := NewSource()
		if svid != nil {
			src.SetSVID(svid)
		}
		src.SetBundles(ca.Bundle())
		return src.ClientConfig(AuthorizeNode(), ALPNMesh)
	}
	good := nodeSVID(t, ca, "s", "client")
	if serr, cerr := tlsPair(t, server.ServerConfig(AuthorizeNode(), ALPNMesh), mk(good)); serr != nil || cerr != nil {
		t.Fatalf("good: %v / %v", serr, cerr)
	}
	noCert := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{ALPNMesh}}
	clk := &clock{t: time.Now().Add(-48 * time.Hour)}
	expiredCA, _ := OpenCA(CAConfig{Dir: t.TempDir(), Now: clk.now, TrustDomain: "past.example", NodeTTL: 24 * time.Hour})
	server.SetBundles(ca.Bundle(), expiredCA.Bundle())
	cases := []struct {
		name string
		cli  *tls.Config
		want string
	}{
		{"no certificate", noCert, ReasonNoCertificate},
		{"other CA", mk(nodeSVID(t, other, "s", "client")), ReasonUnknownAuthority},
		// An old peer that presents its expired certificate (a Source
		// does not: TestSourceWithholdsExpired).
		{"expired", presenting(mk(nil), nodeSVID(t, expiredCA, "s", "client")), ReasonExpired},
		{"revoked", mk(good), ReasonRevoked},
	}
	server.SetDenied([]string{good.ID.String()})
	for _, c := range cases {
		serr, _ := tlsPair(t, server.ServerConfig(AuthorizeNode(), ALPNMesh), c.cli)
		if got := HandshakeReason(serr); got != c.want {
			t.Errorf("%s: reason %q (%v), want %q", c.name, got, serr, c.want)
		}
	}
	// Plaintext.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		c, _ := net.Dial("tcp", ln.Addr().String())
		if c != nil {
			io.WriteString(c, "GET / HTTP/1.1\r\n\r\n")
			defer c.Close()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	c, _ := ln.Accept()
	_, err := ServerHandshake(context.Background(), c, server.ServerConfig(AuthorizeNode()), time.Second)
	c.Close()
	if HandshakeReason(err) != ReasonNotTLS {
		t.Fatalf("plaintext: %v", err)
	}
}

func TestJoinPinned(t *testing.T) {
	ca := newCA(t, t.TempDir(), nil)
	key, _ := NewKey()
	certs, err := ca.Sign(key.Public(), ControlID(ca.TrustDomain()), IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svid, _ := NewSVID(append(certs, ca.Roots()...), key)
	srcSrv := NewSource()
	srcSrv.SetSVID(svid)
	srv := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{ALPNJoin},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			s := srcSrv.SVID()
			return &tls.Certificate{Certificate: DERs(s.Certificates), PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}, nil
		}}
	var gotTD spiffeid.TrustDomain
	if _, cerr := tlsPair(t, srv, JoinClientConfig(ca.Pin(), func(td spiffeid.TrustDomain, _ *x509.Certificate) { gotTD = td })); cerr != nil {
		t.Fatal(cerr)
	}
	if gotTD != ca.TrustDomain() {
		t.Fatalf("td %v", gotTD)
	}
	other := newCA(t, t.TempDir(), nil)
	if _, cerr := tlsPair(t, srv, JoinClientConfig(other.Pin(), nil)); cerr == nil || !strings.Contains(cerr.Error(), "pin") {
		t.Fatalf("wrong pin: %v", cerr)
	}
}

// presenting makes cfg present svid as it is, bypassing the Source.
func presenting(cfg *tls.Config, svid *x509svid.SVID) *tls.Config {
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	return cfg
}

// TestSourceWithholdsExpired: a Source whose certificate expired (a node
// cut off past its certificate's life) does not present it: its own
// handshake fails, saying why, and the server sees no certificate.
func TestSourceWithholdsExpired(t *testing.T) {
	ca := newCA(t, t.TempDir(), nil)
	clk := &clock{t: time.Now().Add(-48 * time.Hour)}
	old, err := OpenCA(CAConfig{Dir: t.TempDir(), Now: clk.now, NodeTTL: 24 * time.Hour, TrustDomain: "past.example"})
	if err != nil {
		t.Fatal(err)
	}
	src := NewSource()
	src.SetBundles(ca.Bundle(), old.Bundle())
	src.SetSVID(nodeSVID(t, old, "s", "client"))
	_, err = src.GetX509SVID()
	if HandshakeReason(err) != ReasonExpired || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("GetX509SVID with an expired certificate: %v", err)
	}
	server := NewSource()
	server.SetSVID(nodeSVID(t, ca, "s", "server"))
	server.SetBundles(ca.Bundle(), old.Bundle())
	serr, cerr := tlsPair(t, server.ServerConfig(AuthorizeNode(), ALPNMesh), src.ClientConfig(AuthorizeNode(), ALPNMesh))
	if cerr == nil || !strings.Contains(cerr.Error(), "expired at") {
		t.Fatalf("client error %v, want one naming the expiry", cerr)
	}
	if serr == nil {
		t.Fatal("the server accepted a client without a certificate")
	}
}
