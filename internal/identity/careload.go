package identity

import (
	"fmt"
	"os"
)

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
