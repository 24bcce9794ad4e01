package svid

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// SyncIssuer is the Issuer of a secure agent: it asks the control plane
// over the mutually authenticated sync stream, which signs only identities
// of endpoints on this node. The stream's owner calls Connected and Answer.
type SyncIssuer struct {
	mu    sync.Mutex // guards the following
	write func(*wire.Message) error
	// batch: the control plane lists wire.FeatureSVIDBatch.
	batch   bool
	pending map[string]chan *wire.Message
}

var (
	_ Issuer      = (*SyncIssuer)(nil)
	_ BatchIssuer = (*SyncIssuer)(nil)
)

var errNoControl = errors.New("no control plane stream that signs workload SVIDs")

// NewSyncIssuer returns an issuer with no stream: calls fail until
// Connected.
func NewSyncIssuer() *SyncIssuer { return &SyncIssuer{pending: map[string]chan *wire.Message{}} }

// Connected sets the stream's writer (nil when it ends; pending calls
// fail) and whether its control plane issues batches
// (wire.FeatureSVIDBatch).
func (s *SyncIssuer) Connected(write func(*wire.Message) error, batch bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.write, s.batch = write, batch && write != nil
	if write == nil {
		for n, ch := range s.pending {
			close(ch)
			delete(s.pending, n)
		}
	}
}

// Answer delivers a TypeSVIDIssued to its caller.
func (s *SyncIssuer) Answer(m *wire.Message) {
	s.mu.Lock()
	ch := s.pending[m.Nonce]
	delete(s.pending, m.Nonce)
	s.mu.Unlock()
	if ch != nil {
		ch <- m
	}
}

// IssueWorkloadSVID implements Issuer: one chain, the first of a batch
// if the control plane sends one.
func (s *SyncIssuer) IssueWorkloadSVID(ctx context.Context, ns, sa string, csr []byte) ([]*x509.Certificate, error) {
	chains, err := s.issue(ctx, ns, sa, csr, false)
	if err != nil {
		return nil, err
	}
	return chains[0], nil
}

// IssueWorkloadBatch implements BatchIssuer: a batch from a control plane
// that issues them, else one chain.
func (s *SyncIssuer) IssueWorkloadBatch(ctx context.Context, ns, sa string, csr []byte) ([][]*x509.Certificate, error) {
	return s.issue(ctx, ns, sa, csr, true)
}

func (s *SyncIssuer) issue(ctx context.Context, ns, sa string, csr []byte, batch bool) ([][]*x509.Certificate, error) {
	var nb [8]byte
	rand.Read(nb[:])
	nonce := hex.EncodeToString(nb[:])
	ch := make(chan *wire.Message, 1)
	s.mu.Lock()
	write := s.write
	if write == nil {
		s.mu.Unlock()
		return nil, errNoControl
	}
	batch = batch && s.batch
	s.pending[nonce] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, nonce)
		s.mu.Unlock()
	}()
	if err := write(&wire.Message{Type: wire.TypeSVID, Nonce: nonce, CSR: csr,
		SVID: &wire.SVIDRequest{Namespace: ns, ServiceAccount: sa, Batch: batch}}); err != nil {
		return nil, err
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case m, ok := <-ch:
		if !ok {
			return nil, errNoControl
		}
		if m.Error != "" {
			return nil, fmt.Errorf("control plane refused: %s", m.Error)
		}
		ders, err := wire.SVIDChains(m)
		if err != nil {
			return nil, err
		}
		out := make([][]*x509.Certificate, 0, len(ders))
		for _, d := range ders {
			c, err := identity.ParseDERs(d)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		return out, nil
	}
}
