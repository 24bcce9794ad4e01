package identity

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Regional intermediate CAs. A regional control plane holds a CA
// certificate signed by the global root so that it can join nodes and
// issue node certificates and workload SVIDs while the global control
// plane is unreachable. The intermediate:
//
//   - names its region (URI SAN spiffe://<td>/region/<name>), so that a
//     deny-list entry for the region refuses every chain through it
//     (CheckChains);
//   - has MaxPathLen 0: it cannot make another CA;
//   - carries a URI name constraint to the trust domain: whatever it signs
//     outside the trust domain fails verification everywhere;
//   - lives DefaultIntermediateTTL (30 days), renewed at half-life over
//     the regional plane's upstream link.
//
// Beside it the region gets a client certificate for the same ID, issued
// by the root directly, for its link to the global plane.

// DefaultIntermediateTTL is the lifetime of a regional intermediate CA
// certificate and of the region's client certificate.
const DefaultIntermediateTTL = 30 * 24 * time.Hour

// ErrNotRoot is returned when a CA that is itself an intermediate is
// asked to sign an intermediate (the root's path length leaves room for
// one level only).
var ErrNotRoot = errors.New("only a root CA signs regional intermediates")

// ErrRegionalCA is returned by Rotate on a regional intermediate: the
// global plane rotates the root, and the region renews its intermediate.
var ErrRegionalCA = errors.New("the CA is a regional intermediate: rotate the global root; the region renews its intermediate")

// RegionID returns the SPIFFE ID of a region (spiffe://<td>/region/<name>):
// its intermediate CA and its control plane's client certificate carry it.
func RegionID(td spiffeid.TrustDomain, name string) (spiffeid.ID, error) {
	if name == "" {
		return spiffeid.ID{}, errors.New("empty region name")
	}
	return spiffeid.FromSegments(td, "region", name)
}

// ParseRegionID returns the name of a region SPIFFE ID; ok is false for
// any other ID.
func ParseRegionID(id spiffeid.ID) (name string, ok bool) {
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 2 || parts[0] != "region" || parts[1] == "" {
		return "", false
	}
	return parts[1], true
}

// IsRoot reports whether the CA issues with a root (self-signed) rather
// than an intermediate.
func (ca *CA) IsRoot() bool {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return len(ca.chain) == 0
}

// Certificate returns the CA certificate that signs leaves now.
func (ca *CA) Certificate() *x509.Certificate {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.cert
}

// SignIntermediateCSR signs a regional intermediate CA certificate for
// region from a parsed and checked CSR: IsCA, MaxPathLen 0, keyCertSign,
// URI name constraint to the trust domain, lifetime ttl (0: the default),
// never past the root's. Only a root CA signs one.
func (ca *CA) SignIntermediateCSR(csr *x509.CertificateRequest, region string, ttl time.Duration) (*x509.Certificate, error) {
	id, err := RegionID(ca.td, region)
	if err != nil {
		return nil, fmt.Errorf("identity: region id: %w", err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	if ttl <= 0 {
		ttl = DefaultIntermediateTTL
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if len(ca.chain) > 0 {
		return nil, fmt.Errorf("identity: %w", ErrNotRoot)
	}
	now := ca.cfg.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{Organization: []string{"fogmesh"},
			CommonName: fmt.Sprintf("fogmesh region %s %s", region, ca.td.Name())},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		PermittedURIDomains:   []string{ca.td.Name()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, csr.PublicKey, ca.signer)
	if err != nil {
		return nil, fmt.Errorf("identity: sign intermediate for region %s: %w", region, err)
	}
	return x509.ParseCertificate(der)
}

// SignRegionCSR issues the client certificate of a region's control plane
// (spiffe://<td>/region/<name>, ttl 0: DefaultIntermediateTTL) from a
// parsed and checked CSR. Only a root CA signs one, so a regional
// intermediate cannot mint a region's identity.
func (ca *CA) SignRegionCSR(csr *x509.CertificateRequest, region string, ttl time.Duration) ([]*x509.Certificate, error) {
	if !ca.IsRoot() {
		return nil, fmt.Errorf("identity: %w", ErrNotRoot)
	}
	id, err := RegionID(ca.td, region)
	if err != nil {
		return nil, fmt.Errorf("identity: region id: %w", err)
	}
	if ttl <= 0 {
		ttl = DefaultIntermediateTTL
	}
	return ca.Sign(csr.PublicKey, id, IssueOptions{TTL: ttl})
}

// OpenIntermediateCA returns a CA that issues with an intermediate
// certificate (chain: the intermediate first, then any parents below the
// root) and its key, trusting roots. cfg's Dir, CertFile and KeyFile are
// not used: the caller keeps the files. Such a CA is never rotated; its
// certificate is replaced with SetIntermediate.
func OpenIntermediateCA(cfg CAConfig, chain []*x509.Certificate, key crypto.Signer, roots []*x509.Certificate) (*CA, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	td, err := ParseTrustDomain(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	ca := &CA{cfg: cfg, td: td, external: true, regional: true}
	if err := ca.SetIntermediate(chain, key, roots); err != nil {
		return nil, err
	}
	return ca, nil
}

// SetIntermediate replaces the issuing intermediate (after a renewal) and
// the trust anchors (after the root rotated): chain must be a CA
// certificate matching key that verifies, now, against one of roots.
func (ca *CA) SetIntermediate(chain []*x509.Certificate, key crypto.Signer, roots []*x509.Certificate) error {
	if len(chain) == 0 || len(roots) == 0 {
		return errors.New("identity: an intermediate CA needs its certificate and the roots")
	}
	c := chain[0]
	if !c.IsCA || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		return errors.New("identity: the intermediate is not a CA (basic constraints and keyCertSign)")
	}
	if !publicKeyEqual(key.Public(), c.PublicKey) {
		return errors.New("identity: the intermediate does not match its key")
	}
	rp, ip := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rp.AddCert(r)
	}
	for _, p := range chain[1:] {
		ip.AddCert(p)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: rp, Intermediates: ip, CurrentTime: ca.cfg.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("identity: the intermediate does not chain to the roots: %w", err)
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	ca.signer, ca.cert = key, c
	ca.chain = append([]*x509.Certificate(nil), chain...)
	ca.roots = append([]*x509.Certificate(nil), roots...)
	ca.until = make([]time.Time, len(roots))
	for i := 1; i < len(roots); i++ {
		ca.until[i] = roots[i].NotAfter // every root the global plane trusts, while valid
	}
	return nil
}

// CheckChains refuses a verified peer (id with its verified chains) when
// any chain passes through a CA whose URI SAN is on the deny list
// (denied): a revoked regional intermediate takes every certificate it
// issued with it, before they expire. It also refuses a region identity
// issued below a regional intermediate (a region's identity comes from the
// root only), and a region mark a regional CA signed, or of a region on
// the deny list (checkRegionMark).
func CheckChains(id spiffeid.ID, chains [][]*x509.Certificate, denied func(string) bool) error {
	for _, chain := range chains {
		if err := checkRegionMark(id, chain, denied); err != nil {
			return err
		}
		for _, c := range chain[min(1, len(chain)):] {
			for _, u := range c.URIs {
				if denied(u.String()) {
					return &HandshakeError{Reason: ReasonRevoked, Err: fmt.Errorf("%s was issued by %s, which is revoked", id, u)}
				}
				if cid, err := spiffeid.FromURI(u); err == nil {
					if _, ok := ParseRegionID(cid); ok && len(chain) > 2 {
						if _, isRegion := ParseRegionID(id); isRegion {
							return &HandshakeError{Reason: ReasonUnauthorized, Err: fmt.Errorf("%s was issued by regional CA %s: a region identity comes from the root only", id, u)}
						}
					}
				}
			}
		}
	}
	return nil
}

// IssuingRegion returns the region whose intermediate issued the leaf of
// chain (leaf first: a verified chain, or the certificates a verified peer
// sent), or "" when the root did.
func IssuingRegion(chain []*x509.Certificate) string {
	for _, c := range chain[min(1, len(chain)):] {
		if !c.IsCA {
			continue
		}
		for _, u := range c.URIs {
			if cid, err := spiffeid.FromURI(u); err == nil {
				if name, ok := ParseRegionID(cid); ok {
					return name
				}
			}
		}
	}
	return ""
}

// PublicKeyEqual reports whether two public keys are the same key.
func PublicKeyEqual(a, b crypto.PublicKey) bool { return publicKeyEqual(a, b) }
