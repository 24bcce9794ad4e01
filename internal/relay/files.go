package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// Files are the relay's identity and trust on disk. The relay reloads
// them while it runs (WatchFiles), so a renewed certificate, a rotated
// bundle or a new revocation applies without a restart.
type Files struct {
	// CertFile is the relay's certificate chain, leaf first (PEM), issued
	// by the mesh CA; KeyFile its private key (PEM). Required.
	CertFile, KeyFile string
	// BundleFile holds the CA certificates (PEM) agents' certificates must
	// chain to: the mesh CA's roots. Required.
	BundleFile string
	// DenyFile lists revoked node IDs (optional): one SPIFFE ID per line
	// ('#' starts a comment), or the JSON of an agent's trust.json
	// (wire.Trust, whose "revoked" list the agent keeps current from the
	// control plane), so a relay running beside an agent follows
	// revocations with no protocol of its own.
	DenyFile string
}

// snapshot is the files' bytes, to tell whether anything changed.
func (f Files) snapshot() ([]byte, error) {
	var all bytes.Buffer
	for _, p := range []string{f.CertFile, f.KeyFile, f.BundleFile, f.DenyFile} {
		if p == "" {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("relay: %w", err)
		}
		fmt.Fprintf(&all, "%d:", len(b))
		all.Write(b)
	}
	return all.Bytes(), nil
}

// Load reads the files into src (certificate and bundle) and returns the
// deny list. Nothing is changed when any file is bad.
func (f Files) Load(src *identity.Source) (denied []string, err error) {
	if f.CertFile == "" || f.KeyFile == "" || f.BundleFile == "" {
		return nil, fmt.Errorf("relay: a certificate, a key and a trust bundle file are required")
	}
	cb, err := os.ReadFile(f.CertFile)
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	certs, err := identity.ParseCertificatesPEM(cb)
	if err != nil {
		return nil, fmt.Errorf("relay: %s: %w", f.CertFile, err)
	}
	key, err := identity.ReadKeyFile(f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("relay: %s: %w", f.KeyFile, err)
	}
	svid, err := identity.NewSVID(certs, key)
	if err != nil {
		return nil, fmt.Errorf("relay: %s: %w", f.CertFile, err)
	}
	bb, err := os.ReadFile(f.BundleFile)
	if err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	roots, err := identity.ParseBundlePEM(bb)
	if err != nil {
		return nil, fmt.Errorf("relay: %s: %w", f.BundleFile, err)
	}
	if f.DenyFile != "" {
		db, err := os.ReadFile(f.DenyFile)
		if err != nil {
			return nil, fmt.Errorf("relay: %w", err)
		}
		if denied, err = ParseDenyList(db); err != nil {
			return nil, fmt.Errorf("relay: %s: %w", f.DenyFile, err)
		}
	}
	src.SetSVID(svid)
	src.SetBundles(x509bundle.FromX509Authorities(svid.ID.TrustDomain(), roots))
	return denied, nil
}

// ParseDenyList parses a deny file (see Files.DenyFile).
func ParseDenyList(b []byte) ([]string, error) {
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		var tr wire.Trust
		if err := json.Unmarshal(t, &tr); err != nil {
			return nil, fmt.Errorf("trust JSON: %w", err)
		}
		// Each entry is one ID, as the control plane wrote it: not lines
		// with comments ("spiffe://td/a#b" is no revocation of
		// spiffe://td/a, nor one entry two).
		ids, err := identity.CanonicalIDs(tr.Revoked)
		if err != nil {
			return nil, fmt.Errorf("trust JSON: %w", err)
		}
		return ids, nil
	}
	var ids []string
	for i, line := range strings.Split(string(b), "\n") {
		line, _, _ = strings.Cut(line, "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		id, err := spiffeid.FromString(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		ids = append(ids, id.String())
	}
	return ids, nil
}

// WatchFiles reloads files every interval until ctx is done, when their
// contents changed: a bad new version is logged and the old state kept.
// The caller has loaded them once (Files.Load) before New.
func (s *Server) WatchFiles(ctx context.Context, files Files, interval time.Duration) {
	last, _ := files.snapshot()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		snap, err := files.snapshot()
		if err != nil {
			s.mReloadErrors.Inc()
			s.log.Warn("relay: reload", "err", err)
			continue
		}
		if bytes.Equal(snap, last) {
			continue
		}
		denied, err := files.Load(s.cfg.Source)
		if err != nil {
			s.mReloadErrors.Inc()
			s.log.Warn("relay: reload: keeping the old certificate, bundle and deny list", "err", err)
			continue
		}
		last = snap
		s.SetDenied(denied)
		s.log.Info("relay: reloaded certificate, bundle and deny list", "revoked", len(denied))
	}
}
