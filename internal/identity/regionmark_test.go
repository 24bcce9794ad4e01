package identity

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// TestRegionMarkFromAnIntermediateRefused: a regional intermediate (west)
// that signs a node certificate marked for region east is refused by
// every verifier, at the handshake and when a peer is checked again: the
// mark comes from the root only, else a stolen regional key would mint
// nodes that another region's plane takes as its own. Before, the mark
// was not read: the node was taken as a plain node of west's CA.
func TestRegionMarkFromAnIntermediateRefused(t *testing.T) {
	root := newCA(t, t.TempDir(), nil)
	west := regional(t, root, "west", time.Hour)
	key, _ := NewKey()
	id, _ := NodeID(root.TrustDomain(), "s1", "forged")
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{OrganizationalUnit: []string{"region/east"}},
		URIs:      []*url.URL{id.URL()},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, west.Certificate(), key.Public(), west.signer)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	forged := NewSource()
	forged.SetBundles(root.Bundle())
	svid, err := NewSVID([]*x509.Certificate{leaf, west.Certificate()}, key)
	if err != nil {
		t.Fatal(err)
	}
	forged.SetSVID(svid)
	verifier, _ := root.NodeSource("s2", "verifier")

	if _, serr := handshake(t, forged, verifier); HandshakeReason(serr) != ReasonUnauthorized || !strings.Contains(serr.Error(), "root only") {
		t.Fatalf("a node marked east by west's CA, at a server: %v", serr)
	}
	if cerr, _ := handshake(t, verifier, forged); HandshakeReason(cerr) != ReasonUnauthorized {
		t.Fatalf("a node marked east by west's CA, at a client: %v", cerr)
	}
	if err := verifier.CheckPeer(id, svid.Certificates); HandshakeReason(err) != ReasonUnauthorized {
		t.Fatalf("a node marked east by west's CA, checked again: %v", err)
	}
	// Sent besides an unmarked root chain, west's CA names nothing.
	g, _ := root.NodeSource("s1", "g")
	if err := verifier.CheckPeer(g.SVID().ID, append(g.SVID().Certificates, west.Certificate())); err != nil {
		t.Fatalf("a root node sending west's CA besides: %v", err)
	}
}

// TestRegionMarkFromTheRoot: the root marks a node certificate with a
// region; its SPIFFE ID is the node's as before, it authenticates with a
// regional CA's node both ways, and ChainRegion reads the region from it
// (from the CA for a regional CA's node). A regional CA cannot issue a
// mark; a revoked region takes the root's nodes marked for it.
func TestRegionMarkFromTheRoot(t *testing.T) {
	root := newCA(t, t.TempDir(), nil)
	west := regional(t, root, "west", time.Hour)
	key, _ := NewKey()
	der, _ := NewCSR(key)
	csr, _ := ParseCSR(der)
	certs, err := root.SignNodeCSRInRegion(csr, "s1", "renewed", "west")
	if err != nil {
		t.Fatal(err)
	}
	svid, err := NewSVID(certs, key)
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := x509svid.IDFromCert(certs[0]); id.String() != "spiffe://fogmesh.local/site/s1/node/renewed" {
		t.Fatalf("a marked node's ID: %s", id)
	}
	marked := NewSource()
	marked.SetBundles(root.Bundle())
	marked.SetSVID(svid)
	r, _ := west.NodeSource("s2", "regional")
	if cerr, serr := handshake(t, marked, r); cerr != nil || serr != nil {
		t.Fatalf("marked node to regional node: client %v, server %v", cerr, serr)
	}
	if cerr, serr := handshake(t, r, marked); cerr != nil || serr != nil {
		t.Fatalf("regional node to marked node: client %v, server %v", cerr, serr)
	}
	if region, byMark, err := ChainRegion(append(certs, root.Roots()[0])); region != "west" || !byMark || err != nil {
		t.Fatalf("ChainRegion of the root's node marked west: %q %v %v", region, byMark, err)
	}
	if region, byMark, err := ChainRegion(append(r.SVID().Certificates, root.Roots()[0])); region != "west" || byMark || err != nil {
		t.Fatalf("ChainRegion of west's CA's node: %q %v %v", region, byMark, err)
	}

	if _, err := west.SignNodeCSRInRegion(csr, "s1", "n", "west"); err == nil || !strings.Contains(err.Error(), "root") {
		t.Fatalf("west's CA marking a node: %v", err)
	}
	if _, err := root.SignNodeCSRInRegion(csr, "s1", "n", "a/b"); err == nil {
		t.Fatal("a mark that is no region name issued")
	}

	regionID, _ := RegionID(root.TrustDomain(), "west")
	r.SetDenied([]string{regionID.String()})
	if _, serr := handshake(t, marked, r); HandshakeReason(serr) != ReasonRevoked {
		t.Fatalf("the root's node marked west after west was revoked: %v", serr)
	}
	if err := r.CheckPeer(svid.ID, svid.Certificates); HandshakeReason(err) != ReasonRevoked {
		t.Fatalf("the root's node marked west, checked again after west was revoked: %v", err)
	}
}

// TestRegionMarkMalformed: a mark that names no region, or two marks,
// are errors, not a region.
func TestRegionMarkMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		ou   []string
		want string
	}{
		{"none", nil, ""},
		{"other units", []string{"ops"}, ""},
		{"one", []string{"ops", "region/west"}, "west"},
		{"empty", []string{"region/"}, "error"},
		{"path", []string{"region/a/b"}, "error"},
		{"two", []string{"region/west", "region/east"}, "error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RegionMark(&x509.Certificate{Subject: pkix.Name{OrganizationalUnit: tc.ou}})
			if err != nil {
				got = "error"
			}
			if got != tc.want {
				t.Fatalf("RegionMark(%q) = %q (%v), want %q", tc.ou, got, err, tc.want)
			}
		})
	}
}

// FuzzRegionMark: whatever a subject's units hold, a mark read from them
// is a region ID's name (the planes build IDs and messages from it), and
// a unit list holding none is no error.
func FuzzRegionMark(f *testing.F) {
	for _, s := range []string{"region/west", "region/", "region/a/b", "region/..", "ops", "region/WEST", "region/a\x00"} {
		f.Add(s, "region/east")
		f.Add(s, "ops")
	}
	td := spiffeid.RequireTrustDomainFromString("fogmesh.local")
	f.Fuzz(func(t *testing.T, a, b string) {
		region, err := RegionMark(&x509.Certificate{Subject: pkix.Name{OrganizationalUnit: []string{a, b}}})
		if err != nil {
			return
		}
		if region == "" {
			if strings.HasPrefix(a, regionMarkPrefix) || strings.HasPrefix(b, regionMarkPrefix) {
				t.Fatalf("units %q %q: a mark read as none", a, b)
			}
			return
		}
		id, err := RegionID(td, region)
		if err != nil {
			t.Fatalf("mark %q is no region ID: %v", region, err)
		}
		if got, ok := ParseRegionID(id); !ok || got != region {
			t.Fatalf("mark %q: its region ID names %q", region, got)
		}
	})
}
