package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ecParamsPEM is the EC PARAMETERS block `openssl ecparam` writes for a
// named curve.
func ecParamsPEM(t testing.TB, oid asn1.ObjectIdentifier) []byte {
	t.Helper()
	der, err := asn1.Marshal(oid)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: der})
}

var (
	oidP256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidP384 = asn1.ObjectIdentifier{1, 3, 132, 0, 34}
)

func ecKeyPEM(t testing.TB, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// TestParseKeyPEMForms: the forms accepted before stay accepted, and an
// EC PARAMETERS block before (or after) the key, as `openssl ecparam
// -genkey` writes, is skipped.
func TestParseKeyPEMForms(t *testing.T) {
	ec, _ := NewKey()
	p8, _ := EncodeKeyPEM(ec)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	edPEM, _ := EncodeKeyPEM(ed)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"pkcs8 ec":             p8,
		"sec1 ec":              ecKeyPEM(t, ec),
		"pkcs8 ed25519":        edPEM,
		"pkcs1 rsa":            pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)}),
		"text before":          cat([]byte("subject=whatever\n"), p8),
		"trailing blank lines": cat(p8, []byte("\n\n  \n")),
		"ec parameters first":  cat(ecParamsPEM(t, oidP256), ecKeyPEM(t, ec)),
		"ec parameters after":  cat(ecKeyPEM(t, ec), ecParamsPEM(t, oidP256)),
		"ec parameters pkcs8":  cat(ecParamsPEM(t, oidP256), p8),
		"key then certificate": cat(p8, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}})),
		"certificate then key": cat(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), ecKeyPEM(t, ec)),
		"crlf":                 bytes.ReplaceAll(cat(ecParamsPEM(t, oidP256), ecKeyPEM(t, ec)), []byte("\n"), []byte("\r\n")),
	} {
		k, err := ParseKeyPEM(b)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if name != "pkcs8 ed25519" && name != "pkcs1 rsa" && !publicKeyEqual(k.Public(), ec.Public()) {
			t.Errorf("%s: a different key", name)
		}
	}
}

// TestParseKeyPEMRefuses: a second key, data after the key, an EC
// PARAMETERS block naming another curve: each a clear error.
func TestParseKeyPEMRefuses(t *testing.T) {
	ec, _ := NewKey()
	p8, _ := EncodeKeyPEM(ec)
	other, _ := NewKey()
	p8o, _ := EncodeKeyPEM(other)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	edPEM, _ := EncodeKeyPEM(ed)
	badParams, _ := asn1.Marshal(asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true, Bytes: []byte{2, 1, 1}})
	for _, c := range []struct {
		name string
		b    []byte
		want string
	}{
		{"two keys", cat(p8, p8o), "more than one private key"},
		{"same key twice", cat(p8, ecKeyPEM(t, ec)), "more than one private key"},
		{"trailing garbage", cat(p8, []byte("junk\n")), "trailing data"},
		{"truncated second block", cat(p8, []byte("-----BEGIN EC PRIVATE KEY-----\nMHcC\n")), "trailing data"},
		{"curve mismatch", cat(ecParamsPEM(t, oidP384), ecKeyPEM(t, ec)), "names curve P-384 but the key is on P-256"},
		{"params with ed25519", cat(ecParamsPEM(t, oidP256), edPEM), "non-EC key"},
		{"explicit params", cat(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: badParams}), ecKeyPEM(t, ec)), "not a named curve"},
		{"params only", ecParamsPEM(t, oidP256), "no PEM private key"},
		{"certificate only", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), "no PEM private key"},
		{"unsupported key beside", cat(p8, pem.EncodeToMemory(&pem.Block{Type: "OPENSSH PRIVATE KEY", Bytes: []byte{1}})), `private key block "OPENSSH PRIVATE KEY"`},
		{"unsupported key alone", pem.EncodeToMemory(&pem.Block{Type: "DSA PRIVATE KEY", Bytes: []byte{1}}), `private key block "DSA PRIVATE KEY"`},
		{"two keys among other blocks", cat(dhParamsPEM, p8, dhParamsPEM, p8o), "more than one private key"},
		{"trailing garbage after other blocks", cat(p8, dhParamsPEM, []byte("junk\n")), "trailing data"},
		{"encrypted pkcs8", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1}}), "encrypted"},
		{"not pem", []byte("not a key"), "not PEM"},
		{"empty", nil, "no PEM private key"},
	} {
		_, err := ParseKeyPEM(c.b)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want one containing %q", c.name, err, c.want)
		}
	}
}

// dhParamsPEM is a DH PARAMETERS block as `openssl dhparam` writes it
// (SEQUENCE {p, g}; p shortened here), which some servers' key files carry
// after the key.
var dhParamsPEM = []byte(`-----BEGIN DH PARAMETERS-----
MCYCIQD//////////8kP2qIhaMI0xMZiZYrcyrgIXDjkAU0sc+0AAgEC
-----END DH PARAMETERS-----
`)

// TestParseKeyPEMSkipsOtherBlocks: a key file with blocks that are not
// keys beside the key (DH PARAMETERS, as `openssl dhparam` writes them,
// a CRL, a public key, text between blocks as openssl x509 -text writes
// it) reads as its key, as the first-block parse of old read it when the
// key came first. Before, any block type but the key's, EC PARAMETERS
// and CERTIFICATE was refused ("unexpected PEM block").
func TestParseKeyPEMSkipsOtherBlocks(t *testing.T) {
	ec, _ := NewKey()
	p8, _ := EncodeKeyPEM(ec)
	pub, _ := x509.MarshalPKIXPublicKey(ec.Public())
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})
	crl := pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: []byte{0x30, 0}})
	for name, b := range map[string][]byte{
		"dh parameters after":   cat(p8, dhParamsPEM),
		"dh parameters before":  cat(dhParamsPEM, ecKeyPEM(t, ec)),
		"ecparam, key, dhparam": cat(ecParamsPEM(t, oidP256), ecKeyPEM(t, ec), dhParamsPEM),
		"public key after":      cat(p8, pubPEM),
		"crl and certificate":   cat(p8, crl, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}})),
		"text between blocks":   cat(p8, []byte("Diffie-Hellman-Parameters: (256 bit)\n"), dhParamsPEM),
	} {
		k, err := ParseKeyPEM(b)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !publicKeyEqual(k.Public(), ec.Public()) {
			t.Errorf("%s: a different key", name)
		}
	}
}

// TestParseKeyPEMOpenSSL reads keys made by openssl's common commands, as
// an operator makes -ca-key, a node's or a relay's key.
func TestParseKeyPEMOpenSSL(t *testing.T) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed: skipping the test of keys it generates")
	}
	dir := t.TempDir()
	for _, c := range []struct {
		name  string
		args  []string
		check func(any) bool
	}{
		{"ecparam -genkey P-256", []string{"ecparam", "-genkey", "-name", "prime256v1"}, isCurve(elliptic.P256())},
		{"ecparam -genkey P-384", []string{"ecparam", "-genkey", "-name", "secp384r1"}, isCurve(elliptic.P384())},
		{"ecparam -genkey -noout", []string{"ecparam", "-genkey", "-noout", "-name", "prime256v1"}, isCurve(elliptic.P256())},
		{"genpkey EC P-256", []string{"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"}, isCurve(elliptic.P256())},
		{"genpkey ED25519", []string{"genpkey", "-algorithm", "ED25519"}, func(k any) bool { _, ok := k.(ed25519.PrivateKey); return ok }},
		{"genpkey RSA", []string{"genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"}, func(k any) bool { _, ok := k.(*rsa.PrivateKey); return ok }},
		{"genrsa -traditional", []string{"genrsa", "-traditional", "2048"}, func(k any) bool { _, ok := k.(*rsa.PrivateKey); return ok }},
	} {
		out := filepath.Join(dir, strings.NewReplacer(" ", "_", "-", "").Replace(c.name)+".pem")
		cmd := exec.Command(bin, append([]string{c.args[0], "-out", out}, c.args[1:]...)...)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: openssl: %v: %s", c.name, err, b)
			continue
		}
		if err := os.Chmod(out, 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := ReadKeyFile(out)
		if err != nil {
			b, _ := os.ReadFile(out)
			t.Errorf("%s: %v\n%s", c.name, err, firstLines(b))
			continue
		}
		if !c.check(k) {
			t.Errorf("%s: key of type %T", c.name, k)
		}
	}
}

func isCurve(c elliptic.Curve) func(any) bool {
	return func(k any) bool {
		ec, ok := k.(*ecdsa.PrivateKey)
		return ok && ec.Curve == c
	}
}

func firstLines(b []byte) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "-----") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
