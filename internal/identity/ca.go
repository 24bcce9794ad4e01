package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults of CAConfig.
const (
	// DefaultNodeTTL is a week: renewed at half its life (svid.NodeRenewAt),
	// a node certificate always has 84 h left, more than the 72 h a site
	// must run cut off from every control plane (docs/offline.md).
	DefaultNodeTTL     = 7 * 24 * time.Hour
	DefaultWorkloadTTL = time.Hour
	DefaultRootTTL     = 5 * 365 * 24 * time.Hour
	// DefaultOverlap exceeds DefaultNodeTTL, so every node renews from the
	// new root before the old one leaves the bundle.
	DefaultOverlap = 8 * 24 * time.Hour
	// ClockSkew is how far back NotBefore is set on every certificate, so
	// a node whose clock runs a little behind accepts it at once.
	ClockSkew = 5 * time.Minute
)

// CAConfig configures a CA. The zero value works except Dir.
type CAConfig struct {
	// Dir holds the CA state: ca.json (certificates, public) and the
	// active root's key ca-key-<serial>.pem (mode 0600). Required unless
	// CertFile and KeyFile are given.
	Dir string
	// TrustDomain names the trust domain (default api.DefaultTrustDomain).
	// It cannot change once Dir holds a CA.
	TrustDomain string
	// CertFile and KeyFile, if both set, are an operator-provided CA
	// certificate and its key (PEM). CertFile may hold the CA certificate
	// followed by its parents up to a root; the last one is the trust
	// anchor. Such a CA is never rotated by fogmesh.
	CertFile, KeyFile string
	// NodeTTL is the lifetime of node certificates (default 7 days).
	NodeTTL time.Duration
	// WorkloadTTL is the default lifetime of workload SVIDs (default 1h).
	WorkloadTTL time.Duration
	// RootTTL is the lifetime of a generated root (default 5 years).
	RootTTL time.Duration
	// Overlap is how long a rotated-out root stays in the trust bundle
	// (default 8 days). It must exceed NodeTTL so that every node renews
	// from the new root before the old one is dropped.
	Overlap time.Duration
	// Now is the clock (default time.Now); tests move it.
	Now func() time.Time
}

func (c *CAConfig) validate() error {
	if c.Dir == "" && (c.CertFile == "" || c.KeyFile == "") {
		return errors.New("identity: CA needs a state directory or a certificate and key file")
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return errors.New("identity: CA certificate and key files go together")
	}
	return c.defaults()
}

// defaults fills in the zero durations and the clock.
func (c *CAConfig) defaults() error {
	for _, d := range []struct {
		p   *time.Duration
		def time.Duration
	}{{&c.NodeTTL, DefaultNodeTTL}, {&c.WorkloadTTL, DefaultWorkloadTTL}, {&c.RootTTL, DefaultRootTTL}, {&c.Overlap, DefaultOverlap}} {
		if *d.p < 0 {
			return errors.New("identity: negative duration in CA config")
		}
		if *d.p == 0 {
			*d.p = d.def
		}
	}
	if c.Overlap <= c.NodeTTL {
		return fmt.Errorf("identity: rotation overlap %s must exceed the node TTL %s, or nodes cut off during a rotation lose the root their certificate chains to", c.Overlap, c.NodeTTL)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// CA issues node certificates and workload SVIDs. It is safe for concurrent
// use.
type CA struct {
	cfg      CAConfig
	td       spiffeid.TrustDomain
	external bool
	regional bool // OpenIntermediateCA

	mu sync.Mutex // guards the following
	// signer and cert issue; chain is what follows a leaf in the chains
	// handed out (intermediates up to, not including, the root).
	signer crypto.Signer
	cert   *x509.Certificate
	chain  []*x509.Certificate
	// roots are the trust anchors: the active one first, then rotated-out
	// ones until their until time.
	roots   []*x509.Certificate
	until   []time.Time // until[i] for roots[i]; zero for the active one
	keyFile string
}

// caState is ca.json.
type caState struct {
	TrustDomain string      `json:"trustDomain"`
	Active      string      `json:"active"`  // PEM
	KeyFile     string      `json:"keyFile"` // base name in Dir
	Previous    []prevState `json:"previous,omitempty"`
}

type prevState struct {
	Cert  string    `json:"cert"` // PEM
	Until time.Time `json:"until"`
}

// OpenCA loads the CA from cfg.Dir, creating a new root there on first use,
// or loads the operator-provided CertFile and KeyFile.
func OpenCA(cfg CAConfig) (*CA, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	td, err := ParseTrustDomain(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	ca := &CA{cfg: cfg, td: td}
	if cfg.CertFile != "" {
		if err := ca.loadExternal(); err != nil {
			return nil, err
		}
		return ca, nil
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity: CA dir: %w", err)
	}
	b, err := os.ReadFile(ca.statePath())
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := ca.rotateLocked(); err != nil {
			return nil, err
		}
		return ca, nil
	case err != nil:
		return nil, fmt.Errorf("identity: %w", err)
	}
	if err := ca.load(b); err != nil {
		return nil, fmt.Errorf("identity: %s: %w", ca.statePath(), err)
	}
	return ca, nil
}

func (ca *CA) statePath() string { return filepath.Join(ca.cfg.Dir, CAStateFile) }

func (ca *CA) loadExternal() error {
	cb, err := os.ReadFile(ca.cfg.CertFile)
	if err != nil {
		return fmt.Errorf("identity: CA certificate: %w", err)
	}
	certs, err := ParseCertificatesPEM(cb)
	if err != nil {
		return fmt.Errorf("identity: CA certificate %s: %w", ca.cfg.CertFile, err)
	}
	key, err := readKey(ca.cfg.KeyFile)
	if err != nil {
		return err
	}
	if !certs[0].IsCA || certs[0].KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("identity: %s: the first certificate is not a CA (basic constraints and keyCertSign)", ca.cfg.CertFile)
	}
	if !publicKeyEqual(key.Public(), certs[0].PublicKey) {
		return fmt.Errorf("identity: %s and %s do not match", ca.cfg.CertFile, ca.cfg.KeyFile)
	}
	root := certs[len(certs)-1]
	ca.external = true
	ca.signer, ca.cert = key, certs[0]
	ca.chain = certs[:len(certs)-1] // empty when the CA is the root itself
	ca.roots, ca.until = []*x509.Certificate{root}, []time.Time{{}}
	return nil
}

// TrustDomain returns the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// NodeTTL returns the configured node certificate lifetime.
func (ca *CA) NodeTTL() time.Duration { return ca.cfg.NodeTTL }

// Roots returns the trust anchors in force now: the active root first, then
// rotated-out roots whose overlap window has not ended.
func (ca *CA) Roots() []*x509.Certificate {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	now := ca.cfg.Now()
	var out []*x509.Certificate
	for i, r := range ca.roots {
		if i == 0 || now.Before(ca.until[i]) {
			out = append(out, r)
		}
	}
	return out
}

// Bundle returns Roots as a SPIFFE bundle of the CA's trust domain.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, ca.Roots())
}

// NextBundleChange returns when a rotated-out root leaves the bundle, or
// the zero time if none will.
func (ca *CA) NextBundleChange() time.Time {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	var next time.Time
	now := ca.cfg.Now()
	for _, u := range ca.until[1:] {
		if u.After(now) && (next.IsZero() || u.Before(next)) {
			next = u
		}
	}
	return next
}

// Pin returns the pin of the active root (see Pin).
func (ca *CA) Pin() string {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return Pin(ca.roots[0])
}

// Rotate makes a new root the issuer. The previous root stays in the bundle
// for the configured overlap window, so certificates it issued keep working
// until they are renewed from the new root.
func (ca *CA) Rotate() error {
	if ca.regional {
		return ErrRegionalCA
	}
	if ca.external {
		return ErrExternalCA
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.rotateLocked()
}

// rotateLocked creates a root and saves the state; on first use there is no
// previous root.
func (ca *CA) rotateLocked() error {
	now := ca.cfg.Now()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("identity: generate root key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{Organization: []string{"fogmesh"},
			CommonName: fmt.Sprintf("fogmesh root %s %s", ca.td.Name(), now.UTC().Format("2006-01-02T15:04:05Z"))},
		URIs:                  []*url.URL{ca.td.ID().URL()},
		NotBefore:             now.Add(-ClockSkew),
		NotAfter:              now.Add(ca.cfg.RootTTL),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            1, // room for a regional intermediate
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("identity: create root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	keyFile := "ca-key-" + hex.EncodeToString(serial.Bytes()[:8]) + ".pem"
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	// The key first: a crash before ca.json is written leaves an unused
	// key file, never a state that names a missing key.
	if err := WriteFileAtomic(filepath.Join(ca.cfg.Dir, keyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return fmt.Errorf("identity: save root key: %w", err)
	}
	oldKey := ca.keyFile
	roots := []*x509.Certificate{cert}
	until := []time.Time{{}}
	if len(ca.roots) > 0 {
		roots = append(roots, ca.roots[0])
		until = append(until, now.Add(ca.cfg.Overlap))
		for i := 1; i < len(ca.roots); i++ {
			if now.Before(ca.until[i]) {
				roots = append(roots, ca.roots[i])
				until = append(until, ca.until[i])
			}
		}
	}
	st := caState{TrustDomain: ca.td.Name(), Active: string(EncodeCertificatesPEM(cert)), KeyFile: keyFile}
	for i := 1; i < len(roots); i++ {
		st.Previous = append(st.Previous, prevState{Cert: string(EncodeCertificatesPEM(roots[i])), Until: until[i]})
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := WriteFileAtomic(ca.statePath(), b, 0o600); err != nil {
		os.Remove(filepath.Join(ca.cfg.Dir, keyFile))
		return fmt.Errorf("identity: save CA state: %w", err)
	}
	ca.signer, ca.cert, ca.keyFile, ca.roots, ca.until = key, cert, keyFile, roots, until
	if oldKey != "" && oldKey != keyFile {
		// The old root only verifies from now on; its key is not needed.
		os.Remove(filepath.Join(ca.cfg.Dir, oldKey))
	}
	return nil
}

// IssueOptions are the optional parts of an issued certificate.
type IssueOptions struct {
	// TTL is the lifetime; 0 means the default of the identity's kind.
	TTL time.Duration
	// Start is when the lifetime begins (zero: now): a batch of workload
	// SVIDs holds certificates valid later (SignWorkloadBatch).
	Start time.Time
	// DNSNames and IPAddresses are added as SANs (the control plane's
	// serving certificate, for clients that check host names).
	DNSNames    []string
	IPAddresses []net.IP
	// Region, if set, is marked in the subject (RegionMark): the region
	// the root vouches the node is in. A regional CA refuses it.
	Region string
}

// SignNodeCSR issues a node certificate for site/node from a parsed and
// checked CSR (see ParseCSR). It returns the chain, leaf first.
func (ca *CA) SignNodeCSR(csr *x509.CertificateRequest, site, node string) ([]*x509.Certificate, error) {
	id, err := NodeID(ca.td, site, node)
	if err != nil {
		return nil, fmt.Errorf("identity: node id: %w", err)
	}
	return ca.Sign(csr.PublicKey, id, IssueOptions{TTL: ca.cfg.NodeTTL})
}

// SignNodeCSRInRegion is SignNodeCSR with region marked in the
// certificate (RegionMark): the global plane's root renews a regional
// CA's node so. A regional CA refuses it (ErrNotRoot).
func (ca *CA) SignNodeCSRInRegion(csr *x509.CertificateRequest, site, node, region string) ([]*x509.Certificate, error) {
	id, err := NodeID(ca.td, site, node)
	if err != nil {
		return nil, fmt.Errorf("identity: node id: %w", err)
	}
	return ca.Sign(csr.PublicKey, id, IssueOptions{TTL: ca.cfg.NodeTTL, Region: region})
}

// SignRelayCSR issues a relay certificate (spiffe://<td>/relay/<name>) from
// a parsed and checked CSR, with the node certificates' lifetime.
func (ca *CA) SignRelayCSR(csr *x509.CertificateRequest, name string) ([]*x509.Certificate, error) {
	id, err := RelayID(ca.td, name)
	if err != nil {
		return nil, fmt.Errorf("identity: relay id: %w", err)
	}
	return ca.Sign(csr.PublicKey, id, IssueOptions{TTL: ca.cfg.NodeTTL})
}

// SignWorkloadCSR issues a workload X.509-SVID
// (spiffe://<td>/ns/<namespace>/sa/<account>) from a parsed and checked CSR.
// ttl 0 means the configured WorkloadTTL. The caller (the control plane)
// must have checked that the requesting node may hold this identity.
func (ca *CA) SignWorkloadCSR(csr *x509.CertificateRequest, namespace, account string, ttl time.Duration) ([]*x509.Certificate, error) {
	id, err := workloadID(ca, namespace, account)
	if err != nil {
		return nil, err
	}
	if ttl <= 0 {
		ttl = ca.cfg.WorkloadTTL
	}
	return ca.Sign(csr.PublicKey, id, IssueOptions{TTL: ttl})
}

func workloadID(ca *CA, namespace, account string) (spiffeid.ID, error) {
	id, err := spiffeid.FromSegments(ca.td, "ns", namespace, "sa", account)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: workload id: %w", err)
	}
	return id, nil
}

// Sign issues a leaf for pub with id as its only URI SAN, EKU client and
// server auth, and o.Region's mark in the subject if set. id must be in the CA's trust domain. NotBefore is backdated
// by ClockSkew; NotAfter never passes the issuer's.
func (ca *CA) Sign(pub crypto.PublicKey, id spiffeid.ID, o IssueOptions) ([]*x509.Certificate, error) {
	if !id.MemberOf(ca.td) {
		return nil, fmt.Errorf("identity: %s is not in trust domain %s", id, ca.td)
	}
	if id.Path() == "" {
		return nil, errors.New("identity: a leaf needs an ID with a path")
	}
	if err := checkPublicKey(pub); err != nil {
		return nil, err
	}
	var subject pkix.Name
	if o.Region != "" {
		if ca.regional {
			return nil, fmt.Errorf("identity: a region mark: %w", ErrNotRoot)
		}
		if err := checkRegionName(o.Region); err != nil {
			return nil, fmt.Errorf("identity: region mark %q: %w", o.Region, err)
		}
		subject.OrganizationalUnit = []string{regionMarkPrefix + o.Region}
	}
	ttl := o.TTL
	if ttl <= 0 {
		ttl = ca.cfg.NodeTTL
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	now := ca.cfg.Now()
	if !now.Before(ca.cert.NotAfter) {
		// A regional intermediate not renewed in time: refuse rather than
		// hand out certificates that are born expired.
		return nil, fmt.Errorf("identity: the CA certificate expired at %s", ca.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	if !o.Start.IsZero() {
		if !o.Start.Before(ca.cert.NotAfter) {
			return nil, fmt.Errorf("identity: a certificate starting %s would outlive the CA certificate (expires %s)", o.Start.UTC().Format(time.RFC3339), ca.cert.NotAfter.UTC().Format(time.RFC3339))
		}
		now = o.Start
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		URIs:         []*url.URL{id.URL()},
		DNSNames:     o.DNSNames,
		IPAddresses:  o.IPAddresses,
		NotBefore:    now.Add(-ClockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		// An empty subject (no region mark) makes the SAN extension
		// critical (RFC 5280); the SPIFFE ID is never put in the CN.
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.signer)
	if err != nil {
		return nil, fmt.Errorf("identity: sign %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	out := []*x509.Certificate{leaf}
	if ca.external {
		out = append(out, ca.chain...)
	}
	return out, nil
}
