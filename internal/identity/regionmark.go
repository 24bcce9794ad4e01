package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Region marks. A regional CA's node is in its CA's region at every
// control plane (IssuingRegion reads it from the chain). When the global
// control plane renews such a node's certificate from the root (its
// regional plane is down, say), the root vouches for that region in the
// certificate itself: the subject's organizational unit "region/NAME".
// Every control plane then reads the node's region from the certificate
// (ChainRegion), not only the one that remembers the node's binding.
//
// A subject attribute, not a second URI SAN (an X509-SVID has exactly one,
// its SPIFFE ID, which the mark leaves as it was) nor a private extension
// (fogmesh has no OID arc of its own): verifiers that do not read the mark
// (agents' mesh peers, any SPIFFE verifier) ignore a subject. Only the
// root vouches for a mark: a regional CA refuses to issue one, and a mark
// on a certificate a regional intermediate signed is refused by every
// verifier (CheckChains), else a stolen regional key would mint nodes of
// another region.

// regionMarkPrefix begins the subject OU that marks a region.
const regionMarkPrefix = "region/"

// RegionMark returns the region leaf's subject marks, "" for none. More
// than one mark, or one that is not a region name, is an error.
func RegionMark(leaf *x509.Certificate) (string, error) {
	region := ""
	for _, ou := range leaf.Subject.OrganizationalUnit {
		name, ok := strings.CutPrefix(ou, regionMarkPrefix)
		if !ok {
			continue
		}
		if region != "" {
			return "", errors.New("two region marks")
		}
		if err := checkRegionName(name); err != nil {
			return "", fmt.Errorf("region mark %q: %w", ou, err)
		}
		region = name
	}
	return region, nil
}

// checkRegionName reports whether name can be a region's: one segment of
// a region ID (RegionID), so not empty, "." or "..", and without "/".
func checkRegionName(name string) error {
	return spiffeid.ValidatePathSegment(name)
}

// ChainRegion returns the region a verified chain (leaf first, up to a
// root) puts its leaf in: the region of the intermediate CA that issued
// it (IssuingRegion), else the region the root marked in it (marked true;
// "" for neither). A mark below a regional CA is an error, as at the
// handshake (CheckChains).
func ChainRegion(chain []*x509.Certificate) (region string, marked bool, err error) {
	if len(chain) == 0 {
		return "", false, errors.New("no certificate")
	}
	mark, err := RegionMark(chain[0])
	if err != nil {
		return "", false, err
	}
	if r := IssuingRegion(chain); r != "" {
		if mark != "" {
			return "", false, fmt.Errorf("a certificate of region %s's CA marked for region %s: a region mark comes from the root only", r, mark)
		}
		return r, false, nil
	}
	return mark, mark != "", nil
}

// checkRegionMark refuses (for CheckChains) a chain whose leaf, id, has a
// malformed region mark, a mark signed by a regional CA (any CA of chain
// carrying a region ID whose key signed the leaf: chain may be what a
// peer sent, a CA sent besides names nothing), or a mark of a region on
// the deny list (the root marks the nodes of a region's CA, which the
// region's revocation takes with it).
func checkRegionMark(id spiffeid.ID, chain []*x509.Certificate, denied func(string) bool) error {
	if len(chain) == 0 {
		return nil
	}
	leaf := chain[0]
	mark, err := RegionMark(leaf)
	if err != nil {
		return &HandshakeError{Reason: ReasonBadCertificate, Err: fmt.Errorf("%s: %w", id, err)}
	}
	if mark == "" {
		return nil
	}
	for _, c := range chain[1:] {
		if r := IssuingRegion([]*x509.Certificate{leaf, c}); r != "" && leaf.CheckSignatureFrom(c) == nil {
			return &HandshakeError{Reason: ReasonUnauthorized,
				Err: fmt.Errorf("%s is marked for region %s by region %s's CA: a region mark comes from the root only", id, mark, r)}
		}
	}
	if rid, err := RegionID(id.TrustDomain(), mark); err == nil && denied(rid.String()) {
		return &HandshakeError{Reason: ReasonRevoked, Err: fmt.Errorf("%s is marked for region %s, which is revoked", id, mark)}
	}
	return nil
}
