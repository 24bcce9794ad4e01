package identity

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
)

// MaxCSR bounds a CSR's size (DER or PEM).
const MaxCSR = 16 << 10

// NewCSR makes a certificate request for key. The CA ignores every name in
// it (it sets the SPIFFE ID itself); the request proves possession of key.
func NewCSR(key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("identity: create CSR: %w", err)
	}
	return der, nil
}

// ParseCSR parses a CSR in DER or PEM, checks its self-signature and that
// its key is of an accepted type. Errors wrap ErrBadCSR.
func ParseCSR(b []byte) (*x509.CertificateRequest, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrBadCSR)
	}
	if len(b) > MaxCSR {
		return nil, fmt.Errorf("%w: %d bytes, max %d", ErrBadCSR, len(b), MaxCSR)
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "CERTIFICATE REQUEST" && blk.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: PEM block %q", ErrBadCSR, blk.Type)
		}
		b = blk.Bytes
	}
	csr, err := x509.ParseCertificateRequest(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrBadCSR, err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return csr, nil
}
