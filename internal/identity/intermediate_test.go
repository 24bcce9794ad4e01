package identity

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
)

// regional makes a regional intermediate CA for region under root, as the
// control planes do (a CSR, the root's signature, the CA opened on it).
func regional(t *testing.T, root *CA, region string, ttl time.Duration) *CA {
	t.Helper()
	key, _ := NewKey()
	der, _ := NewCSR(key)
	csr, err := ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.SignIntermediateCSR(csr, region, ttl)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := OpenIntermediateCA(CAConfig{TrustDomain: root.TrustDomain().Name()}, []*x509.Certificate{inter}, key, root.Roots())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// handshake runs mutual TLS between a client and a server Source over
// loopback TCP, both authorizing node identities, and returns each side's
// error.
func handshake(t *testing.T, client, server *Source) (cerr, serr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, server.ServerConfig(AuthorizeNode(), ALPNMesh))
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		err = tc.Handshake()
		if err == nil {
			_, err = tc.Write([]byte{1})
		}
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, client.ClientConfig(AuthorizeNode(), ALPNMesh))
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	cerr = tc.Handshake()
	if cerr == nil { // TLS 1.3: a refused client certificate shows on the first read
		var b [1]byte
		_, cerr = tc.Read(b[:])
	}
	tc.Close()
	return cerr, <-done
}

// TestIntermediateCertificate: the root signs a regional intermediate with
// the documented constraints; only a root signs one; the regional CA's
// leaves carry the intermediate in their chain.
func TestIntermediateCertificate(t *testing.T) {
	root := newCA(t, t.TempDir(), nil)
	reg := regional(t, root, "east", time.Hour)
	inter := reg.Certificate()
	if !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero || inter.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Fatalf("intermediate constraints: IsCA %v MaxPathLen %d zero %v usage %v", inter.IsCA, inter.MaxPathLen, inter.MaxPathLenZero, inter.KeyUsage)
	}
	if len(inter.PermittedURIDomains) != 1 || inter.PermittedURIDomains[0] != root.TrustDomain().Name() {
		t.Fatalf("URI name constraint %v", inter.PermittedURIDomains)
	}
	if len(inter.URIs) != 1 || inter.URIs[0].String() != "spiffe://fogmesh.local/region/east" {
		t.Fatalf("intermediate URIs %v", inter.URIs)
	}
	if d := inter.NotAfter.Sub(inter.NotBefore); d != time.Hour+ClockSkew {
		t.Fatalf("intermediate lifetime %v", d)
	}
	if reg.IsRoot() || !root.IsRoot() {
		t.Fatal("IsRoot")
	}
	if reg.Pin() != root.Pin() {
		t.Fatal("the regional CA's pin is not the global root's: join tokens would not verify")
	}
	// Only the root makes intermediates and region identities.
	key, _ := NewKey()
	der, _ := NewCSR(key)
	csr, _ := ParseCSR(der)
	if _, err := reg.SignIntermediateCSR(csr, "west", 0); !errors.Is(err, ErrNotRoot) {
		t.Fatalf("an intermediate signed an intermediate: %v", err)
	}
	if _, err := reg.SignRegionCSR(csr, "west", 0); !errors.Is(err, ErrNotRoot) {
		t.Fatalf("an intermediate signed a region identity: %v", err)
	}
	if err := reg.Rotate(); !errors.Is(err, ErrRegionalCA) {
		t.Fatalf("rotate of an intermediate: %v", err)
	}
	// Leaves come with the intermediate and verify against the root alone.
	n, err := reg.NodeSource("s1", "n1")
	if err != nil {
		t.Fatal(err)
	}
	certs := n.SVID().Certificates
	if len(certs) != 2 || !certs[1].Equal(inter) {
		t.Fatalf("chain of %d certificates", len(certs))
	}
	if got := IssuingRegion(append(certs, root.Roots()[0])); got != "east" {
		t.Fatalf("IssuingRegion %q", got)
	}
	// The intermediate's lifetime caps its leaves.
	if certs[0].NotAfter.After(inter.NotAfter) {
		t.Fatal("leaf outlives its intermediate")
	}
	// An expired intermediate issues nothing.
	clk := &clock{t: time.Now()}
	exp, err := OpenIntermediateCA(CAConfig{Now: clk.now}, []*x509.Certificate{inter}, reg.signer, root.Roots())
	if err != nil {
		t.Fatal(err)
	}
	clk.t = inter.NotAfter
	if _, err := exp.NodeSource("s1", "late"); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("an expired intermediate issued: %v", err)
	}
	// A wrong key or an intermediate of another root is refused.
	other := newCA(t, t.TempDir(), nil)
	if err := reg.SetIntermediate([]*x509.Certificate{inter}, key, root.Roots()); err == nil {
		t.Fatal("intermediate accepted with another key")
	}
	if _, err := OpenIntermediateCA(CAConfig{}, []*x509.Certificate{inter}, reg.signer, other.Roots()); err == nil {
		t.Fatal("intermediate accepted under another root")
	}
}

// TestIntermediateConstraintsEnforced: what the intermediate's key signs
// beyond its constraints fails verification: a leaf of another trust
// domain (URI name constraint), a CA below it (path length 0), a region
// identity (CheckChains).
func TestIntermediateConstraintsEnforced(t *testing.T) {
	root := newCA(t, t.TempDir(), nil)
	reg := regional(t, root, "east", time.Hour)
	inter := reg.Certificate()
	roots := x509.NewCertPool()
	roots.AddCert(root.Roots()[0])
	inters := x509.NewCertPool()
	inters.AddCert(inter)
	raw := func(tmpl, parent *x509.Certificate, signer any) (*x509.Certificate, any) {
		key, _ := NewKey()
		tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(time.Minute)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c, key
	}
	verify := func(leaf *x509.Certificate, extra ...*x509.Certificate) error {
		p := inters.Clone()
		for _, e := range extra {
			p.AddCert(e)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: p, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err
	}
	in, _ := raw(&x509.Certificate{URIs: []*url.URL{{Scheme: "spiffe", Host: "fogmesh.local", Path: "/site/s/node/n"}}}, inter, reg.signer)
	if err := verify(in); err != nil {
		t.Fatalf("a leaf in the trust domain: %v", err)
	}
	out, _ := raw(&x509.Certificate{URIs: []*url.URL{{Scheme: "spiffe", Host: "evil.example", Path: "/site/s/node/n"}}}, inter, reg.signer)
	if err := verify(out); err == nil || !strings.Contains(err.Error(), "constraint") {
		t.Fatalf("a leaf of another trust domain: %v", err)
	}
	sub, subKey := raw(&x509.Certificate{IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		URIs: []*url.URL{{Scheme: "spiffe", Host: "fogmesh.local", Path: "/region/sub"}}}, inter, reg.signer)
	below, _ := raw(&x509.Certificate{URIs: []*url.URL{{Scheme: "spiffe", Host: "fogmesh.local", Path: "/site/s/node/n"}}}, sub, subKey)
	if err := verify(below, sub); err == nil {
		t.Fatal("a CA below the intermediate verified (MaxPathLen 0)")
	}
	// A region identity under the intermediate: refused by every Source.
	regionID, _ := RegionID(root.TrustDomain(), "west")
	key, _ := NewKey()
	certs, err := reg.Sign(key.Public(), regionID, IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		t.Fatal(err)
	}
	var he *HandshakeError
	if err := CheckChains(regionID, chains, func(string) bool { return false }); !errors.As(err, &he) || he.Reason != ReasonUnauthorized {
		t.Fatalf("a region identity from an intermediate: %v", err)
	}
}

// TestMTLSAcrossRootAndIntermediate: a node certified by the global root
// and one certified by a regional intermediate authenticate each other
// (real TLS on loopback, both directions); once the region is on the deny
// list, both refuse the intermediate's node (reason revoked), while the
// root's nodes still connect.
func TestMTLSAcrossRootAndIntermediate(t *testing.T) {
	root := newCA(t, t.TempDir(), nil)
	reg := regional(t, root, "east", time.Hour)
	g, _ := root.NodeSource("s1", "global-node")
	g2, _ := root.NodeSource("s1", "global-node-2")
	r, _ := reg.NodeSource("s2", "regional-node")
	if cerr, serr := handshake(t, g, r); cerr != nil || serr != nil {
		t.Fatalf("root node to regional node: client %v, server %v", cerr, serr)
	}
	if cerr, serr := handshake(t, r, g); cerr != nil || serr != nil {
		t.Fatalf("regional node to root node: client %v, server %v", cerr, serr)
	}
	regionID, _ := RegionID(root.TrustDomain(), "east")
	for _, s := range []*Source{g, r, g2} {
		s.SetDenied([]string{regionID.String()})
	}
	_, serr := handshake(t, r, g)
	if HandshakeReason(serr) != ReasonRevoked {
		t.Fatalf("root node accepted a client under the revoked region: %v", serr)
	}
	cerr, _ := handshake(t, g, r)
	if HandshakeReason(cerr) != ReasonRevoked {
		t.Fatalf("root node accepted a server under the revoked region: %v", cerr)
	}
	if cerr, serr := handshake(t, g2, g); cerr != nil || serr != nil {
		t.Fatalf("root nodes after the region's revocation: client %v, server %v", cerr, serr)
	}
}

// TestRegionToken: region tokens round-trip as their own kind (prefix
// fmg1) and need a pin; the same secret under another prefix is another
// token.
func TestRegionToken(t *testing.T) {
	ca := newCA(t, t.TempDir(), nil)
	g, err := NewToken(TokenRegion, ca.Pin())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(g.String(), "fmg1.") {
		t.Fatalf("region token %q", g)
	}
	p, err := ParseToken(g.String())
	if err != nil || p != g || p.Kind != TokenRegion {
		t.Fatalf("parse %q: %v %+v", g, err, p)
	}
	if (Token{Kind: TokenJoin, ID: g.ID, Secret: g.Secret, Pin: g.Pin}).MatchesHash(g.Hash()) {
		t.Fatal("a region token's hash matches the join token of the same secret")
	}
	if _, err := NewToken(TokenRegion, ""); err == nil {
		t.Fatal("region token without a pin")
	}
	id, _ := RegionID(ca.TrustDomain(), "east")
	if n, ok := ParseRegionID(id); !ok || n != "east" {
		t.Fatalf("ParseRegionID %q %v", n, ok)
	}
	if _, ok := ParseRegionID(ControlID(ca.TrustDomain())); ok {
		t.Fatal("control ID parsed as a region")
	}
}

// TestCheckPeer: a peer authenticated earlier is checked again against
// the current deny list: its own ID, and the CAs of the chain it
// presented (a revoked region takes its nodes with it).
func TestCheckPeer(t *testing.T) {
	root := newCA(t, t.TempDir(), nil)
	reg := regional(t, root, "east", time.Hour)
	g, _ := root.NodeSource("s1", "g")
	r, _ := reg.NodeSource("s2", "r")
	v, _ := root.NodeSource("s1", "verifier")
	check := func(s *Source) error { return v.CheckPeer(s.SVID().ID, s.SVID().Certificates) }
	if err := check(g); err != nil {
		t.Fatalf("nothing denied: %v", err)
	}
	if err := check(r); err != nil {
		t.Fatalf("nothing denied, regional node: %v", err)
	}
	v.SetDenied([]string{g.SVID().ID.String()})
	if err := check(g); HandshakeReason(err) != ReasonRevoked {
		t.Fatalf("denied node: %v", err)
	}
	if err := check(r); err != nil {
		t.Fatalf("another node denied, regional node: %v", err)
	}
	regionID, _ := RegionID(root.TrustDomain(), "east")
	v.SetDenied([]string{regionID.String()})
	if err := check(r); HandshakeReason(err) != ReasonRevoked || !strings.Contains(err.Error(), "region/east") {
		t.Fatalf("node of a denied region: %v", err)
	}
	if err := check(g); err != nil {
		t.Fatalf("root node with a region denied: %v", err)
	}
}
