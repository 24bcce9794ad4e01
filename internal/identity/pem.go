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
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// maxPEM bounds what the parsers here accept: a bundle of a few dozen roots
// fits many times over.
const maxPEM = 1 << 20

// ParseCertificatesPEM parses one or more PEM CERTIFICATE blocks. Anything
// else (other block types, trailing garbage, no certificate) is an error.
func ParseCertificatesPEM(b []byte) ([]*x509.Certificate, error) {
	blocks, err := pemBlocks(b, "certificate")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadBundle, err)
	}
	var out []*x509.Certificate
	for _, blk := range blocks {
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: unexpected PEM block %q", ErrBadBundle, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadBundle, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// pemBlocks decodes every PEM block of b, a file of at most maxPEM bytes
// holding nothing but blocks after them (text before the first is
// ignored, as pem.Decode does); what names the blocks looked for in its
// errors, one of which there must be at least.
func pemBlocks(b []byte, what string) ([]*pem.Block, error) {
	if len(b) > maxPEM {
		return nil, fmt.Errorf("%s file of %d bytes, max %d", what, len(b), maxPEM)
	}
	var blocks []*pem.Block
	rest := b
	for {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		blocks = append(blocks, blk)
	}
	switch {
	case len(bytes.TrimSpace(rest)) > 0 && len(blocks) == 0:
		return nil, fmt.Errorf("no PEM %s (not PEM)", what)
	case len(bytes.TrimSpace(rest)) > 0:
		return nil, errors.New("trailing data after the last PEM block")
	case len(blocks) == 0:
		return nil, fmt.Errorf("no PEM %s", what)
	}
	return blocks, nil
}

// ParseBundlePEM parses a trust bundle file: PEM CA certificates. Every
// certificate must be a CA (basic constraints, keyCertSign).
func ParseBundlePEM(b []byte) ([]*x509.Certificate, error) {
	certs, err := ParseCertificatesPEM(b)
	if err != nil {
		return nil, err
	}
	for i, c := range certs {
		if !c.BasicConstraintsValid || !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 {
			return nil, fmt.Errorf("%w: certificate %d (%s) is not a CA", ErrBadBundle, i, c.Subject)
		}
	}
	return certs, nil
}

func parseOneCert(b []byte) (*x509.Certificate, error) {
	certs, err := ParseCertificatesPEM(b)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("want one certificate, have %d", len(certs))
	}
	return certs[0], nil
}

// EncodeCertificatesPEM encodes certificates as PEM.
func EncodeCertificatesPEM(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// DERs returns the certificates' DER bytes.
func DERs(certs []*x509.Certificate) [][]byte {
	out := make([][]byte, len(certs))
	for i, c := range certs {
		out[i] = c.Raw
	}
	return out
}

// ParseDERs parses DER certificates.
func ParseDERs(ders [][]byte) ([]*x509.Certificate, error) {
	if len(ders) == 0 {
		return nil, errors.New("no certificate")
	}
	out := make([]*x509.Certificate, len(ders))
	for i, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", i, err)
		}
		out[i] = c
	}
	return out, nil
}

// Pin is the hex SHA-256 of a certificate's SubjectPublicKeyInfo, the form
// kubeadm's discovery hash uses. Join tokens carry the pin of the root.
func Pin(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// NewKey generates an ECDSA P-256 private key.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// EncodeKeyPEM encodes a private key as PKCS #8 PEM.
func EncodeKeyPEM(key crypto.Signer) ([]byte, error) {
	b, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: b}), nil
}

// ParseKeyPEM parses a PEM file holding exactly one private key: PKCS #8
// ("PRIVATE KEY"), EC ("EC PRIVATE KEY") or PKCS #1 ("RSA PRIVATE KEY").
// "EC PARAMETERS" blocks (what `openssl ecparam -genkey` writes before the
// key) are skipped, but must name the key's curve, and so is every block
// that is not a private key (its type not ending in "PRIVATE KEY"):
// CERTIFICATE (a combined key and chain file), DH PARAMETERS, .... Text
// before a block is ignored (as for certificates); a second key block,
// another private key type or non-PEM data after the last block is an
// error.
func ParseKeyPEM(b []byte) (crypto.Signer, error) {
	blocks, err := pemBlocks(b, "private key")
	if err != nil {
		return nil, err
	}
	var (
		key    *pem.Block
		params []asn1.ObjectIdentifier
	)
	for _, blk := range blocks {
		switch blk.Type {
		case "EC PARAMETERS":
			var oid asn1.ObjectIdentifier
			if tail, err := asn1.Unmarshal(blk.Bytes, &oid); err != nil || len(tail) > 0 {
				return nil, errors.New("EC PARAMETERS block is not a named curve")
			}
			params = append(params, oid)
		case "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY":
			if key != nil {
				return nil, fmt.Errorf("more than one private key (a %q block after a %q block); want exactly one", blk.Type, key.Type)
			}
			key = blk
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("encrypted private key (ENCRYPTED PRIVATE KEY) not supported; decrypt it first")
		default:
			if strings.HasSuffix(blk.Type, "PRIVATE KEY") { // OPENSSH, DSA, ...
				return nil, fmt.Errorf("private key block %q not supported (PKCS #8, EC or PKCS #1)", blk.Type)
			}
			// Not a key: CERTIFICATE (a combined key and chain file), DH
			// PARAMETERS, a CRL, ... The first-block parse of old read the
			// key when it came first and nothing after it.
		}
	}
	if key == nil {
		return nil, errors.New("no PEM private key")
	}
	if strings.Contains(key.Headers["Proc-Type"], "ENCRYPTED") {
		return nil, fmt.Errorf("encrypted %s (Proc-Type header) not supported; decrypt it first", key.Type)
	}
	var k any
	switch key.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(key.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(key.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(key.Bytes)
	}
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported key type %T", k)
	}
	for _, oid := range params {
		if err := curveMatches(oid, s.Public()); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// namedCurves maps the named-curve OIDs (RFC 5480) to Go's curves.
var namedCurves = []struct {
	oid   asn1.ObjectIdentifier
	curve elliptic.Curve
}{
	{asn1.ObjectIdentifier{1, 3, 132, 0, 33}, elliptic.P224()},
	{asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}, elliptic.P256()},
	{asn1.ObjectIdentifier{1, 3, 132, 0, 34}, elliptic.P384()},
	{asn1.ObjectIdentifier{1, 3, 132, 0, 35}, elliptic.P521()},
}

// curveMatches checks that an EC PARAMETERS block's curve is the key's.
func curveMatches(oid asn1.ObjectIdentifier, pub crypto.PublicKey) error {
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return fmt.Errorf("EC PARAMETERS block (curve %s) with a non-EC key", oid)
	}
	for _, c := range namedCurves {
		if c.oid.Equal(oid) {
			if c.curve != ec.Curve {
				return fmt.Errorf("EC PARAMETERS block names curve %s but the key is on %s", c.curve.Params().Name, ec.Curve.Params().Name)
			}
			return nil
		}
	}
	return fmt.Errorf("EC PARAMETERS block names curve %s, not the key's %s", oid, ec.Curve.Params().Name)
}

// readKey reads a private key file, refusing one that others can read.
func readKey(path string) (crypto.Signer, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("identity: key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("identity: key %s has mode %v; want 0600", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity: key: %w", err)
	}
	k, err := ParseKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("identity: key %s: %w", path, err)
	}
	return k, nil
}

// ReadKeyFile reads a PEM private key that must have mode 0600 or stricter.
func ReadKeyFile(path string) (crypto.Signer, error) { return readKey(path) }

func publicKeyEqual(a, b crypto.PublicKey) bool {
	type eq interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(eq)
	return ok && e.Equal(b)
}

// checkPublicKey accepts the key types fogmesh issues for: ECDSA P-256 and
// P-384, Ed25519, RSA of 2048 bits or more.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("%w: ECDSA curve %s not accepted (P-256 or P-384)", ErrBadCSR, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("%w: RSA key of %d bits, want 2048 or more", ErrBadCSR, k.N.BitLen())
		}
	default:
		return fmt.Errorf("%w: key type %T not accepted", ErrBadCSR, pub)
	}
	return nil
}

// WriteFileAtomic writes b to path through a temporary file in the same
// directory, fsynced and renamed, so a crash leaves the old file or the new
// one, never a torn one.
func WriteFileAtomic(path string, b []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename this fails harmlessly
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
