package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"
)

// FuzzParseCertificatesPEM: a certificate file (a node's cert.pem, an
// operator's CA certificate, a bundle) parses to certificates or is
// refused with ErrBadBundle, never a panic; what parses writes back as
// PEM to the same certificates, and the same file with data after its
// last block is refused.
func FuzzParseCertificatesPEM(f *testing.F) {
	root := mustRootForFuzz(f)
	one := EncodeCertificatesPEM(root)
	f.Add(one)
	f.Add(EncodeCertificatesPEM(root, root))
	f.Add(append([]byte("subject=CN = fogmesh\n"), one...))
	f.Add(append(append([]byte{}, one...), "junk\n"...))
	f.Add(bytes.ReplaceAll(one, []byte("\n"), []byte("\r\n")))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: root.Raw}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw[:len(root.Raw)/2]}))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n"))
	f.Add([]byte(" \n\t"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := ParseCertificatesPEM(b)
		if err != nil {
			if !errors.Is(err, ErrBadBundle) {
				t.Fatalf("error does not wrap ErrBadBundle: %v", err)
			}
			return
		}
		if len(certs) == 0 {
			t.Fatal("no certificate and no error")
		}
		back, err := ParseCertificatesPEM(EncodeCertificatesPEM(certs...))
		if err != nil || len(back) != len(certs) {
			t.Fatalf("%d certificates written back: %d, %v", len(certs), len(back), err)
		}
		for i := range certs {
			if !bytes.Equal(back[i].Raw, certs[i].Raw) {
				t.Fatalf("certificate %d does not read back the same", i)
			}
		}
		if _, err := ParseCertificatesPEM(append(bytes.Clone(b), "\nx"...)); err == nil {
			t.Fatal("trailing data after the last block accepted")
		}
	})
}

// FuzzParseKeyPEM: a private key file (ReadKeyFile's parse: the node's,
// the relay's, the CA's key) gives a key or an error, never a panic; what
// parses signs what its public key verifies (the key a certificate is
// matched against is the one that signs), and writes back as PKCS #8 to
// the same key. A file that parses is refused with a second key block or
// non-PEM data after it.
func FuzzParseKeyPEM(f *testing.F) {
	ec, _ := NewKey()
	p8, _ := EncodeKeyPEM(ec)
	f.Add(p8)
	ecDER, _ := x509.MarshalECPrivateKey(ec)
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}))
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384PEM, _ := EncodeKeyPEM(p384)
	f.Add(p384PEM)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	edPEM, _ := EncodeKeyPEM(ed)
	f.Add(edPEM)
	if rk, err := rsa.GenerateKey(rand.Reader, 2048); err == nil {
		f.Add(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)}))
	}
	f.Add(append(append([]byte{}, p8...), p8...))
	f.Add(append([]byte("junk before\n"), p8...))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00"}, Bytes: ecDER}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ecDER}))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER[:len(ecDER)-3]}))
	ecPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})
	f.Add(append(ecParamsPEM(f, oidP256), ecPEM...))                 // openssl ecparam -genkey
	f.Add(append(ecParamsPEM(f, oidP384), ecPEM...))                 // a curve not the key's
	f.Add(append(append(ecParamsPEM(f, oidP256), ecPEM...), "x"...)) // trailing garbage
	f.Add(append(append([]byte{}, ecPEM...), p8...))
	f.Add(cat(dhParamsPEM, ecPEM, dhParamsPEM))                                               // blocks that are not keys
	f.Add(cat(p8, pem.EncodeToMemory(&pem.Block{Type: "OPENSSH PRIVATE KEY", Bytes: ecDER}))) // a key of another form
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{0x30, 0}}))
	f.Add([]byte("not a key"))
	f.Add([]byte{})
	digest := sha256.Sum256([]byte("fogmesh"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseKeyPEM(b)
		if err != nil {
			return
		}
		var opts crypto.SignerOpts = crypto.SHA256
		msg := digest[:]
		if _, ok := k.(ed25519.PrivateKey); ok {
			opts, msg = crypto.Hash(0), []byte("fogmesh")
		}
		sig, err := k.Sign(rand.Reader, msg, opts)
		if err != nil {
			t.Fatalf("parsed key %T does not sign: %v", k, err)
		}
		switch pub := k.Public().(type) {
		case *ecdsa.PublicKey:
			if !ecdsa.VerifyASN1(pub, msg, sig) {
				t.Fatal("ECDSA key signs what its public key does not verify")
			}
		case ed25519.PublicKey:
			if !ed25519.Verify(pub, msg, sig) {
				t.Fatal("Ed25519 key signs what its public key does not verify")
			}
		case *rsa.PublicKey:
			if rsa.VerifyPKCS1v15(pub, crypto.SHA256, msg, sig) != nil {
				t.Fatal("RSA key signs what its public key does not verify")
			}
		}
		p, err := EncodeKeyPEM(k)
		if err != nil {
			t.Fatalf("parsed key %T does not encode: %v", k, err)
		}
		back, err := ParseKeyPEM(p)
		if err != nil || !publicKeyEqual(back.Public(), k.Public()) {
			t.Fatalf("key written back does not read the same: %v", err)
		}
		if _, err := ParseKeyPEM(append(bytes.Clone(b), "\nx"...)); err == nil {
			t.Fatal("trailing data after the key accepted")
		}
		if _, err := ParseKeyPEM(append(append(bytes.Clone(b), '\n'), p...)); err == nil {
			t.Fatal("a second key block accepted")
		}
	})
}
