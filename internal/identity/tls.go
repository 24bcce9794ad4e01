package identity

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ALPN protocol names. The sync port serves the sync stream (mutual TLS,
// node certificates), the relay stream (mutual TLS, relay certificates)
// and joins (server-authenticated only), told apart by ALPN.
const (
	ALPNSync  = "fogmesh-sync/1"
	ALPNRelay = "fogmesh-relay/1"
	ALPNJoin  = "fogmesh-join/1"
	ALPNMesh  = "fogmesh-mesh/1"
	// ALPNRegion is a regional control plane's link to the global one
	// (mutual TLS with its region certificate): trust pushed down,
	// renewals of its intermediate.
	ALPNRegion = "fogmesh-region/1"
	// ALPNRegionSync is a regional control plane's replication link to
	// the global one (the sync protocol with capability "region"), with
	// the same region certificate as ALPNRegion.
	ALPNRegionSync = "fogmesh-region-sync/1"
)

// Source holds one identity's current X.509-SVID, the trust bundles it
// accepts peers from (its own trust domain and federated ones) and a deny
// list of revoked SPIFFE IDs, each behind an atomic pointer. It implements
// x509svid.Source and x509bundle.Source: TLS configurations built from it
// read all three at every handshake, so a renewed certificate, a rotated
// bundle or a revocation applies to the next connection without restarting
// a listener, and connections already open are untouched.
type Source struct {
	svid    atomic.Pointer[x509svid.SVID]
	bundles atomic.Pointer[x509bundle.Set]
	denied  atomic.Pointer[map[string]bool]
}

var (
	_ x509svid.Source   = (*Source)(nil)
	_ x509bundle.Source = (*Source)(nil)
)

// NewSource returns a source with no SVID, no bundles and no denials.
func NewSource() *Source {
	s := &Source{}
	s.bundles.Store(x509bundle.NewSet())
	s.denied.Store(&map[string]bool{})
	return s
}

// SetSVID replaces the SVID handed out at the next handshake.
func (s *Source) SetSVID(svid *x509svid.SVID) { s.svid.Store(svid) }

// GetX509SVID implements x509svid.Source. An expired certificate is not
// presented: the handshake fails here, saying so, rather than at the peer.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	v := s.svid.Load()
	if v == nil {
		return nil, errors.New("identity: no certificate yet")
	}
	if leaf := v.Certificates[0]; time.Now().After(leaf.NotAfter) {
		return nil, &HandshakeError{Reason: ReasonExpired, Err: fmt.Errorf("identity: own certificate %s expired at %s and was not renewed",
			v.ID, leaf.NotAfter.Format(time.RFC3339))}
	}
	return v, nil
}

// SVID returns the current SVID or nil.
func (s *Source) SVID() *x509svid.SVID { return s.svid.Load() }

// SetBundles replaces every trust bundle (own and federated).
func (s *Source) SetBundles(bundles ...*x509bundle.Bundle) {
	s.bundles.Store(x509bundle.NewSet(bundles...))
}

// Bundles returns the current bundle set; callers must not modify it.
func (s *Source) Bundles() *x509bundle.Set { return s.bundles.Load() }

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundles.Load().GetX509BundleForTrustDomain(td)
}

// SetDenied replaces the deny list (SPIFFE IDs as strings).
func (s *Source) SetDenied(ids []string) {
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	s.denied.Store(&m)
}

// Denied reports whether id is on the deny list.
func (s *Source) Denied(id string) bool { return (*s.denied.Load())[id] }

// CheckPeer reports whether a peer authenticated earlier (id, with the
// certificates it presented, leaf first) would still pass the deny list:
// its own ID, and every CA its chain passes through (a revoked regional
// intermediate). The mesh transports ask it before each new stream and
// when the deny list changes, to cut the sessions of revoked peers
// (transport.PeerCheck).
func (s *Source) CheckPeer(id spiffeid.ID, certs []*x509.Certificate) error {
	if s.Denied(id.String()) {
		return &HandshakeError{Reason: ReasonRevoked, Err: fmt.Errorf("%s is revoked", id)}
	}
	return CheckChains(id, [][]*x509.Certificate{certs}, s.Denied)
}

// Handshake failure reasons, the reason label of
// fogmesh_tls_handshake_failures_total.
const (
	ReasonNotTLS           = "not_tls"           // the first byte was not a TLS handshake record
	ReasonNoCertificate    = "no_certificate"    // the peer sent no certificate
	ReasonUnknownAuthority = "unknown_authority" // not issued by a trusted root or trust domain
	ReasonExpired          = "expired"           // outside its validity period
	ReasonRevoked          = "revoked"           // the peer's ID is on the deny list
	ReasonUnauthorized     = "unauthorized"      // valid, but not an identity allowed here
	ReasonBadCertificate   = "bad_certificate"   // not a valid SPIFFE certificate
	ReasonPeerRejected     = "peer_rejected"     // the peer refused our certificate
	ReasonTimeout          = "timeout"
	ReasonOther            = "other"
)

// Reasons lists every reason, for pre-registering metric series, with the
// HandshakeGate's refusals (gate.go).
var Reasons = []string{ReasonNotTLS, ReasonNoCertificate, ReasonUnknownAuthority, ReasonExpired,
	ReasonRevoked, ReasonUnauthorized, ReasonBadCertificate, ReasonPeerRejected, ReasonTimeout, ReasonOther,
	ReasonBusy, ReasonSourceBusy, ReasonEvicted}

// HandshakeError is a refused TLS handshake with its reason.
type HandshakeError struct {
	Reason string
	Err    error
}

func (e *HandshakeError) Error() string {
	return "tls handshake refused (" + e.Reason + "): " + e.Err.Error()
}
func (e *HandshakeError) Unwrap() error { return e.Err }

// HandshakeReason classifies a handshake error.
func HandshakeReason(err error) string {
	var he *HandshakeError
	var cie x509.CertificateInvalidError
	var uae x509.UnknownAuthorityError
	var ne net.Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &he):
		return he.Reason
	case errors.As(err, &cie) && cie.Reason == x509.Expired:
		return ReasonExpired
	case errors.As(err, &uae), strings.Contains(err.Error(), "could not get X509 bundle"):
		return ReasonUnknownAuthority
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		return ReasonNoCertificate
	case strings.Contains(err.Error(), "x509svid:"):
		return ReasonBadCertificate
	case strings.Contains(err.Error(), "remote error"):
		return ReasonPeerRejected
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return ReasonTimeout
	}
	return ReasonOther
}

func classified(err error) error {
	if err == nil {
		return nil
	}
	var he *HandshakeError
	if errors.As(err, &he) {
		return err
	}
	return &HandshakeError{Reason: HandshakeReason(err), Err: err}
}

// authorizer adds the deny list in front of authorize: the peer's own ID
// and every CA its chain passes through (CheckChains: a revoked regional
// intermediate).
func (s *Source) authorizer(authorize tlsconfig.Authorizer) tlsconfig.Authorizer {
	return func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		if s.Denied(id.String()) {
			return &HandshakeError{Reason: ReasonRevoked, Err: fmt.Errorf("%s is revoked", id)}
		}
		if err := CheckChains(id, chains, s.Denied); err != nil {
			return err
		}
		if err := authorize(id, chains); err != nil {
			return &HandshakeError{Reason: ReasonUnauthorized, Err: err}
		}
		return nil
	}
}

func classify(verify func([][]byte, [][]*x509.Certificate) error) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, chains [][]*x509.Certificate) error {
		return classified(verify(raw, chains))
	}
}

// ServerConfig returns a TLS 1.3 server configuration that requires a
// client certificate verified against the source's bundles, not denied and
// allowed by authorize.
func (s *Source) ServerConfig(authorize tlsconfig.Authorizer, alpn ...string) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: alpn}
	tlsconfig.HookMTLSServerConfig(c, s, s, s.authorizer(authorize))
	c.VerifyPeerCertificate = classify(c.VerifyPeerCertificate)
	return c
}

// ClientConfig returns the TLS 1.3 client configuration matching
// ServerConfig: it presents the source's SVID and checks the server's.
func (s *Source) ClientConfig(authorize tlsconfig.Authorizer, alpn ...string) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: alpn}
	tlsconfig.HookMTLSClientConfig(c, s, s, s.authorizer(authorize))
	c.VerifyPeerCertificate = classify(c.VerifyPeerCertificate)
	return c
}

// AuthorizeNode allows any node identity (spiffe://<td>/site/<s>/node/<n>)
// of a trust domain the source has a bundle for.
func AuthorizeNode() tlsconfig.Authorizer {
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if _, _, ok := ParseNodeID(id); !ok {
			return fmt.Errorf("%s is not a node identity", id)
		}
		return nil
	}
}

// AuthorizeID allows exactly id.
func AuthorizeID(id spiffeid.ID) tlsconfig.Authorizer { return tlsconfig.AuthorizeID(id) }

// PeerID returns the SPIFFE ID of a TLS connection's verified peer.
func PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("no peer certificate")
	}
	return x509svid.IDFromCert(cs.PeerCertificates[0])
}

// NewSVID pairs a certificate chain (leaf first) with its private key,
// checking that the leaf carries exactly one SPIFFE ID and matches key.
func NewSVID(certs []*x509.Certificate, key crypto.Signer) (*x509svid.SVID, error) {
	if len(certs) == 0 {
		return nil, errors.New("identity: no certificate")
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if !publicKeyEqual(key.Public(), certs[0].PublicKey) {
		return nil, errors.New("identity: certificate does not match the private key")
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}, nil
}

// ServerHandshake runs the server side of a TLS handshake on conn within
// timeout. A connection whose first byte is not a TLS handshake record is
// refused at once with ReasonNotTLS (plaintext on a TLS port). Errors are
// *HandshakeError.
func ServerHandshake(ctx context.Context, conn net.Conn, cfg *tls.Config, timeout time.Duration) (*tls.Conn, error) {
	conn.SetDeadline(time.Now().Add(timeout))
	var first [1]byte
	if _, err := io.ReadFull(conn, first[:]); err != nil {
		return nil, classified(err)
	}
	if first[0] != 0x16 { // TLS record type handshake
		return nil, &HandshakeError{Reason: ReasonNotTLS, Err: fmt.Errorf("first byte %#02x is not a TLS handshake", first[0])}
	}
	tc := tls.Server(&prefixConn{Conn: conn, prefix: first[:]}, cfg)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, classified(err)
	}
	conn.SetDeadline(time.Time{})
	return tc, nil
}

// prefixConn replays prefix before reading from Conn.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// JoinClientConfig returns the TLS configuration a joining agent uses: the
// control plane is authenticated by pin (the root it chains to must have
// that SubjectPublicKeyInfo hash, see VerifyPinned); the agent presents no
// certificate.
func JoinClientConfig(pin string, onVerified func(td spiffeid.TrustDomain, root *x509.Certificate)) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{ALPNJoin},
		InsecureSkipVerify: true, // replaced by VerifyPeerCertificate: the pin
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			td, root, err := VerifyPinned(raw, pin)
			if err != nil {
				return err
			}
			if onVerified != nil {
				onVerified(td, root)
			}
			return nil
		},
	}
}

// VerifyPinned checks a control plane's certificate chain as sent in a TLS
// handshake (leaf first; the control plane appends its roots): one of the
// certificates must be a CA whose pin is pin and whose URI SAN names a
// trust domain, and the leaf must chain to it and carry that trust domain's
// control plane ID. It returns the trust domain and the pinned root.
func VerifyPinned(raw [][]byte, pin string) (spiffeid.TrustDomain, *x509.Certificate, error) {
	certs, err := ParseDERs(raw)
	if err != nil {
		return spiffeid.TrustDomain{}, nil, fmt.Errorf("identity: control plane certificate: %w", err)
	}
	var root *x509.Certificate
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		if c.IsCA && Pin(c) == pin {
			root = c
		} else {
			inter.AddCert(c)
		}
	}
	if root == nil {
		return spiffeid.TrustDomain{}, nil, errors.New("identity: the control plane's root does not match the token's pin (wrong control plane, or the CA was rotated after the token was made)")
	}
	if len(root.URIs) != 1 {
		return spiffeid.TrustDomain{}, nil, errors.New("identity: pinned root names no trust domain")
	}
	tdID, err := spiffeid.FromURI(root.URIs[0])
	if err != nil {
		return spiffeid.TrustDomain{}, nil, fmt.Errorf("identity: pinned root: %w", err)
	}
	td := tdID.TrustDomain()
	roots := x509.NewCertPool()
	roots.AddCert(root)
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return spiffeid.TrustDomain{}, nil, fmt.Errorf("identity: control plane certificate: %w", err)
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil || id != ControlID(td) {
		return spiffeid.TrustDomain{}, nil, fmt.Errorf("identity: the server is not %s's control plane", td)
	}
	return td, root, nil
}
