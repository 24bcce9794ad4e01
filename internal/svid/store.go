// Package svid keeps the X.509-SVIDs of a node's workloads: it asks an
// Issuer (the control plane, over the sync stream) for certificates per
// attested identity, with a key made here, renews them before they run out
// and serves them, with the trust bundles, to the Workload API. From a
// control plane that issues batches (BatchIssuer) it holds, per identity,
// consecutive short-lived certificates for one key that cover the
// autonomy window, serves the one whose validity covers the present, and
// keeps them in the state directory (mode 0600, beside the node key) so an
// agent restarted while cut off still serves (docs/offline.md). It also
// holds the renewal policy of the node certificate. Which workloads exist
// and who may fetch them is the caller's business: it passes them in with
// SetWorkloads.
package svid

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/workloadapi"
)

// BatchIssuer is an Issuer that can answer with a batch: chains for the
// CSR's key in order of validity, each leaf valid from half a workload
// TTL after the one before (identity.SignWorkloadBatch). It may answer
// with a single chain (an older control plane).
type BatchIssuer interface {
	IssueWorkloadBatch(ctx context.Context, namespace, serviceAccount string, csrDER []byte) ([][]*x509.Certificate, error)
}

// Issuer signs a workload's certificate request. SyncIssuer (the control
// plane over the sync stream) implements it; the control plane checks that
// the identity belongs to a workload of the asking node.
type Issuer interface {
	// IssueWorkloadSVID returns the certificate chain (leaf first) for
	// the SPIFFE ID api.WorkloadID(td, namespace, serviceAccount).
	IssueWorkloadSVID(ctx context.Context, namespace, serviceAccount string, csrDER []byte) ([]*x509.Certificate, error)
}

// heldSVID is one identity's key and its certificates: one chain, or a
// batch of chains in order of validity.
type heldSVID struct {
	id      string
	key     crypto.Signer
	chains  [][]*x509.Certificate
	renewAt time.Time
	// served is the leaf current at the last check (Run), so a change of
	// the current certificate is signalled to Workload API watchers.
	served *x509.Certificate
}

// current returns the chain to serve at now: of those valid now, the one
// that started last (its nominal start, NotBefore less the backdating, at
// or before now), so the one with the most life left; nil if none.
func (h *heldSVID) current(now time.Time) []*x509.Certificate {
	var best, fallback []*x509.Certificate
	for _, ch := range h.chains {
		leaf := ch[0]
		if now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
			continue
		}
		fallback = ch
		if !now.Before(leaf.NotBefore.Add(identity.ClockSkew)) || leaf.NotAfter.Sub(leaf.NotBefore) <= identity.ClockSkew {
			if best == nil || leaf.NotAfter.After(best[0].NotAfter) {
				best = ch
			}
		}
	}
	if best == nil {
		return fallback
	}
	return best
}

// end is when the last certificate expires.
func (h *heldSVID) end() time.Time {
	var e time.Time
	for _, ch := range h.chains {
		if ch[0].NotAfter.After(e) {
			e = ch[0].NotAfter
		}
	}
	return e
}

// Store holds the SVIDs of this node's workloads and the trust bundles,
// and implements workloadapi.Source. Its methods are safe for concurrent
// use.
type Store struct {
	log *slog.Logger

	mu sync.Mutex // guards the following
	// path, if set, is the file the SVIDs are kept in (Persist).
	path string
	// expired counts identities that ran out of valid certificates.
	expired int
	td      string
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
		if h == nil {
			continue
		}
		chain := h.current(now)
		if chain == nil {
			continue
		}
		for _, at := range ats {
			if at.Matches(c) {
				out = append(out, workloadapi.SVID{ID: id, Chain: chain, Key: h.key})
				break
			}
		}
	}
	return out
}

// Missing returns how many attested identities have no valid SVID now
// (the agent's gauge fogmesh_agent_svid_missing), and how many times one
// ran out (fogmesh_agent_svid_expired_total).
func (s *Store) Missing() (missing, expired int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	for id := range s.attest {
		if h := s.byID[id]; h == nil || h.current(now) == nil {
			missing++
		}
	}
	return missing, s.expired
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
	gone := false
	for id := range s.byID {
		if _, ok := att[id]; !ok {
			delete(s.byID, id)
			gone = true
		}
	}
	if gone {
		if err := s.saveLocked(); err != nil {
			s.log.Error("svid: workload SVIDs not saved", "err", err)
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

// renew gets new certificates for id from iss: a fresh key, generated
// here, and a CSR naming the SPIFFE ID; a batch from a BatchIssuer. They
// are renewed again at about half the lifetime of a single certificate,
// or when a ninth of a batch's span has passed (renewAt), and kept in the
// state file if there is one.
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
	var chains [][]*x509.Certificate
	if bi, ok := iss.(BatchIssuer); ok {
		chains, err = bi.IssueWorkloadBatch(ctx, ns, sa, csr)
	} else {
		var chain []*x509.Certificate
		chain, err = iss.IssueWorkloadSVID(ctx, ns, sa, csr)
		chains = [][]*x509.Certificate{chain}
	}
	if err != nil {
		return fmt.Errorf("svid %s: %w", id, err)
	}
	h, err := newHeld(id, key, chains)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.attest[id]; !ok {
		return nil // the workload went away meanwhile
	}
	s.byID[id] = h
	h.served = firstLeaf(h.current(time.Now()))
	s.notifyLocked()
	if err := s.saveLocked(); err != nil {
		s.log.Error("svid: workload SVIDs not saved; an agent restarted while cut off would have none", "err", err)
	}
	return nil
}

// newHeld checks that every chain names id and is for key, orders them by
// validity and sets the renewal time.
func newHeld(id string, key crypto.Signer, chains [][]*x509.Certificate) (*heldSVID, error) {
	if len(chains) == 0 {
		return nil, fmt.Errorf("svid %s: no certificate issued", id)
	}
	for _, chain := range chains {
		if len(chain) == 0 || len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != id {
			return nil, fmt.Errorf("svid %s: issued certificate names another identity", id)
		}
		if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(chain[0].PublicKey) {
			return nil, fmt.Errorf("svid %s: issued certificate is for another key", id)
		}
	}
	chains = slices.Clone(chains)
	slices.SortStableFunc(chains, func(a, b []*x509.Certificate) int { return a[0].NotBefore.Compare(b[0].NotBefore) })
	h := &heldSVID{id: id, key: key, chains: chains}
	if len(chains) == 1 {
		h.renewAt = workloadRenewAt(chains[0][0])
	} else {
		h.renewAt = batchRenewAt(chains[0][0].NotBefore.Add(identity.ClockSkew), h.end())
	}
	return h, nil
}

func firstLeaf(chain []*x509.Certificate) *x509.Certificate {
	if len(chain) == 0 {
		return nil
	}
	return chain[0]
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
// at least each second what is due, retries failures with backoff, and
// signals Changed when the certificate to serve changes (the next of a
// batch, or none left).
func (s *Store) Run(ctx context.Context, iss Issuer) {
	backoff := time.Second
	t := time.NewTimer(0)
	defer t.Stop()
	next := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		wake := s.check(now)
		t.Reset(min(time.Second, max(time.Until(wake), 10*time.Millisecond)))
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

// check signals Changed if an identity's current certificate changed since
// the last check, logs and counts one that ran out, and returns when the
// next change is due.
func (s *Store) check(now time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	wake := now.Add(time.Second)
	changed := false
	for id := range s.attest {
		h := s.byID[id]
		if h == nil {
			continue
		}
		cur := firstLeaf(h.current(now))
		if cur != h.served {
			changed = true
			if cur == nil {
				s.expired++
				s.log.Error("svid: no valid workload SVID left; workloads get none until a control plane issues new ones",
					"id", id, "expiredAt", h.served.NotAfter, "heldUntil", h.end(), "renewalDue", h.renewAt)
			}
			h.served = cur
		}
		for _, ch := range h.chains { // the next start or expiry
			for _, at := range []time.Time{ch[0].NotBefore.Add(identity.ClockSkew), ch[0].NotAfter} {
				if at.After(now) && at.Before(wake) {
					wake = at
				}
			}
		}
	}
	if changed {
		s.notifyLocked()
	}
	return wake
}
