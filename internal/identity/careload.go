package identity

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// CAStateFile is the CA state in a CA directory (the active and previous
// roots, the key file's name).
const CAStateFile = "ca.json"

// CheckCAFiles checks a CA directory's files (file name → content, as
// control plane replicas share them) before they replace the ones on
// disk: the CA state loads for the trust domain (default when ""), with
// the key it names among the files.
func CheckCAFiles(trustDomain string, files map[string][]byte) error {
	td, err := ParseTrustDomain(trustDomain)
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	st, ok := files[CAStateFile]
	if !ok {
		return errors.New("identity: CA files: no " + CAStateFile)
	}
	next := &CA{td: td}
	return next.loadWith(st, func(name string) (crypto.Signer, error) {
		b, ok := files[name]
		if !ok {
			return nil, fmt.Errorf("identity: CA files: no key file %q", name)
		}
		k, err := ParseKeyPEM(b)
		if err != nil {
			return nil, fmt.Errorf("identity: key %s: %w", name, err)
		}
		return k, nil
	})
}

// Reload reads the CA state from Dir again, after another control plane
// replica rotated the CA and its files were written here. An
// operator-provided CA is not reloaded. On error the CA is unchanged.
func (ca *CA) Reload() error {
	if ca.external {
		return nil
	}
	b, err := os.ReadFile(ca.statePath())
	if err != nil {
		return fmt.Errorf("identity: reload CA: %w", err)
	}
	next := &CA{cfg: ca.cfg, td: ca.td}
	if err := next.load(b); err != nil {
		return fmt.Errorf("identity: reload CA %s: %w", ca.statePath(), err)
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.signer, ca.cert, ca.chain, ca.keyFile = next.signer, next.cert, next.chain, next.keyFile
	ca.roots, ca.until = next.roots, next.until
	return nil
}

func (ca *CA) load(b []byte) error {
	return ca.loadWith(b, func(name string) (crypto.Signer, error) { return readKey(filepath.Join(ca.cfg.Dir, name)) })
}

// loadWith loads the CA state b, reading the key file it names (a base
// name) with readKey.
func (ca *CA) loadWith(b []byte, readKey func(name string) (crypto.Signer, error)) error {
	var st caState
	if err := json.Unmarshal(b, &st); err != nil {
		return err
	}
	if st.TrustDomain != ca.td.Name() {
		return fmt.Errorf("holds trust domain %q, configured %q (the trust domain cannot change)", st.TrustDomain, ca.td.Name())
	}
	cert, err := parseOneCert([]byte(st.Active))
	if err != nil {
		return fmt.Errorf("active root: %w", err)
	}
	if !isCACert(cert) {
		return errors.New("active root: not a CA (basic constraints and keyCertSign)")
	}
	if err := ca.checkRootTD(cert); err != nil {
		return fmt.Errorf("active root: %w", err)
	}
	key, err := readKey(filepath.Base(st.KeyFile))
	if err != nil {
		return err
	}
	if !publicKeyEqual(key.Public(), cert.PublicKey) {
		return errors.New("active root and key do not match")
	}
	ca.signer, ca.cert, ca.keyFile = key, cert, filepath.Base(st.KeyFile)
	ca.roots, ca.until = []*x509.Certificate{cert}, []time.Time{{}}
	for i, p := range st.Previous {
		c, err := parseOneCert([]byte(p.Cert))
		if err != nil {
			return fmt.Errorf("previous root %d: %w", i, err)
		}
		if !isCACert(c) {
			return fmt.Errorf("previous root %d: not a CA (basic constraints and keyCertSign)", i)
		}
		if err := ca.checkRootTD(c); err != nil {
			return fmt.Errorf("previous root %d: %w", i, err)
		}
		ca.roots = append(ca.roots, c)
		ca.until = append(ca.until, p.Until)
	}
	return nil
}

// isCACert reports whether c may issue: a CA by its basic constraints,
// with keyCertSign.
func isCACert(c *x509.Certificate) bool {
	return c.BasicConstraintsValid && c.IsCA && c.KeyUsage&x509.KeyUsageCertSign != 0
}

// checkRootTD reports whether root names the CA's trust domain as its only
// URI SAN (spiffe://<td>, as rotateLocked makes a root): the roots of
// another trust domain's state would sign this one's certificates.
func (ca *CA) checkRootTD(root *x509.Certificate) error {
	want := ca.td.ID().String()
	if len(root.URIs) != 1 || root.URIs[0].String() != want {
		names := make([]string, len(root.URIs))
		for i, u := range root.URIs {
			names[i] = u.String()
		}
		return fmt.Errorf("names %q, not trust domain %s", names, want)
	}
	return nil
}
