package svid

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/fogmesh/fogmesh/internal/atomicfile"
	"github.com/fogmesh/fogmesh/internal/identity"
)

// stateFile is the file Persist keeps: per identity its key (PEM) and
// its chains (DER, leaf first), mode 0600 like the node key beside it.
type stateFile struct {
	SVIDs []stateSVID `json:"svids"`
}

type stateSVID struct {
	ID     string     `json:"id"`
	Key    string     `json:"key"`
	Chains [][][]byte `json:"chains"`
}

// Persist makes the store keep its SVIDs in path, and loads those path
// holds (skipping, with a warning, any that are unreadable, expired or do
// not match their key), so an agent restarted while cut off from every
// control plane serves its workloads' SVIDs. Call it before SetWorkloads
// and Run. A missing file is no error.
func (s *Store) Persist(path string) error {
	b, err := os.ReadFile(path)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.path = path
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("svid: %w", err)
	}
	var f stateFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("svid: %s: %w", path, err)
	}
	now := time.Now()
	for _, e := range f.SVIDs {
		h, err := loadHeld(e)
		if err == nil && h.current(now) == nil && !h.end().After(now) {
			err = errors.New("expired")
		}
		if err != nil {
			s.log.Warn("svid: saved workload SVID skipped", "id", e.ID, "err", err)
			continue
		}
		s.byID[e.ID] = h
	}
	return nil
}

func loadHeld(e stateSVID) (*heldSVID, error) {
	key, err := identity.ParseKeyPEM([]byte(e.Key))
	if err != nil {
		return nil, err
	}
	chains := make([][]*x509.Certificate, 0, len(e.Chains))
	for _, ders := range e.Chains {
		c, err := identity.ParseDERs(ders)
		if err != nil {
			return nil, err
		}
		chains = append(chains, c)
	}
	return newHeld(e.ID, key, chains)
}

// saveLocked writes every held SVID to the state file, if there is one.
func (s *Store) saveLocked() error {
	if s.path == "" {
		return nil
	}
	var f stateFile
	for id, h := range s.byID {
		k, err := identity.EncodeKeyPEM(h.key)
		if err != nil {
			return err
		}
		e := stateSVID{ID: id, Key: string(k)}
		for _, ch := range h.chains {
			e.Chains = append(e.Chains, identity.DERs(ch))
		}
		f.SVIDs = append(f.SVIDs, e)
	}
	b, err := json.Marshal(&f)
	if err != nil {
		return err
	}
	return atomicfile.Write(s.path, b, 0o600)
}
