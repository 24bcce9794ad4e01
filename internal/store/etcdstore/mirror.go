package etcdstore

import (
	"errors"
	"sort"
	"strings"
	"sync"

	"github.com/fogmesh/fogmesh/internal/store"
)

// mirror is the last state this replica read from etcd: every object at
// one store revision, and every security record. When no etcd member
// answers at all (not even a serializable read), reads are served from it,
// so the replica goes on admitting agents with the state it last had;
// writes still fail. It is kept current by the watch goroutine: a delta
// read after each commit it sees, the security records at each poll. It
// costs one copy of the objects in memory.
type mirror struct {
	mu      sync.Mutex // guards the following
	have    bool
	rev     uint64
	objs    map[string]store.KV
	secHave bool
	sec     map[string][]byte
}

// refreshMirror brings the objects up to the current revision: a delta if
// the change log reaches back to the mirror's revision, else a full read.
func (s *Store) refreshMirror() {
	m := &s.mirror
	m.mu.Lock()
	have, rev := m.have, m.rev
	m.mu.Unlock()
	if have {
		ch, cur, err := s.changesSinceEtcd(rev)
		if err == nil {
			m.mu.Lock()
			for _, c := range ch {
				if c.Deleted {
					delete(m.objs, c.Key)
				} else {
					m.objs[c.Key] = store.KV{Key: c.Key, Rev: c.Rev, Value: c.Value}
				}
			}
			m.rev = cur
			m.mu.Unlock()
			return
		}
		if !errors.Is(err, store.ErrCompacted) {
			return
		}
	}
	kvs, cur, _, err := s.listEtcd("")
	if err != nil {
		return
	}
	objs := make(map[string]store.KV, len(kvs))
	for _, kv := range kvs {
		objs[kv.Key] = kv
	}
	m.mu.Lock()
	if !m.have || cur >= m.rev { // never back to what a lagging member has
		m.have, m.rev, m.objs = true, cur, objs
	}
	m.mu.Unlock()
}

func (s *Store) refreshSecureMirror() {
	kvs, err := s.listSecureEtcd("")
	if err != nil {
		return
	}
	sec := make(map[string][]byte, len(kvs))
	for _, kv := range kvs {
		sec[kv.Key] = kv.Value
	}
	m := &s.mirror
	m.mu.Lock()
	m.secHave, m.sec = true, sec
	m.mu.Unlock()
}

// mirrorSecure applies this replica's own committed security writes, so
// the mirror has them at once (other replicas' arrive with the next poll).
func (s *Store) mirrorSecure(writes map[string]*[]byte) {
	m := &s.mirror
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.secHave {
		return
	}
	for k, w := range writes {
		if w == nil {
			delete(m.sec, k)
		} else {
			m.sec[k] = *w
		}
	}
}

// Mirrored returns the store revision of the last state this replica holds
// for when etcd does not answer (false if none yet).
func (s *Store) Mirrored() (uint64, bool) {
	s.mirror.mu.Lock()
	defer s.mirror.mu.Unlock()
	return s.mirror.rev, s.mirror.have
}

// fallback reports whether err lets a read be served from the mirror.
func fallback(err error) bool { return errors.Is(err, store.ErrUnavailable) }

// Rev returns the current store revision.
func (s *Store) Rev() (uint64, error) {
	r, err := s.revEtcd()
	if err != nil && fallback(err) {
		if mr, ok := s.Mirrored(); ok {
			return mr, nil
		}
	}
	return r, err
}

// Get reads one object.
func (s *Store) Get(key string) (store.KV, bool, error) {
	kv, ok, err := s.getEtcd(key)
	if err != nil && fallback(err) {
		m := &s.mirror
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.have {
			kv, ok := m.objs[key]
			return kv, ok, nil
		}
	}
	return kv, ok, err
}

// List returns every object with prefix, in key order, and the revision
// the listing is consistent with (both read at one etcd revision). When
// etcd does not answer, or only a member behind the mirror does, it is the
// mirror's.
func (s *Store) List(prefix string) ([]store.KV, uint64, error) {
	kvs, rev, stale, err := s.listEtcd(prefix)
	if err != nil && fallback(err) || err == nil && stale {
		m := &s.mirror
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.have && (err != nil || m.rev > rev) {
			out := []store.KV{}
			for k, kv := range m.objs {
				if strings.HasPrefix(k, prefix) {
					out = append(out, kv)
				}
			}
			sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
			return out, m.rev, nil
		}
	}
	return kvs, rev, err
}

// ChangesSince returns the latest state of every object changed after rev.
// It returns store.ErrCompacted if the log no longer reaches back to rev or
// rev is ahead of the store. Served from the mirror, a subscriber at the
// mirror's revision gets nothing new, one behind it a snapshot
// (ErrCompacted), and one ahead of it the error: it has newer state than
// this replica can show.
func (s *Store) ChangesSince(rev uint64) ([]store.Change, uint64, error) {
	ch, cur, err := s.changesSinceEtcd(rev)
	if err != nil && fallback(err) {
		if mr, ok := s.Mirrored(); ok {
			switch {
			case rev == mr:
				return nil, mr, nil
			case rev < mr:
				return nil, mr, store.ErrCompacted
			}
		}
	}
	return ch, cur, err
}

// GetSecure returns the security record key, or nil.
func (s *Store) GetSecure(key string) ([]byte, error) {
	v, err := s.getSecureEtcd(key)
	if err != nil && fallback(err) {
		m := &s.mirror
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.secHave {
			return m.sec[key], nil
		}
	}
	return v, err
}

// ListSecure returns every security record with prefix, in key order.
func (s *Store) ListSecure(prefix string) ([]store.KV, error) {
	kvs, err := s.listSecureEtcd(prefix)
	if err != nil && fallback(err) {
		m := &s.mirror
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.secHave {
			var out []store.KV
			for k, v := range m.sec {
				if strings.HasPrefix(k, prefix) {
					out = append(out, store.KV{Key: k, Value: v})
				}
			}
			sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
			return out, nil
		}
	}
	return kvs, err
}

// ChangedKeys returns the keys that changed after rev, each once, and the
// current revision (store.Backend); ErrCompacted as ChangesSince.
func (s *Store) ChangedKeys(rev uint64) ([]string, uint64, error) {
	changes, cur, err := s.ChangesSince(rev)
	if err != nil {
		return nil, 0, err
	}
	keys := make([]string, 0, len(changes))
	for _, c := range changes {
		keys = append(keys, c.Key)
	}
	return keys, cur, nil
}
