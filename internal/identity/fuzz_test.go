package identity

import (
	"crypto/x509"
	"errors"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func FuzzParseCSR(f *testing.F) {
	key, _ := NewKey()
	der, _ := NewCSR(key)
	f.Add(der)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{0x30, 0x82, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		csr, err := ParseCSR(b)
		if err != nil && !errors.Is(err, ErrBadCSR) {
			t.Fatalf("error does not wrap ErrBadCSR: %v", err)
		}
		if err == nil && csr.CheckSignature() != nil {
			t.Fatal("accepted a CSR with a bad signature")
		}
	})
}

func FuzzParseToken(f *testing.F) {
	j, _ := NewToken(TokenJoin, Pin(mustRootForFuzz(f)))
	a, _ := NewToken(TokenAdmin, "")
	r, _ := NewToken(TokenRelay, j.Pin)
	g, _ := NewToken(TokenRegion, j.Pin)
	f.Add(g.String())
	f.Add(j.String())
	f.Add(a.String())
	f.Add(r.String())
	f.Add("fmj1...")
	f.Add("fma1.0123456789ab.0123456789abcdef0123456789abcdef")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			if !errors.Is(err, ErrBadToken) {
				t.Fatalf("error does not wrap ErrBadToken: %v", err)
			}
			return
		}
		again, err := ParseToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("round trip of %q: %v", s, err)
		}
	})
}

func FuzzParseBundlePEM(f *testing.F) {
	f.Add(EncodeCertificatesPEM(mustRootForFuzz(f)))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("not pem"))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := ParseBundlePEM(b)
		if err != nil {
			if !errors.Is(err, ErrBadBundle) {
				t.Fatalf("error does not wrap ErrBadBundle: %v", err)
			}
			return
		}
		for _, c := range certs {
			if !c.IsCA {
				t.Fatal("accepted a non-CA")
			}
		}
	})
}

func FuzzSPIFFEID(f *testing.F) {
	for _, s := range []string{"spiffe://fogmesh.local/site/s/node/n", "spiffe://x/ns/a/sa/b", "spiffe://", "spiffe://a/../b", "http://a/b", "spiffe://A/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return
		}
		site, node, ok := ParseNodeID(id)
		if ok {
			back, err := NodeID(id.TrustDomain(), site, node)
			if err != nil || back != id {
				t.Fatalf("node id %s does not round trip: %v %s", id, err, back)
			}
		}
	})
}

func mustRootForFuzz(f *testing.F) *x509.Certificate {
	ca, err := OpenCA(CAConfig{Dir: f.TempDir()})
	if err != nil {
		f.Fatal(err)
	}
	return ca.Roots()[0]
}
