package identity

import (
	"crypto/x509"
	"fmt"
)

// NodeSource issues a node identity for site/node the way an agent gets
// one (a fresh key, a CSR, the CA's signature) and returns it as a Source
// trusting ca's bundle: for a process that holds the CA itself (the demo,
// benchmarks, tests) and needs a node without the join protocol.
func (ca *CA) NodeSource(site, node string) (*Source, error) {
	return ca.issueSource(func(csr *x509.CertificateRequest) ([]*x509.Certificate, error) {
		return ca.SignNodeCSR(csr, site, node)
	})
}

// RelaySource is NodeSource for a relay identity (RelayID).
func (ca *CA) RelaySource(name string) (*Source, error) {
	return ca.issueSource(func(csr *x509.CertificateRequest) ([]*x509.Certificate, error) {
		return ca.SignRelayCSR(csr, name)
	})
}

func (ca *CA) issueSource(sign func(*x509.CertificateRequest) ([]*x509.Certificate, error)) (*Source, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	der, err := NewCSR(key)
	if err != nil {
		return nil, err
	}
	csr, err := ParseCSR(der)
	if err != nil {
		return nil, err
	}
	certs, err := sign(csr)
	if err != nil {
		return nil, err
	}
	svid, err := NewSVID(certs, key)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	src := NewSource()
	src.SetSVID(svid)
	src.SetBundles(ca.Bundle())
	return src, nil
}
