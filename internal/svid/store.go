// Package svid keeps the X.509-SVIDs of a node's workloads: it asks an
// Issuer (the control plane, over the sync stream) for a certificate per
// attested identity, with a key made here that never touches the disk,
// renews each at about half its lifetime and serves them, with the trust
// bundles, to the Workload API. It also holds the renewal policy of the
// node certificate. Which workloads exist and who may fetch them is the
// caller's business: it passes them in with SetWorkloads.
package svid

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/workloadapi"
)

// Issuer signs a workload's certificate request. SyncIssuer (the control
// plane over the sync stream) implements it; the control plane checks that
// the identity belongs to a workload of the asking node.
type Issuer interface {
	// IssueWorkloadSVID returns the certificate chain (leaf first) for
	// the SPIFFE ID api.WorkloadID(td, namespace, serviceAccount).
	IssueWorkloadSVID(ctx context.Context, namespace, serviceAccount string, csrDER []byte) ([]*x509.Certificate, error)
}

// Attest selects which local processes receive a workload's SVID from the
// Workload API socket, and which may use its identity as local clients
// (the agent's localid.go). Every field that is set must match the
// caller; a workload without Attest is never handed to a caller.
type Attest struct {
	UID *int `json:"uid,omitempty"`
	GID *int `json:"gid,omitempty"`
	// Path is the caller's executable (/proc/<pid>/exe).
	Path string `json:"path,omitempty"`
}

// Matches reports whether every selector that is set matches c, and at
// least one is set.
func (at *Attest) Matches(c workloadapi.Caller) bool {
	if at == nil || !c.Known || (at.UID == nil && at.GID == nil && at.Path == "") {
		return false
	}
	if at.UID != nil && int32(*at.UID) != c.UID {
		return false
	}
	if at.GID != nil && int32(*at.GID) != c.GID {
		return false
	}
	if at.Path != "" && c.Exe != at.Path {
		return false
	}
	return true
}

// heldSVID is an SVID in memory (its key never touches the disk).
type heldSVID struct {
	svid      workloadapi.SVID
	notBefore time.Time
	notAfter  time.Time
	renewAt   time.Time
}

// Store holds the SVIDs of this node's workloads and the trust bundles,
// and implements workloadapi.Source. Its methods are safe for concurrent
// use.
type Store struct {
	log *slog.Logger

	mu sync.Mutex // guards the following
	td string
	// byID: SPIFFE ID -> SVID; attest: SPIFFE ID -> selectors of the
	// workloads that have it.
	byID    map[string]*heldSVID
	attest  map[string][]*Attest
	bundles map[string][]*x509.Certificate
	changed chan struct{}
}

// NewStore returns an empty store in api.DefaultTrustDomain; log receives
// renewal failures.
func NewStore(log *slog.Logger) *Store {
	return &Store{log: log, td: api.DefaultTrustDomain, byID: map[string]*heldSVID{},
		attest: map[string][]*Attest{}, bundles: map[string][]*x509.Certificate{}, changed: make(chan struct{})}
}

var _ workloadapi.Source = (*Store)(nil)

func (s *Store) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// SVIDs implements workloadapi.Source.
func (s *Store) SVIDs(c workloadapi.Caller) []workloadapi.SVID {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []workloadapi.SVID
	now := time.Now()
	for id, ats := range s.attest {
		h := s.byID[id]
		if h == nil || now.After(h.notAfter) {
			continue
		}
		for _, at := range ats {
			if at.Matches(c) {
				out = append(out, h.svid)
				break
			}
		}
	}
	return out
}

// Bundles implements workloadapi.Source.
func (s *Store) Bundles() map[string][]*x509.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bundles
}

// TrustDomain implements workloadapi.Source.
func (s *Store) TrustDomain() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.td
}

// Changed implements workloadapi.Source.
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// SetTrust replaces the trust domain name and the bundles (own and
// federated, by trust domain name).
func (s *Store) SetTrust(td string, bundles map[string][]*x509.Certificate) {
	s.mu.Lock()
	s.td, s.bundles = td, bundles
	s.notifyLocked()
	s.mu.Unlock()
}

// Holder is a workload that may hold an SVID.
type Holder struct {
	Namespace      string
	ServiceAccount string
	// Attest selects who may fetch the SVID; nil: nobody, and it is not
	// asked for.
	Attest *Attest
}

// SetWorkloads records which identities attested local workloads have and
// who may fetch them; identities no workload has any more are forgotten.
func (s *Store) SetWorkloads(ws []Holder) {
	s.mu.Lock()
	defer s.mu.Unlock()
	att := map[string][]*Attest{}
	for i := range ws {
		w := &ws[i]
		if w.Attest == nil {
			continue // no process may fetch it: do not ask for it
		}
		att[s.idLocked(w)] = append(att[s.idLocked(w)], w.Attest)
	}
	if reflect.DeepEqual(att, s.attest) {
		return
	}
	for id := range s.byID {
		if _, ok := att[id]; !ok {
			delete(s.byID, id)
		}
	}
	s.attest = att
	s.notifyLocked()
}

func (s *Store) idLocked(w *Holder) string {
	return api.WorkloadID(s.td, w.Namespace, w.ServiceAccount)
}

// due lists the identities with no SVID or past their renewal time.
func (s *Store) due(now time.Time) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for id := range s.attest {
		if h := s.byID[id]; h == nil || now.After(h.renewAt) {
			out = append(out, id)
		}
	}
	return out
}

// renew gets a new SVID for id from iss: a fresh key, generated here, and a
// CSR naming the SPIFFE ID. It is renewed again at about half its lifetime
// (workloadRenewAt).
func (s *Store) renew(ctx context.Context, iss Issuer, id string) error {
	u, err := url.Parse(id)
	if err != nil {
		return err
	}
	ns, sa, ok := workloadPath(u.Path)
	if !ok {
		return fmt.Errorf("svid %s: not a workload ID", id)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return err
	}
	chain, err := iss.IssueWorkloadSVID(ctx, ns, sa, csr)
	if err != nil {
		return fmt.Errorf("svid %s: %w", id, err)
	}
	if len(chain) == 0 || len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != id {
		return fmt.Errorf("svid %s: issued certificate names another identity", id)
	}
	if !key.PublicKey.Equal(chain[0].PublicKey) {
		return fmt.Errorf("svid %s: issued certificate is for another key", id)
	}
	leaf := chain[0]
	renewAt := workloadRenewAt(leaf)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.attest[id]; !ok {
		return nil // the workload went away meanwhile
	}
	s.byID[id] = &heldSVID{svid: workloadapi.SVID{ID: id, Chain: chain, Key: key},
		notBefore: leaf.NotBefore, notAfter: leaf.NotAfter, renewAt: renewAt}
	s.notifyLocked()
	return nil
}

// workloadPath splits "/ns/<ns>/sa/<sa>".
func workloadPath(p string) (ns, sa string, ok bool) {
	parts := strings.Split(p, "/")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "ns" || parts[3] != "sa" || parts[2] == "" || parts[4] == "" {
		return "", "", false
	}
	return parts[2], parts[4], true
}

// Run keeps every attested workload's SVID fresh until ctx ends: checks
// each second what is due, retries failures with backoff.
func (s *Store) Run(ctx context.Context, iss Issuer) {
	backoff := time.Second
	t := time.NewTicker(time.Second)
	defer t.Stop()
	next := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if now.Before(next) {
				continue
			}
			var failed error
			for _, id := range s.due(now) {
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				err := s.renew(rctx, iss, id)
				cancel()
				if err != nil {
					failed = errors.Join(failed, err)
				}
			}
			if failed != nil {
				s.log.Warn("svid: workload SVID renewal failed; retrying", "err", failed, "in", backoff)
				next = now.Add(backoff)
				backoff = min(2*backoff, time.Minute)
				continue
			}
			backoff = time.Second
		}
	}
}
