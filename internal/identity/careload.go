package identity

import (
	"crypto"
	"errors"
	"fmt"
	"os"
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
