package relay

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"

	"github.com/fogmesh/fogmesh/internal/atomicfile"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// applyTrust installs the bundles and the deny list (through setDenied
// when set, so that open connections of newly revoked nodes close) and, if
// save, writes the trust file with the revoked IDs it applied.
func (m *Member) applyTrust(t *wire.Trust, setDenied func([]string), save bool) error {
	td, err := identity.ParseTrustDomain(t.TrustDomain)
	if err != nil || t.TrustDomain == "" {
		return fmt.Errorf("trust: trust domain %q: %v", t.TrustDomain, err)
	}
	m.mu.Lock()
	cur := m.td
	m.mu.Unlock()
	if !cur.IsZero() && td != cur {
		return fmt.Errorf("trust: control plane is in trust domain %s, this relay in %s", td, cur)
	}
	if len(t.Bundles[td.Name()]) == 0 {
		return errors.New("trust: no roots for the own trust domain")
	}
	var bundles []*x509bundle.Bundle
	for name, ders := range t.Bundles {
		btd, err := identity.ParseBundleName(name)
		if err != nil {
			return fmt.Errorf("trust: %w", err)
		}
		certs, err := identity.ParseDERs(ders)
		if err != nil {
			return fmt.Errorf("trust: bundle %s: %w", name, err)
		}
		bundles = append(bundles, x509bundle.FromX509Authorities(btd, certs))
	}
	// A revoked entry not written canonically would deny no one: it is
	// dropped with a warning, not the whole trust (after a damaged
	// trust.json the relay could not start without a token).
	denied, err := identity.CanonicalIDs(t.Revoked)
	if err != nil {
		m.log.Warn("relay: trust: revoked entries dropped", "err", err)
	}
	m.src.SetBundles(bundles...)
	if setDenied != nil {
		setDenied(denied)
	} else {
		m.src.SetDenied(denied)
	}
	m.mu.Lock()
	m.td, m.denied = td, denied
	m.mu.Unlock()
	if save {
		c := *t
		c.GossipKey = nil // never on a relay's disk
		// What applied, not what came: a restart takes the same deny
		// list without dropping (and warning of) the same entries again.
		c.Revoked = denied
		b, _ := json.MarshalIndent(&c, "", "  ")
		if err := atomicfile.Write(m.path(MemberTrustFile), b, 0o644); err != nil {
			return fmt.Errorf("trust: save: %w", err)
		}
	}
	return nil
}
