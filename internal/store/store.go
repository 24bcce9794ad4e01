// Package store is the control plane's embedded store: one bbolt file holding
// objects under string keys, a revision counter, and a bounded log of which
// keys changed at which revision. The log is what lets the control plane send
// an agent that reconnects only what changed since the version it holds.
//
// Every Update commits atomically (bbolt fsyncs before returning), so a
// control plane killed at any moment loses nothing it acknowledged.
package store

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrCompacted is returned by ChangesSince when the log no longer reaches back
// to the asked revision; the caller must fall back to a full List.
var ErrCompacted = errors.New("store: revision compacted")

// ErrWrite marks a write the store could not commit (a full or failing
// disk), as opposed to an error of the caller's transaction function.
// Nothing of the transaction is stored; what was stored before stays.
var ErrWrite = errors.New("store: write failed")

var (
	bucketMeta    = []byte("meta")
	bucketObjects = []byte("objects")
	bucketLog     = []byte("log")
	keyID         = []byte("id")
	keyRev        = []byte("rev")
	keyCompacted  = []byte("compacted")
)

// Options tune a Store. The zero value works.
type Options struct {
	// LogRetention is how many change-log entries are kept (default 10000).
	LogRetention int
}

// Store is safe for concurrent use.
type Store struct {
	db        *bolt.DB
	retention int
	id        string

	// Group commit (Update): updates queued while a commit runs, and whether a
	// caller is committing (Update).
	gmu        sync.Mutex
	queue      []*pending
	committing bool
	commits    atomic.Int64 // write transactions (tests)

	// listed counts the keys List and Tx.List returned: a scan of the
	// whole store shows here (Listed).
	listed atomic.Uint64

	// rev is the committed revision, kept here so that Rev needs no read
	// transaction: at 10,000 agents the control plane asks for it on
	// every heartbeat (2,000 a second), and each View waits for bbolt's
	// meta lock behind the writer's commits (thousands of agent streams
	// were seen queued there). Only this process writes the file.
	rev atomic.Uint64

	mu    sync.Mutex // guards the following
	watch chan struct{}
}

// Commits returns how many write transactions the store has run (each
// is two fdatasyncs), so tests can tell grouped writes from single ones.
func (s *Store) Commits() int64 { return s.commits.Load() }

// Listed returns how many keys List and Tx.List have returned since Open,
// so tests and metrics can tell an indexed read from a scan.
func (s *Store) Listed() uint64 { return s.listed.Load() }

// KV is a stored object.
type KV struct {
	Key   string
	Rev   uint64 // revision at which the key last changed
	Value []byte
}

// Change is the latest state of a key that changed after some revision.
type Change struct {
	Key     string
	Rev     uint64
	Value   []byte // nil if Deleted
	Deleted bool
}

// Open opens or creates the store file at path.
func Open(path string, opts Options) (*Store, error) {
	if opts.LogRetention <= 0 {
		opts.LogRetention = 10000
	}
	// bbolt makes a new database in a file of zero bytes. One that exists
	// empty was cut (a restore gone wrong, a damaged disk): opening it
	// would start from nothing and forget, without a word, the deny list,
	// the used tokens and the audit heads.
	if fi, err := os.Stat(path); err == nil && fi.Size() == 0 {
		return nil, fmt.Errorf("store: %s is empty (0 bytes): the store was truncated or damaged; not starting with an empty store, which would forget revocations, tokens and audit heads: restore it from a backup, or remove it to start a new store", path)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s := &Store{db: db, retention: opts.LogRetention, watch: make(chan struct{})}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketObjects, bucketLog} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		m := tx.Bucket(bucketMeta)
		s.rev.Store(u64(m.Get(keyRev)))
		if id := m.Get(keyID); id != nil {
			s.id = string(id)
			return nil
		}
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		s.id = hex.EncodeToString(b[:])
		return m.Put(keyID, []byte(s.id))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: init %s: %w", path, err)
	}
	return s, nil
}

// ID is a random identifier made when the store file was created. A
// subscriber that holds versions from another store must resync in full.
func (s *Store) ID() string { return s.id }

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

func u64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func be(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

// object value layout: 8-byte revision, then the value bytes.

// Rev returns the current revision (0 for an empty store).
func (s *Store) Rev() (uint64, error) {
	return s.rev.Load(), nil
}

// Watch returns a channel that is closed at the next commit.
func (s *Store) Watch() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.watch
}

// boltTx is the bbolt side of a Tx: objects and the change log in one
// bolt transaction.
type boltTx struct {
	s   *Store // nil: reads not counted
	tx  *bolt.Tx
	rev uint64
}

func (b boltTx) Get(key string) (KV, bool) {
	v := b.tx.Bucket(bucketObjects).Get([]byte(key))
	if v == nil || len(v) < 8 {
		return KV{}, false
	}
	return KV{Key: key, Rev: u64(v[:8]), Value: bytes.Clone(v[8:])}, true
}

func (b boltTx) List(prefix string) []KV {
	kvs := list(b.tx, prefix)
	if b.s != nil {
		b.s.listed.Add(uint64(len(kvs)))
	}
	return kvs
}

func (b boltTx) Put(key string, value []byte, rev uint64) error {
	v := make([]byte, 8+len(value))
	copy(v, be(rev))
	copy(v[8:], value)
	if err := b.tx.Bucket(bucketObjects).Put([]byte(key), v); err != nil {
		return err
	}
	return b.log(key, rev)
}

func (b boltTx) Delete(key string, rev uint64) (bool, error) {
	bk := b.tx.Bucket(bucketObjects)
	if bk.Get([]byte(key)) == nil {
		return false, nil
	}
	if err := bk.Delete([]byte(key)); err != nil {
		return false, err
	}
	return true, b.log(key, rev)
}

// log entry key: 8-byte rev + key bytes (a revision may change many keys).
func (b boltTx) log(key string, rev uint64) error {
	k := append(be(rev), key...)
	return b.tx.Bucket(bucketLog).Put(k, nil)
}

// Update runs fn in a write transaction. If fn writes nothing, the revision
// does not move. If fn returns an error, nothing is stored.
//
// Updates from concurrent callers are committed together (group commit):
// the first caller commits, in one bbolt transaction and one fsync, every
// update queued while the previous commit ran, each at its own revision,
// and returns when they are durable. When an fn fails, the others of its
// group run again alone, so fn must not have side effects outside the
// transaction that a second run would repeat wrongly.
func (s *Store) Update(fn func(*Tx) error) (rev uint64, err error) {
	p := &pending{fn: fn, done: make(chan struct{}), lead: make(chan struct{})}
	s.enqueue(p)
	return p.rev, p.err
}

// enqueue commits p in a group (Update, UpdateSecure) and returns when
// it is committed or failed.
func (s *Store) enqueue(p *pending) {
	s.gmu.Lock()
	s.queue = append(s.queue, p)
	if s.committing || p.lazy > 0 {
		s.gmu.Unlock()
		if !s.await(p) {
			return // committed in another caller's group
		}
	}
	// Each caller commits at most one group, its own included, then hands
	// the queue to the next waiting caller: no caller is kept committing
	// the others' updates for as long as they keep coming.
	s.committing = true
	group := s.queue
	s.queue = nil
	s.gmu.Unlock()
	s.commit(group)
	s.gmu.Lock()
	// Hand over to the first caller that waits for a commit; updates that
	// only ride along (lazy) wait for one, or for their own timers.
	if i := slices.IndexFunc(s.queue, func(q *pending) bool { return q.lazy == 0 }); i >= 0 {
		close(s.queue[i].lead)
	} else {
		s.committing = false
	}
	s.gmu.Unlock()
}

// await waits until p is committed in another caller's group (false) or
// p is to commit the queue (true, with gmu held): handed over by the
// previous committer, or, for a lazy update, after p.lazy with no group
// under way.
func (s *Store) await(p *pending) bool {
	if p.lazy > 0 { // never handed over to: see enqueue
		t := time.NewTimer(p.lazy)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				return false
			case <-t.C:
			}
			s.gmu.Lock()
			queued := slices.Contains(s.queue, p)
			if queued && !s.committing {
				return true
			}
			s.gmu.Unlock()
			if !queued {
				<-p.done // a group under way took it
				return false
			}
			t.Reset(p.lazy) // queued behind a commit, which may leave it to the timers
		}
	}
	select {
	case <-p.done:
		return false
	case <-p.lead:
		s.gmu.Lock()
		return true
	}
}

// pending is one caller's update waiting for its group's commit.
type pending struct {
	fn      func(*Tx) error
	secure  func(*SecureTx) error // instead of fn: an UpdateSecure
	lazy    time.Duration         // > 0: wait up to this long for another caller's commit to ride along
	rev     uint64
	changed bool
	err     error
	fnErr   error         // the error fn returned, if any (else a failed commit)
	done    chan struct{} // closed when committed (or failed)
	lead    chan struct{} // closed when this caller is to commit the queue
}

// errInGroup marks the failure of one update of a group.
type errInGroup struct {
	p   *pending
	err error
}

func (e *errInGroup) Error() string { return e.err.Error() }

// commit stores a group in one transaction; if one of its updates fails,
// each runs again in a transaction of its own.
func (s *Store) commit(group []*pending) {
	s.commits.Add(1)
	err := s.db.Update(func(btx *bolt.Tx) error {
		for _, p := range group {
			if err := s.run(btx, p); err != nil {
				return &errInGroup{p, err}
			}
		}
		return nil
	})
	var eg *errInGroup
	if err != nil && len(group) > 1 && errors.As(err, &eg) {
		for _, p := range group {
			s.commits.Add(1)
			p.err = s.db.Update(func(btx *bolt.Tx) error { return s.run(btx, p) })
			s.finish([]*pending{p}, p.err)
		}
		return
	}
	if errors.As(err, &eg) {
		err = eg.err
	}
	s.finish(group, err)
}

// run applies one update inside btx.
func (s *Store) run(btx *bolt.Tx, p *pending) error {
	if p.secure != nil {
		p.fnErr = nil
		b, err := btx.CreateBucketIfNotExists(bucketSecure)
		if err != nil {
			return err
		}
		if err := p.secure(NewSecureTx(boltSecure{b: b})); err != nil {
			p.fnErr = err
			return err
		}
		return nil
	}
	m := btx.Bucket(bucketMeta)
	next := u64(m.Get(keyRev)) + 1
	t := NewTx(boltTx{s: s, tx: btx, rev: next}, next)
	p.changed, p.rev, p.fnErr = false, t.rev-1, nil
	if err := p.fn(t); err != nil {
		p.fnErr = err
		return err
	}
	if t.changed == 0 {
		return nil
	}
	p.changed, p.rev = true, t.rev
	if err := m.Put(keyRev, be(t.rev)); err != nil {
		return err
	}
	return s.compactLocked(btx)
}

// finish hands a committed (or failed) group its results and wakes the
// watchers if anything changed.
func (s *Store) finish(group []*pending, err error) {
	changed := false
	for _, p := range group {
		if err != nil {
			p.rev, p.err = 0, err
			if p.fnErr == nil { // the disk, not the caller: see ErrWrite
				p.err = fmt.Errorf("%w: %w", ErrWrite, err)
			}
		} else {
			changed = changed || p.changed
			if p.changed && p.rev > s.rev.Load() { // commits are serial: no other writer of rev
				s.rev.Store(p.rev)
			}
		}
	}
	if changed {
		s.mu.Lock()
		close(s.watch)
		s.watch = make(chan struct{})
		s.mu.Unlock()
	}
	for _, p := range group {
		close(p.done)
	}
}

// compactLocked trims the log to the retention and records the highest
// revision dropped.
func (s *Store) compactLocked(tx *bolt.Tx) error {
	lb := tx.Bucket(bucketLog)
	n := lb.Stats().KeyN
	if n <= s.retention {
		return nil
	}
	drop := n - s.retention
	c := lb.Cursor()
	var last uint64
	var keys [][]byte
	for k, _ := c.First(); k != nil && drop > 0; k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
		last = u64(k[:8])
		drop--
	}
	for _, k := range keys {
		if err := lb.Delete(k); err != nil {
			return err
		}
	}
	// A revision is only fully in the log if none of its entries was
	// dropped, so everything up to and including `last` counts as compacted.
	return tx.Bucket(bucketMeta).Put(keyCompacted, be(last))
}

// Get reads one key.
func (s *Store) Get(key string) (kv KV, ok bool, err error) {
	err = s.db.View(func(btx *bolt.Tx) error {
		kv, ok = boltTx{tx: btx}.Get(key)
		return nil
	})
	return kv, ok, err
}

// List returns every key with the prefix, in key order, and the revision the
// listing is consistent with.
func (s *Store) List(prefix string) (kvs []KV, rev uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		kvs = list(tx, prefix)
		s.listed.Add(uint64(len(kvs)))
		rev = u64(tx.Bucket(bucketMeta).Get(keyRev))
		return nil
	})
	return kvs, rev, err
}

func list(tx *bolt.Tx, prefix string) []KV {
	var out []KV
	c := tx.Bucket(bucketObjects).Cursor()
	p := []byte(prefix)
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		if len(v) < 8 {
			continue
		}
		out = append(out, KV{Key: string(k), Rev: u64(v[:8]), Value: bytes.Clone(v[8:])})
	}
	return out
}

// ChangesSince returns the latest state of every key that changed after rev,
// and the current revision. It returns ErrCompacted if the log does not reach
// back to rev, and also if rev is ahead of the store (a subscriber from the
// future holds another history).
func (s *Store) ChangesSince(rev uint64) (changes []Change, current uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		current = u64(m.Get(keyRev))
		if rev < u64(m.Get(keyCompacted)) || rev > current {
			return ErrCompacted
		}
		last := map[string]uint64{} // key -> last revision it changed at
		var order []string
		c := tx.Bucket(bucketLog).Cursor()
		for k, _ := c.Seek(be(rev + 1)); k != nil; k, _ = c.Next() {
			key := string(k[8:])
			if _, ok := last[key]; !ok {
				order = append(order, key)
			}
			last[key] = u64(k[:8])
		}
		for _, key := range order {
			kv, ok := boltTx{tx: tx}.Get(key)
			if !ok {
				changes = append(changes, Change{Key: key, Rev: last[key], Deleted: true})
				continue
			}
			changes = append(changes, Change{Key: key, Rev: kv.Rev, Value: kv.Value})
		}
		return nil
	})
	return changes, current, err
}

// ChangedKeys returns, without their values, the keys that changed after
// rev (each once, in the order of their first change) and the current
// revision; ErrCompacted as ChangesSince. A subscriber that resumes from
// an old version then takes each key's state from a view the caller holds
// (the control plane's feed) instead of decoding it again.
func (s *Store) ChangedKeys(rev uint64) (keys []string, current uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		current = u64(m.Get(keyRev))
		if rev < u64(m.Get(keyCompacted)) || rev > current {
			return ErrCompacted
		}
		seen := map[string]bool{}
		c := tx.Bucket(bucketLog).Cursor()
		for k, _ := c.Seek(be(rev + 1)); k != nil; k, _ = c.Next() {
			if key := string(k[8:]); !seen[key] {
				seen[key] = true
				keys = append(keys, key)
			}
		}
		return nil
	})
	return keys, current, err
}
