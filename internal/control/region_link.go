package control

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/enroll"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// The regional side of regional trust (docs/regions.md): a control plane
// started with Mode ModeRegional joins the global plane at Upstream once
// with a region token, keeps what it got in StateDir/region, issues with
// its intermediate from then on (also while the global plane is down),
// and keeps a region stream to the global plane on which it learns the
// global trust document (roots, deny list) and renews both certificates at
// half-life.

// Files in StateDir/region. Keys are mode 0600; region.json is written
// last, so a crash during the first join leaves no half identity.
const (
	regionDirName   = "region"
	regionCAKeyFile = "ca-key.pem"     // the intermediate's key
	regionCAFile    = "ca.pem"         // the intermediate (PEM)
	regionKeyFile   = "client-key.pem" // the client certificate's key
	regionCertFile  = "client.pem"     // spiffe://<td>/region/<name> (PEM chain)
	regionTrustFile = "trust.json"     // the global plane's last trust document
	regionInfoFile  = "region.json"    // {region, trustDomain}
)

type regionInfo struct {
	Region      string `json:"region"`
	TrustDomain string `json:"trustDomain"`
}

// regional is a regional control plane's identity and upstream link.
type regional struct {
	s     *Server
	name  string
	dir   string
	td    spiffeid.TrustDomain
	ca    *identity.CA
	caKey crypto.Signer
	key   crypto.Signer
	src   *identity.Source // the client certificate; the global roots; the global deny list

	mu    sync.Mutex // guards the following
	trust *wire.Trust

	linked   atomic.Bool
	renewals atomic.Int64
	// refresh rebuilds the control plane's trust document (set by
	// newSecurity's caller chain: security.refreshTrust).
	refresh func() error
}

// openRegional loads the region's identity from StateDir/region, or joins
// the upstream with RegionJoinToken to get one, and opens the CA on its
// intermediate. A refused join or a token of the wrong kind is an
// *enroll.Error (retrying cannot help).
func openRegional(s *Server) (*identity.CA, *regional, error) {
	cfg := s.cfg
	if !siteRE.MatchString(cfg.Region) {
		return nil, nil, fmt.Errorf("region %q is not a DNS label", cfg.Region)
	}
	r := &regional{s: s, name: cfg.Region, dir: filepath.Join(cfg.StateDir, regionDirName), src: identity.NewSource()}
	if err := os.MkdirAll(r.dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("region dir: %w", err)
	}
	var info regionInfo
	b, err := os.ReadFile(filepath.Join(r.dir, regionInfoFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
		if cfg.RegionJoinToken == "" {
			return nil, nil, fmt.Errorf("regional control plane: no region identity in %s: start it once with --join-token (make one on the global control plane: fogmesh token create -kind region -region %s)", r.dir, r.name)
		}
		if err := r.join(); err != nil {
			return nil, nil, err
		}
		info = regionInfo{Region: r.name, TrustDomain: r.td.Name()}
	case err != nil:
		return nil, nil, fmt.Errorf("region: %w", err)
	default:
		if cfg.RegionJoinToken != "" {
			s.log.Warn("control: the region's identity is in the state dir; --join-token ignored", "dir", r.dir)
		}
		if err := json.Unmarshal(b, &info); err != nil {
			return nil, nil, fmt.Errorf("region: %s: %w", regionInfoFile, err)
		}
		if info.Region != r.name {
			return nil, nil, fmt.Errorf("region: %s holds the identity of region %q, not %q", r.dir, info.Region, r.name)
		}
		if info.TrustDomain == "" { // not the default domain's: the join wrote the name
			return nil, nil, fmt.Errorf("region: %s names no trust domain", filepath.Join(r.dir, regionInfoFile))
		}
	}
	td, err := identity.ParseTrustDomain(info.TrustDomain)
	if err != nil {
		return nil, nil, fmt.Errorf("region: %w", err)
	}
	if cfg.TrustDomain != "" && cfg.TrustDomain != td.Name() {
		return nil, nil, fmt.Errorf("region: the global control plane is in trust domain %s, configured %s", td.Name(), cfg.TrustDomain)
	}
	r.td = td
	if err := r.load(); err != nil {
		return nil, nil, err
	}
	return r.ca, r, nil
}

// join gets the region's certificates from the upstream and saves them.
func (r *regional) join() error {
	tok, err := enroll.ParseToken(r.s.cfg.RegionJoinToken, identity.TokenRegion)
	if err != nil {
		return &enroll.Error{Msg: "region: join token: " + err.Error()}
	}
	caKey, err := identity.NewKey()
	if err != nil {
		return err
	}
	key, err := identity.NewKey()
	if err != nil {
		return err
	}
	caCSR, err := identity.NewCSR(caKey)
	if err != nil {
		return err
	}
	csr, err := identity.NewCSR(key)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := enroll.Join(ctx, enroll.DialTLS, r.s.cfg.Upstreams, tok,
		&wire.Message{Region: r.name, CSR: csr, CACSR: caCSR}, r.s.log, "region", r.s.outboundHandshake())
	if err != nil {
		return err
	}
	if resp.Trust == nil || len(resp.CACertificates) == 0 {
		return errors.New("region: join: the upstream sent no trust document or no intermediate")
	}
	td, err := identity.ParseTrustDomain(resp.Trust.TrustDomain)
	if err != nil || resp.Trust.TrustDomain == "" {
		return fmt.Errorf("region: join: trust domain %q: %v", resp.Trust.TrustDomain, err)
	}
	r.td = td
	if err := r.save(resp.Certificates, resp.CACertificates, caKey, key); err != nil {
		return err
	}
	if err := r.saveTrust(resp.Trust); err != nil {
		return err
	}
	ib, _ := json.Marshal(regionInfo{Region: r.name, TrustDomain: td.Name()})
	if err := identity.WriteFileAtomic(filepath.Join(r.dir, regionInfoFile), ib, 0o644); err != nil {
		return fmt.Errorf("region: %w", err)
	}
	r.s.log.Info("control: region joined the global control plane", "region", r.name, "trustDomain", td.Name())
	return nil
}

// save writes keys (when given) and certificates.
func (r *regional) save(client, inter [][]byte, caKey, key crypto.Signer) error {
	certs, err := identity.ParseDERs(client)
	if err != nil {
		return fmt.Errorf("region: client certificate: %w", err)
	}
	icerts, err := identity.ParseDERs(inter)
	if err != nil {
		return fmt.Errorf("region: intermediate: %w", err)
	}
	for f, k := range map[string]crypto.Signer{regionCAKeyFile: caKey, regionKeyFile: key} {
		if k == nil {
			continue
		}
		pb, err := identity.EncodeKeyPEM(k)
		if err != nil {
			return err
		}
		if err := identity.WriteFileAtomic(filepath.Join(r.dir, f), pb, 0o600); err != nil {
			return fmt.Errorf("region: %w", err)
		}
	}
	if err := identity.WriteFileAtomic(filepath.Join(r.dir, regionCAFile), identity.EncodeCertificatesPEM(icerts...), 0o644); err != nil {
		return fmt.Errorf("region: %w", err)
	}
	if err := identity.WriteFileAtomic(filepath.Join(r.dir, regionCertFile), identity.EncodeCertificatesPEM(certs...), 0o644); err != nil {
		return fmt.Errorf("region: %w", err)
	}
	return nil
}

func (r *regional) saveTrust(t *wire.Trust) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	if err := identity.WriteFileAtomic(filepath.Join(r.dir, regionTrustFile), b, 0o644); err != nil {
		return fmt.Errorf("region: %w", err)
	}
	return nil
}

// load reads the region's files and opens the CA on its intermediate.
func (r *regional) load() error {
	var err error
	if r.caKey, err = identity.ReadKeyFile(filepath.Join(r.dir, regionCAKeyFile)); err != nil {
		return fmt.Errorf("region: %w", err)
	}
	if r.key, err = identity.ReadKeyFile(filepath.Join(r.dir, regionKeyFile)); err != nil {
		return fmt.Errorf("region: %w", err)
	}
	read := func(f string) ([]*x509.Certificate, error) {
		b, err := os.ReadFile(filepath.Join(r.dir, f))
		if err != nil {
			return nil, fmt.Errorf("region: %w", err)
		}
		c, err := identity.ParseCertificatesPEM(b)
		if err != nil {
			return nil, fmt.Errorf("region: %s: %w", f, err)
		}
		return c, nil
	}
	inter, err := read(regionCAFile)
	if err != nil {
		return err
	}
	client, err := read(regionCertFile)
	if err != nil {
		return err
	}
	tb, err := os.ReadFile(filepath.Join(r.dir, regionTrustFile))
	if err != nil {
		return fmt.Errorf("region: %w", err)
	}
	var t wire.Trust
	if err := json.Unmarshal(tb, &t); err != nil {
		return fmt.Errorf("region: %s: %w", regionTrustFile, err)
	}
	roots, err := r.roots(&t)
	if err != nil {
		return err
	}
	r.ca, err = identity.OpenIntermediateCA(identity.CAConfig{TrustDomain: r.td.Name(), NodeTTL: r.s.cfg.NodeTTL, WorkloadTTL: r.s.cfg.WorkloadTTL}, inter, r.caKey, roots)
	if err != nil {
		return fmt.Errorf("region %s: its intermediate CA (%s, until %s) is unusable: %w; rejoin with a new region token",
			r.name, filepath.Join(r.dir, regionCAFile), inter[0].NotAfter.UTC().Format(time.RFC3339), err)
	}
	svid, err := identity.NewSVID(client, r.key)
	if err != nil {
		return fmt.Errorf("region: %s: %w", regionCertFile, err)
	}
	if want, _ := identity.RegionID(r.td, r.name); svid.ID != want {
		return fmt.Errorf("region: %s is %s, not %s", regionCertFile, svid.ID, want)
	}
	r.src.SetSVID(svid)
	r.src.SetBundles(x509bundle.FromX509Authorities(r.td, roots))
	r.src.SetDenied(t.Revoked)
	r.trust = &t
	return nil
}

// roots returns the own trust domain's roots of a trust document. A
// federated bundle an agent would refuse (a name that is not a trust
// domain's as it writes it, roots that do not parse, none) is dropped from
// t with a warning: the document goes on to the region's agents
// (mergeTrust), which refuse a document whole for one such bundle, and
// refusing it here instead would stop the plane's start or its link to the
// global plane for a bundle of another trust domain.
func (r *regional) roots(t *wire.Trust) ([]*x509.Certificate, error) {
	if t.TrustDomain != r.td.Name() {
		return nil, fmt.Errorf("region: the upstream's trust document is for trust domain %q, not %s", t.TrustDomain, r.td.Name())
	}
	for name, ders := range t.Bundles {
		if name == r.td.Name() {
			continue
		}
		_, err := identity.ParseBundleName(name)
		if err == nil {
			_, err = identity.ParseDERs(ders)
		}
		if err != nil {
			r.s.log.Warn("control: a federated bundle of the upstream's trust document is dropped: agents would refuse the document with it",
				"region", r.name, "bundle", name, "err", err)
			delete(t.Bundles, name)
		}
	}
	roots, err := identity.ParseDERs(t.Bundles[r.td.Name()])
	if err != nil {
		return nil, fmt.Errorf("region: the upstream's roots: %w", err)
	}
	return roots, nil
}

// mergeTrust adds the global plane's deny list and federated bundles to
// the trust document this regional plane pushes to its agents.
func (r *regional) mergeTrust(t *wire.Trust) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.trust == nil {
		return
	}
	t.Revoked = append(t.Revoked, r.trust.Revoked...)
	for td, ders := range r.trust.Bundles {
		if _, ok := t.Bundles[td]; !ok {
			t.Bundles[td] = ders
		}
	}
}

// applyTrust installs a trust document from the upstream: new roots (the
// global root rotated), the global deny list.
func (r *regional) applyTrust(t *wire.Trust) error {
	if t == nil {
		return errors.New("empty trust document")
	}
	roots, err := r.roots(t)
	if err != nil {
		return err
	}
	if err := r.ca.SetIntermediate([]*x509.Certificate{r.ca.Certificate()}, r.caKey, roots); err != nil {
		return fmt.Errorf("region: the upstream's roots do not verify this region's intermediate: %w", err)
	}
	r.src.SetBundles(x509bundle.FromX509Authorities(r.td, roots))
	r.src.SetDenied(t.Revoked)
	if err := r.saveTrust(t); err != nil {
		return err
	}
	r.mu.Lock()
	r.trust = t
	r.mu.Unlock()
	if id, _ := identity.RegionID(r.td, r.name); slices.Contains(t.Revoked, id.String()) {
		r.s.log.Error("control: this region is REVOKED by the global control plane: its certificates are refused by every verifier that knows", "region", r.name)
	}
	if r.refresh != nil {
		return r.refresh()
	}
	return nil
}

// applyRenewal installs renewed certificates (same keys).
func (r *regional) applyRenewal(m *wire.Message) error {
	certs, err := identity.ParseDERs(m.Certificates)
	if err != nil {
		return fmt.Errorf("region: renewed client certificate: %w", err)
	}
	inter, err := identity.ParseDERs(m.CACertificates)
	if err != nil {
		return fmt.Errorf("region: renewed intermediate: %w", err)
	}
	svid, err := identity.NewSVID(certs, r.key)
	if err != nil {
		return fmt.Errorf("region: renewed client certificate: %w", err)
	}
	if err := r.ca.SetIntermediate(inter, r.caKey, r.ca.Roots()); err != nil {
		return fmt.Errorf("region: renewed intermediate: %w", err)
	}
	if err := r.save(m.Certificates, m.CACertificates, nil, nil); err != nil {
		return err
	}
	r.src.SetSVID(svid)
	r.renewals.Add(1)
	r.s.log.Info("control: region certificates renewed", "region", r.name, "intermediateUntil", inter[0].NotAfter)
	// The serving certificate was capped at the old intermediate's end.
	return r.s.sec.issueServing()
}

// renewAt is when the region's certificates are renewed: at half-life
// (jittered) of whichever ends first.
func (r *regional) renewAt() time.Time {
	a := enroll.RenewAt(r.ca.Certificate())
	if svid := r.src.SVID(); svid != nil {
		if b := enroll.RenewAt(svid.Certificates[0]); b.Before(a) {
			a = b
		}
	}
	return a
}

// rootRotated reports whether the global root that issues now (the first
// of the bundle) did not sign the intermediate or the client certificate:
// they are renewed at once, before the old root leaves the bundle at the
// end of the global plane's rotation overlap.
func (r *regional) rootRotated() bool {
	roots := r.ca.Roots()
	svid := r.src.SVID()
	return len(roots) > 0 && (r.ca.Certificate().CheckSignatureFrom(roots[0]) != nil ||
		svid != nil && svid.Certificates[0].CheckSignatureFrom(roots[0]) != nil)
}

// run keeps the region stream to one of the upstream addresses, with
// jittered backoff between attempts, until ctx ends.
func (r *regional) run(ctx context.Context) {
	backoff := 250 * time.Millisecond
	for ctx.Err() == nil {
		for _, addr := range r.s.cfg.Upstreams {
			start := time.Now()
			err := r.link(ctx, addr)
			if ctx.Err() != nil {
				return
			}
			if time.Since(start) > time.Minute {
				backoff = 250 * time.Millisecond
			}
			reason := identity.HandshakeReason(err)
			if reason == identity.ReasonPeerRejected {
				r.s.log.Error("control: the global control plane refused this region's certificate (revoked, expired or of another mesh); issuing goes on until the intermediate expires",
					"upstream", addr, "region", r.name, "intermediateUntil", r.ca.Certificate().NotAfter, "err", err)
			} else {
				r.s.log.Warn("control: region link to the global control plane down", "upstream", addr, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// link runs one region stream.
func (r *regional) link(ctx context.Context, addr string) error {
	dctx, cancel := context.WithTimeout(ctx, r.s.outboundHandshake()) // a slow link's may be raised
	c, err := enroll.DialTLS(dctx, addr, r.clientConfig(identity.ALPNRegion))
	cancel()
	if err != nil {
		return err
	}
	defer c.Close()
	defer r.linked.Store(false)
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	msgs := make(chan *wire.Message)
	errc := make(chan error, 1)
	go func() {
		rd := wire.NewReader(c)
		for {
			c.SetReadDeadline(time.Now().Add(4 * wire.RelayHeartbeat))
			m, err := rd.Read()
			if err != nil {
				errc <- err
				return
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	write := func(m *wire.Message) error {
		c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		return wire.Write(c, m)
	}
	hb := time.NewTicker(wire.RelayHeartbeat)
	defer hb.Stop()
	check := time.NewTicker(time.Second)
	defer check.Stop()
	pending := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return err
		case <-hb.C:
			if err := write(&wire.Message{Type: wire.TypeHeartbeat}); err != nil {
				return err
			}
		case <-check.C:
			if pending || time.Now().Before(r.renewAt()) && !r.rootRotated() {
				continue
			}
			csr, err := identity.NewCSR(r.key)
			if err != nil {
				return err
			}
			caCSR, err := identity.NewCSR(r.caKey)
			if err != nil {
				return err
			}
			if err := write(&wire.Message{Type: wire.TypeRenew, CSR: csr, CACSR: caCSR}); err != nil {
				return err
			}
			pending = true
		case m := <-msgs:
			switch m.Type {
			case wire.TypeTrust:
				if err := r.applyTrust(m.Trust); err != nil {
					return err
				}
				if !r.linked.Swap(true) {
					r.s.log.Info("control: region linked to the global control plane", "upstream", addr, "region", r.name)
				}
			case wire.TypeCert:
				pending = false
				if err := r.applyRenewal(m); err != nil {
					return err
				}
			case wire.TypeHeartbeat:
			case wire.TypeError:
				return fmt.Errorf("upstream: %s", m.Error)
			default:
				return fmt.Errorf("upstream: unexpected %s on the region stream", m.Type)
			}
		}
	}
}

// clientConfig is the TLS client configuration of the region's identity
// toward the global plane (its control plane certificate, the global
// roots, the global deny list).
func (r *regional) clientConfig(alpn ...string) *tls.Config {
	return r.src.ClientConfig(identity.AuthorizeID(identity.ControlID(r.td)), alpn...)
}

// RegionClientConfig returns the TLS client configuration of a regional
// control plane's identity (spiffe://<td>/region/<name>) toward its
// upstream with alpn, for links to the global plane; nil on a global
// control plane. The certificate is renewed under it.
func (s *Server) RegionClientConfig(alpn ...string) *tls.Config {
	if s.sec == nil || s.sec.region == nil {
		return nil
	}
	return s.sec.region.clientConfig(alpn...)
}

// RegionLinked reports whether a regional control plane's region stream to
// its upstream is up (false on a global control plane).
func (s *Server) RegionLinked() bool {
	return s.sec != nil && s.sec.region != nil && s.sec.region.linked.Load()
}
