// Package identity is fogmesh's built-in certificate authority and the
// SPIFFE identities it issues: the CA the control plane keeps in its state
// directory (or an operator-provided one), node certificates issued from a
// CSR at join and renewal, workload X.509-SVIDs, CA rotation with an overlap
// window, join and admin tokens, and the TLS configurations every fogmesh
// connection uses (sync stream, mesh port, admin API).
//
// It exists so that issuance, verification and the atomic-pointer sources
// that let certificates rotate under open listeners live in one place that
// both the control plane and the lean agent can import: it depends on the
// standard library and go-spiffe's spiffeid, x509svid, x509bundle and
// tlsconfig packages only (never workloadapi, never bbolt).
//
// Identities (api/identity.go):
//
//	node      spiffe://<td>/site/<site>/node/<node>   EKU client+server, TTL 7 days
//	workload  spiffe://<td>/ns/<ns>/sa/<account>      EKU client+server, TTL 1h, in batches (batch.go)
//	relay     spiffe://<td>/relay/<name>               a relay (fogmesh relay), EKU client+server, node TTL
//	control   spiffe://<td>/control                    the control plane's serving certificate
//	admin     spiffe://<td>/admin/<name>               an admin client certificate
//
// Private keys are generated where they are used and never leave that host:
// agents send a CSR, the control plane answers with a certificate.
package identity

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/api"
)

// Errors callers branch on.
var (
	// ErrBadCSR is wrapped by every CSR parsing or policy failure.
	ErrBadCSR = errors.New("bad certificate request")
	// ErrBadToken is wrapped by every token parsing failure.
	ErrBadToken = errors.New("bad token")
	// ErrBadBundle is wrapped by every trust bundle parsing failure.
	ErrBadBundle = errors.New("bad trust bundle")
	// ErrExternalCA is returned by Rotate when the CA was provided by the
	// operator: rotate it by replacing its files.
	ErrExternalCA = errors.New("the CA is operator-provided; replace its files to rotate it")
)

// ParseTrustDomain parses a trust domain name (not a URI), falling back to
// api.DefaultTrustDomain for "".
func ParseTrustDomain(name string) (spiffeid.TrustDomain, error) {
	if name == "" {
		name = api.DefaultTrustDomain
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %q: %w", name, err)
	}
	if strings.Contains(name, "://") {
		return spiffeid.TrustDomain{}, fmt.Errorf("trust domain %q: give the name, not a URI", name)
	}
	return td, nil
}

// ParseBundleName parses the name a trust document keys a bundle by: a
// trust domain's name exactly as it is written ("" is no name here, though
// ParseTrustDomain reads it as the default domain: a bundle under "" beside
// the default domain's would be a second bundle for one domain).
func ParseBundleName(name string) (spiffeid.TrustDomain, error) {
	td, err := ParseTrustDomain(name)
	if err == nil && td.Name() != name {
		return spiffeid.TrustDomain{}, fmt.Errorf("bundle %q: trust domain %s is written %q", name, td.Name(), td.Name())
	}
	return td, err
}

// CanonicalIDs returns the entries of a deny list (a trust document's
// revoked IDs) that are SPIFFE IDs written canonically, as spiffeid.ID's
// String gives them, and an error naming each other entry: the deny list
// matches a peer by its ID's string, so another spelling
// ("spiffe://td/a#b", "SPIFFE://td/a", "") denies no one.
func CanonicalIDs(ids []string) ([]string, error) {
	kept := make([]string, 0, len(ids))
	var errs []error
	for i, s := range ids {
		if id, err := spiffeid.FromString(s); err != nil || id.String() != s {
			errs = append(errs, fmt.Errorf("revoked[%d] %q is not a SPIFFE ID written canonically", i, s))
			continue
		}
		kept = append(kept, s)
	}
	return kept, errors.Join(errs...)
}

// NodeID returns the SPIFFE ID of a node's agent.
func NodeID(td spiffeid.TrustDomain, site, node string) (spiffeid.ID, error) {
	return spiffeid.FromString(api.NodeID(td.Name(), site, node))
}

// ControlID is the SPIFFE ID of the control plane's serving certificate.
func ControlID(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromSegments(td, "control")
}

// AdminID is the SPIFFE ID of an admin client certificate named name.
func AdminID(td spiffeid.TrustDomain, name string) (spiffeid.ID, error) {
	return spiffeid.FromSegments(td, "admin", name)
}

// ParseNodeID returns the site and node name of a node SPIFFE ID
// (spiffe://<td>/site/<site>/node/<node>); ok is false for any other ID.
func ParseNodeID(id spiffeid.ID) (site, node string, ok bool) {
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "site" || parts[2] != "node" || parts[1] == "" || parts[3] == "" {
		return "", "", false
	}
	return parts[1], parts[3], true
}

// IsAdminID reports whether id is an admin client identity of td.
func IsAdminID(td spiffeid.TrustDomain, id spiffeid.ID) bool {
	return id.MemberOf(td) && strings.HasPrefix(id.Path(), "/admin/")
}

// RelayID returns the SPIFFE ID of a relay named name
// (spiffe://<td>/relay/<name>): agents tell a relay apart from a node by
// it, and a relay certificate can never pass as a node's.
func RelayID(td spiffeid.TrustDomain, name string) (spiffeid.ID, error) {
	if name == "" {
		return spiffeid.ID{}, errors.New("empty relay name")
	}
	return spiffeid.FromSegments(td, "relay", name)
}

// ParseRelayID returns the name of a relay SPIFFE ID; ok is false for any
// other ID.
func ParseRelayID(id spiffeid.ID) (name string, ok bool) {
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 2 || parts[0] != "relay" || parts[1] == "" {
		return "", false
	}
	return parts[1], true
}
