package control

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store"
)

// High availability: replicas of one control plane on a shared store
// (internal/store/etcdstore). Objects, revisions, the store ID and the
// security records are shared by the store itself; this file shares what
// the control plane keeps elsewhere and runs the work that must run once
// on the elected leader only:
//
//   - the CA: its state directory's files are kept in the store under
//     keyCAFiles, written once by the first replica (create-if-absent) and
//     pulled by the others; a rotation (leader only) writes them again and
//     every replica reloads them. Whoever can read the store's security
//     records can read the CA key: etcd must be protected with TLS client
//     certificates and auth like the CA key file itself.
//   - heartbeats: an agent heartbeats to the replica it is connected to;
//     each replica publishes the nodes streaming to it, and the leader
//     marks not ready only nodes no live replica has a stream from.
//   - the own audit chain: each replica has its own (Config.Name must
//     differ between replicas), with its head under its own key.

// Security-record keys of a shared store.
const (
	keyCAFiles     = "ca/files" // JSON: file name in StateDir/ca -> content
	keyReplicaLive = "live/"    // + replica name + "/at" (time) or "/nodes" (JSON names)
)

// haState is the replica's view of the HA coordination.
type haState struct {
	mu          sync.Mutex // guards the following
	wasLeader   bool
	leaderSince time.Time
	caHash      [32]byte // of the keyCAFiles record last applied
	published   []byte   // the node list last published under keyReplicaLive
	witnessed   []byte   // the witnessed list last published (expiry.go)
	admin       string   // the admin URL last published (statsha.go)
	// peers are the other live replicas' admin URLs (replica → URL), as
	// the last tick read them.
	peers map[string]string
}

func (s *Server) initHA() {
	s.cfg.Metrics.NewGauge(`fogmesh_control_leader`, func() float64 {
		if s.st.Leader() {
			return 1
		}
		return 0
	})
}

// leaderName is the elected leader's name ("" if unknown); for an
// unshared store, this control plane.
func (s *Server) leaderName() string {
	if ln, ok := s.st.(interface{ LeaderName() string }); ok {
		return ln.LeaderName()
	}
	return s.cfg.Name
}

// ownHeadKey is where the own audit chain's head is kept: one per replica
// on a shared store.
func (s *Server) ownHeadKey() string {
	if s.st.Shared() {
		return keyAuditOwnHead + "/" + s.cfg.Name
	}
	return keyAuditOwnHead
}

// Status is the body of GET /v1/status.
type Status struct {
	Name     string `json:"name"`
	Store    string `json:"store"` // "bbolt" or "shared"
	StoreID  string `json:"storeID"`
	Revision uint64 `json:"revision"`
	Leader   bool   `json:"leader"`
	// LeaderName is the elected leader, as last seen.
	LeaderName string `json:"leaderName,omitempty"`
	Healthy    bool   `json:"healthy"`
	Error      string `json:"error,omitempty"`
}

// Status reports the replica's store, health and leadership.
func (s *Server) Status() Status {
	st := Status{Name: s.cfg.Name, Store: "bbolt", StoreID: s.st.ID(), Leader: s.st.Leader(), LeaderName: s.leaderName(), Healthy: true}
	if s.st.Shared() {
		st.Store = "shared"
	}
	if err := s.st.Health(); err != nil {
		st.Healthy, st.Error = false, err.Error()
	}
	st.Revision, _ = s.st.Rev()
	return st
}

// errNotLeader is returned for work that must run once when this replica
// does not lead; the admin API answers it with 503.
var errNotLeader = errors.New("this control plane replica is not the leader")

func (s *Server) needLeader(what string) error {
	if s.st.Leader() {
		return nil
	}
	return fmt.Errorf("%s: %w (leader: %q); ask the leader", what, errNotLeader, s.leaderName())
}

// openCA opens the CA; on a shared store it is the one CA of every replica
// (see the comment at the top).
func (s *Server) openCA(cfg identity.CAConfig) (*identity.CA, error) {
	if !s.st.Shared() || cfg.CertFile != "" {
		return identity.OpenCA(cfg) // an operator-provided CA is given to every replica
	}
	if _, err := s.pullCA(cfg.Dir); err != nil {
		return nil, err
	}
	ca, err := identity.OpenCA(cfg)
	if err != nil {
		return nil, err
	}
	files, err := readCAFiles(cfg.Dir)
	if err != nil {
		return nil, err
	}
	won := false
	if err := s.st.UpdateSecure(func(tx *store.SecureTx) error {
		if tx.Get(keyCAFiles) != nil {
			return nil
		}
		won = true
		return tx.Put(keyCAFiles, files)
	}); err != nil {
		return nil, fmt.Errorf("control: share the CA: %w", err)
	}
	if !won { // another replica made its CA first: take that one
		if _, err := s.pullCA(cfg.Dir); err != nil {
			return nil, err
		}
		if err := ca.Reload(); err != nil {
			return nil, err
		}
		return ca, nil
	}
	s.ha.mu.Lock()
	s.ha.caHash = sha256.Sum256(files)
	s.ha.mu.Unlock()
	return ca, nil
}

// pullCA writes the shared CA files into dir if they differ from the ones
// last applied; it reports whether it wrote.
func (s *Server) pullCA(dir string) (bool, error) {
	b, err := s.st.GetSecure(keyCAFiles)
	if err != nil || b == nil {
		return false, err
	}
	h := sha256.Sum256(b)
	s.ha.mu.Lock()
	same := h == s.ha.caHash
	s.ha.mu.Unlock()
	if same {
		return false, nil
	}
	if err := writeCARecord(dir, s.cfg.TrustDomain, b); err != nil {
		return false, err
	}
	s.ha.mu.Lock()
	s.ha.caHash = h
	s.ha.mu.Unlock()
	return true, nil
}

// writeCARecord writes the CA files of a shared CA record (keyCAFiles)
// into dir, the CA state last so that a crash leaves the old state with
// its key or the new one with its key. A record that does not hold a CA
// of trust domain td (a damaged or foreign one) is refused before
// anything is written: the CA on disk stays usable.
func writeCARecord(dir, td string, b []byte) error {
	const maxCAFileName = 128 // a CA's own are ca.json and ca-key-<serial>.pem
	var files map[string][]byte
	if err := json.Unmarshal(b, &files); err != nil {
		return fmt.Errorf("control: shared CA record: %w", err)
	}
	names := make([]string, 0, len(files))
	for name := range files {
		// A name as long as a file name may be would still fail to write
		// (the atomic write's temporary name is longer) after the files
		// before it were written: refused here, as the rest.
		if name == "" || len(name) > maxCAFileName || name != filepath.Base(name) || strings.HasPrefix(name, ".") || strings.ContainsRune(name, 0) {
			return fmt.Errorf("control: shared CA record names file %q", name)
		}
		if name != identity.CAStateFile {
			names = append(names, name)
		}
	}
	if err := identity.CheckCAFiles(td, files); err != nil {
		return fmt.Errorf("control: shared CA record: %w", err)
	}
	slices.Sort(names)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("control: CA dir: %w", err)
	}
	for _, name := range append(names, identity.CAStateFile) {
		if err := identity.WriteFileAtomic(filepath.Join(dir, name), files[name], 0o600); err != nil {
			return fmt.Errorf("control: write shared CA: %w", err)
		}
	}
	return nil
}

func readCAFiles(dir string) ([]byte, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("control: CA dir: %w", err)
	}
	files := map[string][]byte{}
	for _, e := range ents {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("control: CA dir: %w", err)
		}
		files[e.Name()] = b
	}
	return json.Marshal(files)
}

// pushCA writes this replica's CA files to the shared store after a
// rotation.
func (s *Server) pushCA() error {
	if !s.st.Shared() || s.cfg.CACertFile != "" {
		return nil
	}
	files, err := readCAFiles(filepath.Join(s.cfg.StateDir, "ca"))
	if err != nil {
		return err
	}
	if err := s.st.UpdateSecure(func(tx *store.SecureTx) error { return tx.Put(keyCAFiles, files) }); err != nil {
		return fmt.Errorf("control: share the rotated CA: %w", err)
	}
	s.ha.mu.Lock()
	s.ha.caHash = sha256.Sum256(files)
	s.ha.mu.Unlock()
	return nil
}

// followCA reloads the CA when another replica rotated it.
func (sec *security) followCA() {
	s := sec.s
	if !s.st.Shared() || s.cfg.CACertFile != "" {
		return
	}
	wrote, err := s.pullCA(filepath.Join(s.cfg.StateDir, "ca"))
	if err != nil {
		s.log.Error("control: follow the shared CA", "err", err)
		return
	}
	if !wrote {
		return
	}
	if err := sec.ca.Reload(); err != nil {
		s.log.Error("control: reload the shared CA", "err", err)
		return
	}
	s.log.Warn("control: CA rotated by another replica; reloaded", "pin", sec.ca.Pin())
}

// replicaHeartbeats publishes which nodes have a sync stream open on this
// replica and returns, for each node with a stream on a live replica, when
// that replica last said so; nil for an unshared store. It does the same
// for the nodes that peers witnessed (expiry.go): live/NAME/witnessed. A stream stays
// open only while its agent heartbeats (the read timeout drops a silent
// one), so that is as good as the heartbeat, and the records stay small:
// live/NAME/at, a timestamp, every tick; live/NAME/nodes, the node names,
// only when they change. It also tracks when this replica became leader:
// a new leader gives every node NodeTimeout from then.
func (s *Server) replicaHeartbeats() (heard, witnessed map[string]time.Time, leaderSince time.Time) {
	if !s.st.Shared() {
		return nil, nil, time.Time{}
	}
	now := time.Now()
	s.ha.mu.Lock()
	if l := s.st.Leader(); l != s.ha.wasLeader {
		s.ha.wasLeader, s.ha.leaderSince = l, now
	}
	since := s.ha.leaderSince
	s.ha.mu.Unlock()
	var mine []string
	s.mu.Lock()
	for name, l := range s.live {
		if l.conns > 0 {
			mine = append(mine, name)
		}
	}
	s.mu.Unlock()
	slices.Sort(mine)
	nodes, _ := json.Marshal(mine)
	seen := s.witnessedRecently(now)
	slices.Sort(seen)
	wit, _ := json.Marshal(seen)
	at, _ := now.UTC().MarshalText()
	admin := s.adminURL()
	s.ha.mu.Lock()
	same := bytes.Equal(nodes, s.ha.published)
	sameWit := bytes.Equal(wit, s.ha.witnessed)
	sameAdmin := admin == s.ha.admin
	s.ha.mu.Unlock()
	prefix := keyReplicaLive + s.cfg.Name + "/"
	if err := s.st.UpdateSecure(func(tx *store.SecureTx) error {
		if !same {
			if err := tx.Put(prefix+"nodes", nodes); err != nil {
				return err
			}
		}
		if !sameWit {
			if err := tx.Put(prefix+"witnessed", wit); err != nil {
				return err
			}
		}
		if !sameAdmin {
			if err := tx.Put(prefix+"admin", []byte(admin)); err != nil {
				return err
			}
		}
		return tx.Put(prefix+"at", at)
	}); err != nil {
		s.log.Debug("control: publish this replica's nodes", "err", err)
	} else {
		s.ha.mu.Lock()
		s.ha.published, s.ha.witnessed, s.ha.admin = nodes, wit, admin
		s.ha.mu.Unlock()
	}
	kvs, err := s.st.ListSecure(keyReplicaLive)
	if err != nil {
		s.log.Debug("control: read the other replicas' nodes", "err", err)
	}
	ats := map[string]time.Time{}
	lists := map[string][]string{}
	witLists := map[string][]string{}
	admins := map[string]string{}
	for _, kv := range kvs {
		replica, what, _ := strings.Cut(strings.TrimPrefix(kv.Key, keyReplicaLive), "/")
		switch what {
		case "at":
			var t time.Time
			if t.UnmarshalText(kv.Value) == nil {
				ats[replica] = t
			}
		case "nodes":
			var l []string
			if json.Unmarshal(kv.Value, &l) == nil {
				lists[replica] = l
			}
		case "witnessed":
			var l []string
			if json.Unmarshal(kv.Value, &l) == nil {
				witLists[replica] = l
			}
		case "admin":
			admins[replica] = string(kv.Value)
		}
	}
	heard, witnessed = map[string]time.Time{}, map[string]time.Time{}
	peers := map[string]string{}
	for replica, t := range ats {
		if now.Sub(t) > s.cfg.NodeTimeout {
			continue // that replica is gone: its streams are too
		}
		if replica != s.cfg.Name && admins[replica] != "" {
			peers[replica] = admins[replica]
		}
		for _, n := range lists[replica] {
			if t.After(heard[n]) {
				heard[n] = t
			}
		}
		for _, n := range witLists[replica] {
			if t.After(witnessed[n]) {
				witnessed[n] = t
			}
		}
	}
	if err == nil {
		s.ha.mu.Lock()
		s.ha.peers = peers
		s.ha.mu.Unlock()
	}
	return heard, witnessed, since
}
