package store

import (
	"errors"
)

// ErrUnavailable wraps every error of a shared store that could not reach
// its backend (etcd down, quorum lost, timeout): the caller cannot write
// now but may serve what it already has. The admin API answers it with 503.
var ErrUnavailable = errors.New("store unavailable")

// Backend is the store the control plane uses: the embedded bbolt Store
// (one replica, the default) or a shared one (internal/store/etcdstore)
// that several replicas of one control plane use at once.
//
// Revisions and the ID belong to the store, not to a replica: every
// replica of a shared store reports the same ones, so an agent moving
// between replicas resumes with a delta.
type Backend interface {
	// ID identifies the store's history (see Store.ID).
	ID() string
	// Rev returns the current revision.
	Rev() (uint64, error)
	// Watch returns a channel closed at the next commit (of any replica).
	Watch() <-chan struct{}
	// Update runs fn in a write transaction; see Store.Update.
	Update(fn func(*Tx) error) (uint64, error)
	Get(key string) (KV, bool, error)
	List(prefix string) ([]KV, uint64, error)
	// ChangesSince: see Store.ChangesSince; ErrCompacted means resync in full.
	ChangesSince(rev uint64) ([]Change, uint64, error)
	// ChangedKeys is ChangesSince without the values (each key once).
	ChangedKeys(rev uint64) ([]string, uint64, error)

	UpdateSecure(fn func(*SecureTx) error) error
	GetSecure(key string) ([]byte, error)
	ListSecure(prefix string) ([]KV, error)

	// Health returns nil if writes can be expected to succeed now.
	Health() error
	// Shared reports whether other replicas use this store too (then the
	// CA and the work that must run once are coordinated through it).
	Shared() bool
	// Leader reports whether this replica does the work that must run
	// once (always true for an unshared store).
	Leader() bool
	Close() error
}

// TxBackend is what a Tx reads and writes through; each Backend has one.
// Put and Delete record the change at rev in the store's change log.
type TxBackend interface {
	Get(key string) (KV, bool)
	List(prefix string) []KV
	Put(key string, value []byte, rev uint64) error
	// Delete reports whether key existed.
	Delete(key string, rev uint64) (bool, error)
}

// Tx is a write transaction. Every key written in it gets revision Rev().
type Tx struct {
	b       TxBackend
	rev     uint64
	changed int
}

// NewTx makes a transaction that commits at rev (for Backend implementations).
func NewTx(b TxBackend, rev uint64) *Tx { return &Tx{b: b, rev: rev} }

// Changed is how many writes the transaction made.
func (t *Tx) Changed() int { return t.changed }

// Rev is the revision this transaction commits at.
func (t *Tx) Rev() uint64 { return t.rev }

// Get reads a key inside the transaction.
func (t *Tx) Get(key string) (KV, bool) { return t.b.Get(key) }

// List reads every key with prefix inside the transaction, in key order.
func (t *Tx) List(prefix string) []KV { return t.b.List(prefix) }

// Put writes a key.
func (t *Tx) Put(key string, value []byte) error {
	if key == "" {
		return errors.New("store: empty key")
	}
	if err := t.b.Put(key, value, t.rev); err != nil {
		return err
	}
	t.changed++
	return nil
}

// Delete removes a key; deleting a missing key is a no-op.
func (t *Tx) Delete(key string) error {
	ok, err := t.b.Delete(key, t.rev)
	if ok {
		t.changed++
	}
	return err
}

// SecureBackend is what a SecureTx reads and writes through.
type SecureBackend interface {
	Get(key string) []byte
	Put(key string, value []byte) error
	Delete(key string) error
	List(prefix string) []KV
}

// SecureTx is a write transaction on the security records.
type SecureTx struct{ b SecureBackend }

// NewSecureTx makes a security transaction (for Backend implementations).
func NewSecureTx(b SecureBackend) *SecureTx { return &SecureTx{b: b} }

// Get returns a copy of the value of key, or nil.
func (t *SecureTx) Get(key string) []byte { return t.b.Get(key) }

// Put writes key.
func (t *SecureTx) Put(key string, value []byte) error {
	if key == "" {
		return errors.New("store: empty key")
	}
	return t.b.Put(key, value)
}

// Delete removes key; a missing key is a no-op.
func (t *SecureTx) Delete(key string) error { return t.b.Delete(key) }

// List returns every key with prefix and its value, in key order.
func (t *SecureTx) List(prefix string) []KV { return t.b.List(prefix) }

var _ Backend = (*Store)(nil)

// Health checks that the file answers.
func (s *Store) Health() error { _, err := s.Rev(); return err }

// Shared is false: one bbolt file belongs to one control plane.
func (s *Store) Shared() bool { return false }

// Leader is true: the only replica does everything.
func (s *Store) Leader() bool { return true }
