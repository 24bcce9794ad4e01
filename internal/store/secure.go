package store

import (
	"bytes"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bucketSecure holds security records: token hashes, the node deny list,
// federated bundles. They are not objects: they have no revision, are not
// in the change log and are never streamed to agents as resources.
var bucketSecure = []byte("secure")

// boltSecure is the bbolt side of a SecureTx.
type boltSecure struct{ b *bolt.Bucket }

func (t boltSecure) Get(key string) []byte { return bytes.Clone(t.b.Get([]byte(key))) }

func (t boltSecure) Put(key string, value []byte) error { return t.b.Put([]byte(key), value) }

func (t boltSecure) Delete(key string) error { return t.b.Delete([]byte(key)) }

func (t boltSecure) List(prefix string) []KV {
	var out []KV
	c := t.b.Cursor()
	p := []byte(prefix)
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		out = append(out, KV{Key: string(k), Value: bytes.Clone(v)})
	}
	return out
}

// UpdateSecure runs fn in a write transaction on the security bucket. If fn
// returns an error nothing is stored.
//
// It joins the group commit of Update: a security record written while
// objects are committed (the audit head after every admin change) shares
// their transaction and fsync instead of holding bbolt's one writer for
// a commit of its own. fn may run twice, as Update's.
func (s *Store) UpdateSecure(fn func(*SecureTx) error) error {
	p := &pending{secure: fn, done: make(chan struct{}), lead: make(chan struct{})}
	s.enqueue(p)
	return p.err
}

// UpdateSecureLazy is UpdateSecure for a record that may wait: it rides
// along with the next commit of another caller, and commits on its own
// only if none starts within wait. A record written after every admin
// change (the audit head) then costs no write transaction of its own
// while changes keep coming.
func (s *Store) UpdateSecureLazy(fn func(*SecureTx) error, wait time.Duration) error {
	p := &pending{secure: fn, lazy: max(wait, 0), done: make(chan struct{}), lead: make(chan struct{})}
	s.enqueue(p)
	return p.err
}

// GetSecure returns a copy of the security record key, or nil, in a read
// transaction (no write, no fsync).
func (s *Store) GetSecure(key string) (v []byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketSecure); b != nil {
			v = bytes.Clone(b.Get([]byte(key)))
		}
		return nil
	})
	return v, err
}

// ListSecure returns every security record with prefix.
func (s *Store) ListSecure(prefix string) (kvs []KV, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSecure)
		if b == nil {
			return nil
		}
		kvs = boltSecure{b: b}.List(prefix)
		return nil
	})
	return kvs, err
}
