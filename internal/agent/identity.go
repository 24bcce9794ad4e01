package agent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/atomicfile"
	"github.com/fogmesh/fogmesh/internal/enroll"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/svid"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Identity files in the state directory.
const (
	nodeKeyFile  = "node-key.pem"  // the node's private key, made here, mode 0600
	nodeCertFile = "node-cert.pem" // its certificate chain, leaf first
	trustFile    = "trust.json"    // wire.Trust: roots, federated bundles, deny list
	svidsFile    = "svids.json"    // workload SVIDs with their keys (svid.Store.Persist), mode 0600
)

// JoinError is a join the control plane refused (bad, used, expired or
// unknown token, wrong site): the command exits with the usage code.
type JoinError = enroll.Error

// nodeIdentity is the agent's node certificate and trust.
type nodeIdentity struct {
	src  *identity.Source
	key  crypto.Signer
	td   spiffeid.TrustDomain
	id   spiffeid.ID
	dir  string
	cert *x509.Certificate // guarded by Agent.mu after New
	// gossipKey is the mesh's gossip key from the last trust message.
	gossipKey []byte
	// gossipKeyErr says why the last trust's gossip key was dropped (nil:
	// it was not): with no key held, gossip then does not start, rather
	// than run unencrypted in a mesh that encrypts it (initGossip).
	gossipKeyErr error
}

func (a *Agent) statePath(name string) string { return filepath.Join(a.cfg.StateDir, name) }

// initIdentity loads the node key, certificate and trust from the state
// directory, joining with cfg.JoinToken when there is no usable
// certificate.
func (a *Agent) initIdentity(ctx context.Context) error {
	ni := &nodeIdentity{src: identity.NewSource(), dir: a.cfg.StateDir}
	keyPath := a.statePath(nodeKeyFile)
	if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		k, err := identity.NewKey()
		if err != nil {
			return err
		}
		pemKey, err := identity.EncodeKeyPEM(k)
		if err != nil {
			return err
		}
		if err := atomicfile.Write(keyPath, pemKey, 0o600); err != nil {
			return fmt.Errorf("agent: save node key: %w", err)
		}
	}
	key, err := identity.ReadKeyFile(keyPath)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	ni.key = key
	a.ident = ni

	if b, err := os.ReadFile(a.statePath(trustFile)); err == nil {
		t, keyErr, err := readTrust(b)
		if err == nil {
			err = a.applyTrust(&t, false)
		}
		if err != nil {
			a.log.Error("agent: trust file unreadable; join again if the certificate cannot be verified", "file", a.statePath(trustFile), "err", err)
		} else if keyErr != nil {
			a.log.Warn("agent: trust: gossip key dropped", "file", a.statePath(trustFile), "err", keyErr)
			ni.gossipKeyErr = keyErr
		}
	}
	if err := a.loadNodeCert(); err != nil {
		if a.cfg.JoinToken == "" {
			return &ConfigError{Err: fmt.Errorf("agent: no usable node certificate in %s (%v): join with a token (-join-token or $FOGMESH_JOIN_TOKEN from 'fogmesh token create --site %s')",
				a.cfg.StateDir, err, a.cfg.Node.Site)}
		}
		if err := a.join(ctx); err != nil {
			return err
		}
	}
	return nil
}

// loadNodeCert loads a certificate that matches the key, this node's
// identity and has not expired.
func (a *Agent) loadNodeCert() error {
	ni := a.ident
	if ni.td.IsZero() {
		return errors.New("no trust bundle")
	}
	b, err := os.ReadFile(a.statePath(nodeCertFile))
	if err != nil {
		return err
	}
	certs, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		return err
	}
	return a.useNodeCert(certs)
}

// useNodeCert checks certs (leaf first) and makes them the node's SVID.
func (a *Agent) useNodeCert(certs []*x509.Certificate) error {
	ni := a.ident
	want, err := identity.NodeID(ni.td, a.cfg.Node.Site, a.cfg.Node.Name)
	if err != nil {
		return err
	}
	svid, err := identity.NewSVID(certs, ni.key)
	if err != nil {
		return err
	}
	if svid.ID != want {
		return fmt.Errorf("certificate is for %s, this node is %s", svid.ID, want)
	}
	if time.Now().After(certs[0].NotAfter) {
		return fmt.Errorf("certificate expired at %s", certs[0].NotAfter.Format(time.RFC3339))
	}
	a.mu.Lock()
	ni.id, ni.cert = want, certs[0]
	a.mu.Unlock()
	ni.src.SetSVID(svid)
	return nil
}

// readTrust decodes trust.json b. A gossip key that does not decode (not
// base64) is no reason to lose the rest of the trust: it is left out, and
// keyErr says why.
func readTrust(b []byte) (t wire.Trust, keyErr, err error) {
	var doc struct {
		wire.Trust
		GossipKey json.RawMessage `json:"gossipKey"` // over the Trust's
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return t, nil, err
	}
	t = doc.Trust
	if len(doc.GossipKey) > 0 {
		if err := json.Unmarshal(doc.GossipKey, &t.GossipKey); err != nil {
			return t, fmt.Errorf("gossip key: %w", err), nil
		}
	}
	return t, nil, nil
}

// checkGossipKey reports whether memberlist takes key (none, or 16, 24 or
// 32 bytes).
func checkGossipKey(key []byte) error {
	if n := len(key); n != 0 && n != 16 && n != 24 && n != 32 {
		return fmt.Errorf("gossip key of %d bytes (16, 24 or 32)", n)
	}
	return nil
}

// checkTrust checks a trust document (a trust message, or trust.json read
// back at start) before any of it applies: its trust domain (own's, once
// the node has one), each bundle's trust domain and roots, and roots for
// its own trust domain. Its gossip key is applyTrust's (checkGossipKey):
// a bad one is dropped, not the trust.
func checkTrust(t *wire.Trust, own spiffeid.TrustDomain) (spiffeid.TrustDomain, []*x509bundle.Bundle, error) {
	td, err := identity.ParseTrustDomain(t.TrustDomain)
	if err != nil || t.TrustDomain == "" {
		return td, nil, fmt.Errorf("trust: trust domain %q: %v", t.TrustDomain, err)
	}
	if !own.IsZero() && td != own {
		return td, nil, fmt.Errorf("trust: control plane is in trust domain %s, this node in %s", td, own)
	}
	var bundles []*x509bundle.Bundle
	for name, ders := range t.Bundles {
		btd, err := identity.ParseBundleName(name)
		if err != nil {
			return td, nil, fmt.Errorf("trust: %w", err)
		}
		certs, err := identity.ParseDERs(ders)
		if err != nil {
			return td, nil, fmt.Errorf("trust: bundle %s: %w", name, err)
		}
		bundles = append(bundles, x509bundle.FromX509Authorities(btd, certs))
	}
	if len(t.Bundles[td.Name()]) == 0 {
		return td, nil, errors.New("trust: no roots for the own trust domain")
	}
	return td, bundles, nil
}

func (a *Agent) saveNodeCert(certs []*x509.Certificate) error {
	return atomicfile.Write(a.statePath(nodeCertFile), identity.EncodeCertificatesPEM(certs...), 0o644)
}

// applyTrust installs bundles and the deny list, cuts the open mesh
// sessions of peers it now denies (a node, or a region whose intermediate
// is in the peer's chain) and, if save, writes the trust file.
func (a *Agent) applyTrust(t *wire.Trust, save bool) error {
	ni := a.ident
	td, bundles, err := checkTrust(t, ni.td)
	if err != nil {
		return err
	}
	if ni.td != td { // set once (New); the mesh dials read it unlocked
		ni.td = td
	}
	ni.src.SetBundles(bundles...)
	denied, err := identity.CanonicalIDs(t.Revoked)
	if err != nil { // it would deny no one: the rest of the trust applies
		a.log.Warn("agent: trust: revoked entries dropped", "err", err)
	}
	ni.src.SetDenied(denied)
	// The Workload API hands out the same bundles, by trust domain name.
	wb := make(map[string][]*x509.Certificate, len(bundles))
	for _, b := range bundles {
		wb[b.TrustDomain().Name()] = b.X509Authorities()
	}
	a.svids.SetTrust(td.Name(), wb)
	// A gossip key memberlist does not take is dropped: gossip keeps the
	// key it has, and the file keeps it too (saved below). With none held,
	// gossip goes on as it runs (unencrypted, as it started), and the file
	// keeps no key, so a restart starts the same way.
	if ni.gossipKeyErr = checkGossipKey(t.GossipKey); ni.gossipKeyErr != nil {
		a.log.Warn("agent: trust: gossip key dropped", "err", ni.gossipKeyErr)
	} else if len(t.GossipKey) > 0 && !bytes.Equal(t.GossipKey, ni.gossipKey) {
		ni.gossipKey = t.GossipKey
		if a.gossip != nil {
			if err := a.gossip.SetKey(t.GossipKey); err != nil {
				a.log.Error("agent: new gossip key not installed", "err", err)
			} else {
				a.log.Info("agent: gossip key changed")
			}
		}
	}
	if a.mesh != nil {
		// Every open session, both ways and on every path, whose peer or
		// a CA of its chain (a regional intermediate) is now revoked is
		// cut: each is logged, counted and audited (meshCut).
		if n := a.mesh.Revalidate() + a.peers.Revalidate(); n > 0 {
			a.log.Warn("agent: revocation cut open mesh sessions", "sessions", n)
		}
	}
	if save {
		// The file holds what the agent runs with, so that a restart does
		// the same: the revoked entries it took, and the gossip key it
		// holds (none included) in place of a dropped or missing one.
		c := *t
		c.Revoked = denied
		if ni.gossipKeyErr != nil || len(t.GossipKey) == 0 {
			c.GossipKey = ni.gossipKey
		}
		t = &c
		if err := saveJSON(a.statePath(trustFile), t); err != nil {
			return fmt.Errorf("trust: save: %w", err)
		}
	}
	return nil
}

// join gets the node certificate with the join token: TLS to the control
// plane's sync port (ALPN fogmesh-join/1), the control plane authenticated
// by the root pin in the token; a CSR out, a certificate and the trust
// bundle back. A refusal is a *JoinError inside a *ConfigError.
func (a *Agent) join(ctx context.Context) error {
	tok, err := enroll.ParseToken(a.cfg.JoinToken, identity.TokenJoin)
	if err != nil {
		return &ConfigError{Err: &JoinError{Msg: "agent: join token: " + err.Error()}}
	}
	csr, err := identity.NewCSR(a.ident.key)
	if err != nil {
		return err
	}
	node := *a.self
	resp, err := enroll.Join(ctx, a.dialControlTLS, a.cfg.Control, tok, &wire.Message{Node: &node, CSR: csr}, a.log, "agent", time.Duration(a.cfg.ControlHandshakeTimeout))
	if err != nil {
		var je *JoinError
		if errors.As(err, &je) {
			return &ConfigError{Err: err}
		}
		return err
	}
	return a.finishJoin(resp)
}

func (a *Agent) finishJoin(m *wire.Message) error {
	if m.Trust == nil {
		return errors.New("agent: join: no trust bundle in the answer")
	}
	certs, err := identity.ParseDERs(m.Certificates)
	if err != nil {
		return fmt.Errorf("agent: join: %w", err)
	}
	a.ident.td = spiffeid.TrustDomain{}
	if err := a.applyTrust(m.Trust, true); err != nil {
		return fmt.Errorf("agent: join: %w", err)
	}
	if err := a.useNodeCert(certs); err != nil {
		return fmt.Errorf("agent: join: %w", err)
	}
	if err := a.saveNodeCert(certs); err != nil {
		return fmt.Errorf("agent: join: save certificate: %w", err)
	}
	a.log.Info("agent: joined", "id", a.ident.id.String(), "notAfter", certs[0].NotAfter)
	return nil
}

// renewAt is when the node certificate should be renewed
// (svid.NodeRenewAt).
func (a *Agent) renewAt() time.Time {
	a.mu.Lock()
	c := a.ident.cert
	a.mu.Unlock()
	return svid.NodeRenewAt(c)
}

// renewCSR makes the renewal request (the same key: it never leaves the
// host).
func (a *Agent) renewMessage() (*wire.Message, error) {
	csr, err := identity.NewCSR(a.ident.key)
	if err != nil {
		return nil, err
	}
	return &wire.Message{Type: wire.TypeRenew, CSR: csr}, nil
}

// applyCert installs a renewed certificate: the next handshake uses it,
// open connections are untouched.
func (a *Agent) applyCert(m *wire.Message) error {
	certs, err := identity.ParseDERs(m.Certificates)
	if err != nil {
		return err
	}
	if _, _, err := x509svidVerify(certs, a.ident.src); err != nil {
		return err
	}
	if err := a.useNodeCert(certs); err != nil {
		return err
	}
	if err := a.saveNodeCert(certs); err != nil {
		return err
	}
	a.m.renewals.Inc()
	// Peers hold the old certificate for the sessions it authenticated
	// and cut them when it expires: new streams take new sessions.
	n := 0
	if a.peers != nil {
		n = a.peers.RetireAll()
	}
	a.log.Info("agent: node certificate renewed", "serial", certs[0].SerialNumber.Text(16), "notAfter", certs[0].NotAfter,
		"sessionsRetired", n)
	return nil
}

// NodeCertificate returns the current node certificate (nil in insecure
// mode).
func (a *Agent) NodeCertificate() *x509.Certificate {
	if a.ident == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ident.cert
}

func (a *Agent) trustedSourceID(id spiffeid.ID) bool {
	_, err := a.ident.src.GetX509BundleForTrustDomain(id.TrustDomain())
	return err == nil
}

func x509svidVerify(certs []*x509.Certificate, src *identity.Source) (spiffeid.ID, [][]*x509.Certificate, error) {
	return x509svid.Verify(certs, src)
}

// watchNodeCert logs and counts the expiry of a node certificate that was
// not renewed in time (a node cut off from every control plane for longer
// than its certificate's remaining life): from then on the agent presents
// no certificate (identity.Source withholds it), so every new mesh and
// sync connection fails; the node must join again with a token.
func (a *Agent) watchNodeCert(ctx context.Context) {
	var logged *x509.Certificate
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c := a.NodeCertificate()
		if c == nil {
			t.Reset(time.Second)
			continue
		}
		left := time.Until(c.NotAfter)
		if left >= 0 {
			t.Reset(min(left+10*time.Millisecond, time.Minute))
			continue
		}
		if logged != c {
			logged = c
			a.m.certExpired.Inc()
			a.log.Error("agent: node certificate expired and was not renewed (no control plane reached in time): it is no longer presented, so no new mesh or control connection can be made; join this node again with a token",
				"serial", c.SerialNumber.Text(16), "notAfter", c.NotAfter, "connected", a.connected.Load())
		}
		t.Reset(time.Second)
	}
}
