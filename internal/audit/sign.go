package audit

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
)

// sign signs a record hash (hex) with s.
func sign(s crypto.Signer, hash string) (string, error) {
	digest, err := hex.DecodeString(hash)
	if err != nil {
		return "", err
	}
	var opts crypto.SignerOpts = crypto.SHA256
	if _, ok := s.Public().(ed25519.PublicKey); ok {
		opts = crypto.Hash(0) // Ed25519 signs the digest as its message
	}
	sig, err := s.Sign(rand.Reader, digest, opts)
	if err != nil {
		return "", fmt.Errorf("audit: sign checkpoint: %w", err)
	}
	return base64.StdEncoding.EncodeToString(sig), nil
}

// ErrBadSignature is reported for a checkpoint whose signature does not
// verify with the given key.
var ErrBadSignature = errors.New("checkpoint signature does not verify")

// VerifySignature checks a checkpoint's Sig against its Hash with pub
// (*ecdsa.PublicKey, ed25519.PublicKey or *rsa.PublicKey). It does not
// check the hash itself (DecodeLine does).
func VerifySignature(pub crypto.PublicKey, r *Record) error {
	digest, err := hex.DecodeString(r.Hash)
	if err != nil || len(digest) != sha256.Size {
		return fmt.Errorf("seq %d: %w: bad hash", r.Seq, ErrBadSignature)
	}
	sig, err := base64.StdEncoding.DecodeString(r.Sig)
	if err != nil || len(sig) == 0 {
		return fmt.Errorf("seq %d: %w: no signature", r.Seq, ErrBadSignature)
	}
	ok := false
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		ok = ecdsa.VerifyASN1(k, digest, sig)
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, digest, sig)
	case *rsa.PublicKey:
		ok = rsa.VerifyPKCS1v15(k, crypto.SHA256, digest, sig) == nil
	default:
		return fmt.Errorf("audit: unsupported public key type %T", pub)
	}
	if !ok {
		return fmt.Errorf("seq %d: %w", r.Seq, ErrBadSignature)
	}
	return nil
}

// KeyID names a public key in checkpoints: the first 16 hex digits of the
// SHA-256 of its PKIX encoding.
func KeyID(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "unknown"
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:8])
}

// ParsePublicKeyPEM reads a public key from PEM: a CERTIFICATE (its
// subject key), a PUBLIC KEY (PKIX) or an EC/RSA key. The first block
// that holds a key wins.
func ParsePublicKeyPEM(b []byte) (crypto.PublicKey, error) {
	for len(b) > 0 {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		switch blk.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("certificate: %w", err)
			}
			return c.PublicKey, nil
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("public key: %w", err)
			}
			return k, nil
		case "RSA PUBLIC KEY":
			k, err := x509.ParsePKCS1PublicKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("rsa public key: %w", err)
			}
			return k, nil
		}
	}
	return nil, errors.New("no CERTIFICATE or PUBLIC KEY block in PEM")
}
