package agent

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

// syncIssuer is the SVIDIssuer of a secure agent: it asks the control plane
// over the mutually authenticated sync stream, which signs only identities
// of endpoints on this node.
type syncIssuer struct {
	mu      sync.Mutex // guards the following
	write   func(*wire.Message) error
	pending map[string]chan *wire.Message
}

var errNoControl = errors.New("no control plane stream that signs workload SVIDs")

func newSyncIssuer() *syncIssuer { return &syncIssuer{pending: map[string]chan *wire.Message{}} }

// connected sets the stream's writer (nil when it ends; pending calls fail).
func (s *syncIssuer) connected(write func(*wire.Message) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.write = write
	if write == nil {
		for n, ch := range s.pending {
			close(ch)
			delete(s.pending, n)
		}
	}
}

// answer delivers a TypeSVIDIssued to its caller.
func (s *syncIssuer) answer(m *wire.Message) {
	s.mu.Lock()
	ch := s.pending[m.Nonce]
	delete(s.pending, m.Nonce)
	s.mu.Unlock()
	if ch != nil {
		ch <- m
	}
}

// IssueWorkloadSVID implements SVIDIssuer.
func (s *syncIssuer) IssueWorkloadSVID(ctx context.Context, ns, sa string, csr []byte) ([]*x509.Certificate, error) {
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
	s.pending[nonce] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, nonce)
		s.mu.Unlock()
	}()
	if err := write(&wire.Message{Type: wire.TypeSVID, Nonce: nonce, CSR: csr,
		SVID: &wire.SVIDRequest{Namespace: ns, ServiceAccount: sa}}); err != nil {
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
		return identity.ParseDERs(m.Certificates)
	}
}
