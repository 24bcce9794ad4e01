// Package etcdstore is the control plane's shared store: replicas of one
// control plane keep objects, the revision counter, the change log and the
// security records (tokens, deny list, trust bundles, audit heads, and the
// CA state: see control's ha.go) in one etcd cluster, and elect a leader
// for the work that must run once.
//
// It is linked by the control plane only (cmd/fogmesh), never by the agent.
//
// Layout under Prefix (default "/fogmesh/"):
//
//	meta/id          the store ID, made once by the first replica (create-if-absent)
//	meta/rev         the object revision counter (8 bytes big endian)
//	meta/compacted   the highest revision dropped from the change log
//	meta/secseq      bumped by every security transaction
//	obj/KEY          8-byte revision + object value
//	log/REV          the keys changed at REV, one per line (REV: 16 hex digits)
//	sec/KEY          security records
//	election/        the leader election (concurrency.Election)
//
// # Faults
//
// Reads are linearizable; without quorum they fall back to a serializable
// read of whichever member answers, and with no member answering to the
// mirror (mirror.go), the last state this replica read. A subscriber is
// never given a state older than its version. Writes fail with
// store.ErrUnavailable.
//
// # Transactions
//
// Writes are optimistic, not leader-only: a transaction reads at one etcd
// revision, runs, and commits with a compare that meta/rev (for objects) or
// meta/secseq (for security records) was not modified since; every commit
// modifies it, so a commit only succeeds if nothing it could have read
// changed, and otherwise it runs again on fresh reads. This is serializable
// and needs no forwarding between replicas: an agent's registration or an
// admin apply is committed by whichever replica it reached, and a replica
// that lost the election (or cannot tell) still writes correctly. Work
// that must run once (expiring stale nodes, CA rotation) asks Leader; VIP
// allocation needs no leader because it is one such transaction.
//
// # Revisions and the change log
//
// The store revision is the meta/rev counter, not etcd's revision: etcd's
// moves with every lease keep-alive of the election and every security
// write, while agents must see versions move only with objects. The change
// log is kept in etcd next to the objects, written in the same transaction,
// and trimmed to Retention revisions (older: ErrCompacted, so the agent gets
// a snapshot). ChangesSince is then one range read at one etcd revision and
// does not depend on etcd's own compaction, which operators set.
package etcdstore

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/fogmesh/fogmesh/internal/store"
)

// Options configure Open.
type Options struct {
	// Endpoints are the etcd client URLs (http://host:port; https with TLS).
	Endpoints []string
	// Prefix is where the store lives in etcd (default "/fogmesh/"); one
	// etcd may hold several control planes under different prefixes.
	Prefix string
	// Name is this replica's name, the value it campaigns with.
	Name string
	// Retention is how many revisions the change log keeps (default 10000).
	Retention int
	// Timeout bounds every etcd request (default 3s): past it the store
	// reports store.ErrUnavailable instead of blocking a caller.
	Timeout time.Duration
	// MaxTxnOps is etcd's --max-txn-ops (default 128, etcd's default): a
	// transaction changing more objects than that fails with a clear error.
	MaxTxnOps int
	// LeaseTTL is the election session's TTL in seconds (default 10): a
	// leader cut off from etcd stops acting as leader within it.
	LeaseTTL int
	// TLS, if set, is the client TLS configuration (https endpoints,
	// client certificates); Username and Password, if set, authenticate.
	// Whoever may read this store may read the CA key: protect etcd.
	TLS                *tls.Config
	Username, Password string
	// Client, if set, is used instead of dialing Endpoints.
	Client *clientv3.Client
	Logger *slog.Logger
}

// Store is a store.Backend on etcd. It is safe for concurrent use.
type Store struct {
	cli     *clientv3.Client
	ownCli  bool
	p       string
	name    string
	keep    uint64
	timeout time.Duration
	ttl     int
	maxOps  int
	log     *slog.Logger
	id      string

	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once

	mu      sync.Mutex // guards watch and lastRev
	watch   chan struct{}
	lastRev uint64
	leader  atomic.Bool
	// downAt is when a read last found no member answering (unix ns; 0:
	// the last read worked).
	downAt atomic.Int64
	ldr    atomic.Value // string: the leader's name as last observed
	mirror mirror       // the last state read, for when etcd does not answer (mirror.go)
}

var _ store.Backend = (*Store)(nil)

// maxAttempts bounds the retries of a conflicting transaction.
const maxAttempts = 64

// Open connects to etcd and creates the store ID if this is the first
// replica. It fails if etcd does not answer within the timeout.
func Open(o Options) (*Store, error) {
	if o.Prefix == "" {
		o.Prefix = "/fogmesh/"
	}
	if !strings.HasSuffix(o.Prefix, "/") {
		o.Prefix += "/"
	}
	if o.Retention <= 0 {
		o.Retention = 10000
	}
	if o.Timeout <= 0 {
		o.Timeout = 3 * time.Second
	}
	if o.MaxTxnOps <= 0 {
		o.MaxTxnOps = 128
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 10
	}
	if o.Name == "" {
		o.Name = "control"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{cli: o.Client, p: o.Prefix, name: o.Name, keep: uint64(o.Retention), timeout: o.Timeout,
		ttl: o.LeaseTTL, log: o.Logger, maxOps: o.MaxTxnOps, watch: make(chan struct{})}
	s.ldr.Store("")
	if s.cli == nil {
		if len(o.Endpoints) == 0 {
			return nil, errors.New("etcdstore: no etcd endpoints")
		}
		cli, err := clientv3.New(clientv3.Config{
			Endpoints: o.Endpoints, DialTimeout: o.Timeout, TLS: o.TLS, Username: o.Username, Password: o.Password,
			DialKeepAliveTime: 2 * time.Second, DialKeepAliveTimeout: 2 * time.Second,
			Logger: zap.NewNop(),
			// Reconnect to a member that comes back within a second, not
			// gRPC's default of up to two minutes: after a quorum loss the
			// member that returns may be the only one answering.
			DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
				MinConnectTimeout: time.Second,
			})},
		})
		if err != nil {
			return nil, fmt.Errorf("etcdstore: connect %s: %w", strings.Join(o.Endpoints, ","), err)
		}
		s.cli, s.ownCli = cli, true
	}
	if err := s.initID(); err != nil {
		if s.ownCli {
			s.cli.Close()
		}
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(2)
	go s.watchLoop()
	go s.campaignLoop()
	return s, nil
}

func (s *Store) initID() error {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	k := s.p + "meta/id"
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, hex.EncodeToString(b[:]))).Else(clientv3.OpGet(k)).Commit()
	if err != nil {
		return fmt.Errorf("etcdstore: read the store ID: %w: %w", store.ErrUnavailable, err)
	}
	if resp.Succeeded {
		s.id = hex.EncodeToString(b[:])
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) != 1 || len(kvs[0].Value) == 0 {
		return errors.New("etcdstore: the store ID key is empty")
	}
	s.id = string(kvs[0].Value)
	return nil
}

// ID is the cluster-wide store ID: the same on every replica.
func (s *Store) ID() string { return s.id }

// Shared is true.
func (s *Store) Shared() bool { return true }

// Leader reports whether this replica holds the election now.
func (s *Store) Leader() bool { return s.leader.Load() }

// LeaderName is the leader's name as last observed ("" if unknown).
func (s *Store) LeaderName() string { return s.ldr.Load().(string) }

// Name is this replica's name.
func (s *Store) Name() string { return s.name }

// Close stops the watch and the campaign (resigning) and closes the client
// if Open dialed it.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.cancel()
		s.wg.Wait()
		if s.ownCli {
			err = s.cli.Close()
		}
	})
	return err
}

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

func unavailable(what string, err error) error {
	return fmt.Errorf("etcdstore: %s: %w: %w", what, store.ErrUnavailable, err)
}

func (s *Store) logKey(rev uint64) string { return fmt.Sprintf("%slog/%016x", s.p, rev) }

// read runs a read-only transaction of ops: linearizable first, and if
// etcd cannot answer that (quorum lost), serializable from whichever
// member still answers (stale is then true: that member may lag), so
// replicas go on serving the last state they can see. Once neither
// answered, reads fail at once for one timeout, so that callers during an
// outage do not each wait for it (the watch goroutine's poll keeps trying).
func (s *Store) read(ops ...clientv3.Op) (resp *clientv3.TxnResponse, stale bool, err error) {
	if t := s.downAt.Load(); t != 0 && time.Since(time.Unix(0, t)) < s.timeout {
		return nil, false, unavailable("read", errDown)
	}
	ctx, cancel := context.WithTimeout(s.ctx0(), s.timeout)
	resp, err = s.cli.Txn(ctx).Then(ops...).Commit()
	cancel()
	if err == nil {
		s.downAt.Store(0)
		return resp, false, nil
	}
	ser := make([]clientv3.Op, len(ops))
	for i, op := range ops {
		ser[i] = withSerializable(op)
	}
	ctx, cancel = context.WithTimeout(s.ctx0(), s.timeout)
	defer cancel()
	resp, err2 := s.cli.Txn(ctx).Then(ser...).Commit()
	if err2 != nil {
		s.downAt.Store(time.Now().UnixNano())
		return nil, false, unavailable("read", errors.Join(err, err2))
	}
	s.downAt.Store(0)
	return resp, true, nil
}

// errDown: no etcd member answered a read within the last timeout.
var errDown = errors.New("no etcd member answered recently")

// ctx0 is the store's context, or Background before Open finished.
func (s *Store) ctx0() context.Context {
	if s.ctx == nil {
		return context.Background()
	}
	return s.ctx
}

func withSerializable(op clientv3.Op) clientv3.Op {
	key, end := string(op.KeyBytes()), string(op.RangeBytes())
	opts := []clientv3.OpOption{clientv3.WithSerializable()}
	if end != "" {
		opts = append(opts, clientv3.WithRange(end))
	}
	if r := op.Rev(); r > 0 {
		opts = append(opts, clientv3.WithRev(r))
	}
	if op.IsKeysOnly() {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	return clientv3.OpGet(key, opts...)
}

// Rev returns the current store revision.
func (s *Store) revEtcd() (uint64, error) {
	resp, _, err := s.read(clientv3.OpGet(s.p + "meta/rev"))
	if err != nil {
		return 0, err
	}
	return revOf(resp.Responses[0].GetResponseRange()), nil
}

func revOf(r *pb.RangeResponse) uint64 {
	if kvs := r.GetKvs(); len(kvs) == 1 {
		return u64(kvs[0].Value)
	}
	return 0
}

// Health asks etcd for a linearizable read: it fails when the cluster has
// no quorum or cannot be reached, when writes would fail too.
func (s *Store) Health() error {
	ctx, cancel := context.WithTimeout(s.ctx0(), s.timeout)
	defer cancel()
	if _, err := s.cli.Get(ctx, s.p+"meta/rev"); err != nil {
		return unavailable("etcd", err)
	}
	return nil
}

// Watch returns a channel closed when the store revision moves (a commit
// by any replica).
func (s *Store) Watch() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.watch
}

// seen records rev as the latest revision and wakes watchers if it moved;
// it reports whether it did.
func (s *Store) seen(rev uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rev <= s.lastRev {
		return false // nothing new, or a lagging member answered
	}
	s.lastRev = rev
	close(s.watch)
	s.watch = make(chan struct{})
	return true
}

// pollEvery is how often the revision is also read, besides the watch.
const pollEvery = time.Second

// watchLoop follows meta/rev with an etcd watch, and also reads it every
// pollEvery: after a quorum loss an etcd watch can stay silent although
// etcd is back, so a poll that finds a revision the watch did not deliver
// restarts the watch. Pushes are immediate while the watch works and at
// most pollEvery late otherwise.
func (s *Store) watchLoop() {
	defer s.wg.Done()
	if r, err := s.revEtcd(); err == nil {
		s.seen(r)
	}
	s.refreshMirror()
	s.refreshSecureMirror()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for s.ctx.Err() == nil {
		ctx, cancel := context.WithCancel(s.ctx)
		wc := s.cli.Watch(ctx, s.p+"meta/rev")
	recv:
		for {
			// Not a range over wc: while etcd is unreachable the client
			// keeps wc open even after ctx is canceled.
			select {
			case <-ctx.Done():
				break recv
			case resp, ok := <-wc:
				if !ok || resp.Err() != nil {
					break recv
				}
				moved := false
				for _, ev := range resp.Events {
					moved = s.seen(u64(ev.Kv.Value)) || moved
				}
				if moved {
					s.refreshMirror()
				}
			case <-tick.C:
				s.refreshSecureMirror()
				if r, err := s.revEtcd(); err == nil && s.seen(r) {
					s.refreshMirror()
					s.log.Debug("etcdstore: the watch missed a commit; restarting it", "rev", r)
					break recv
				}
			}
		}
		cancel()
		select {
		case <-s.ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// campaignLoop campaigns for leadership for as long as the store is open;
// a lost session (etcd unreachable past the TTL) ends leadership at once
// and the loop campaigns again when etcd answers.
func (s *Store) campaignLoop() {
	defer s.wg.Done()
	backoff := 100 * time.Millisecond
	for s.ctx.Err() == nil {
		sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(s.ttl), concurrency.WithContext(s.ctx))
		if err != nil {
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		e := concurrency.NewElection(sess, s.p+"election")
		obsCtx, obsCancel := context.WithCancel(s.ctx)
		go func() {
			for r := range e.Observe(obsCtx) {
				if len(r.Kvs) > 0 {
					s.ldr.Store(string(r.Kvs[0].Value))
				}
			}
		}()
		cctx, ccancel := context.WithCancel(s.ctx)
		go func() { // a campaign waiting on a lost session must end
			select {
			case <-sess.Done():
			case <-cctx.Done():
			}
			ccancel()
		}()
		// Campaign in its own goroutine: while etcd is unreachable it can
		// stay blocked past the cancel of its context (until the client
		// closes), and Close must not wait for it.
		won := make(chan error, 1)
		go func() { won <- e.Campaign(cctx, s.name) }()
		err = nil
		select {
		case err = <-won:
		case <-s.ctx.Done():
			err = s.ctx.Err()
		}
		if err == nil {
			s.leader.Store(true)
			s.ldr.Store(s.name)
			s.log.Info("etcdstore: this replica is the leader", "name", s.name)
			select {
			case <-sess.Done():
				s.log.Warn("etcdstore: lost the etcd session; no longer the leader", "name", s.name)
			case <-s.ctx.Done():
			}
			s.leader.Store(false)
			rctx, rcancel := context.WithTimeout(context.Background(), s.timeout)
			e.Resign(rctx)
			rcancel()
		}
		ccancel()
		obsCancel()
		sess.Close() // revokes the lease if etcd answers
	}
}

// Get reads one object.
func (s *Store) getEtcd(key string) (store.KV, bool, error) {
	resp, _, err := s.read(clientv3.OpGet(s.p + "obj/" + key))
	if err != nil {
		return store.KV{}, false, err
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) != 1 || len(kvs[0].Value) < 8 {
		return store.KV{}, false, nil
	}
	return store.KV{Key: key, Rev: u64(kvs[0].Value[:8]), Value: kvs[0].Value[8:]}, true, nil
}

// List returns every object with prefix, in key order, and the revision
// the listing is consistent with (both are read at one etcd revision).
func (s *Store) listEtcd(prefix string) ([]store.KV, uint64, bool, error) {
	resp, stale, err := s.read(clientv3.OpGet(s.p+"meta/rev"), clientv3.OpGet(s.p+"obj/"+prefix, clientv3.WithPrefix()))
	if err != nil {
		return nil, 0, false, err
	}
	return s.objs(resp.Responses[1].GetResponseRange().Kvs), revOf(resp.Responses[0].GetResponseRange()), stale, nil
}

func (s *Store) objs(kvs []*mvccpb.KeyValue) []store.KV {
	out := make([]store.KV, 0, len(kvs))
	for _, kv := range kvs {
		if len(kv.Value) < 8 {
			continue
		}
		out = append(out, store.KV{Key: strings.TrimPrefix(string(kv.Key), s.p+"obj/"), Rev: u64(kv.Value[:8]), Value: kv.Value[8:]})
	}
	return out
}

// ChangesSince returns the latest state of every object changed after rev.
// It returns store.ErrCompacted if the log no longer reaches back to rev or
// rev is ahead of the store.
func (s *Store) changesSinceEtcd(rev uint64) ([]store.Change, uint64, error) {
	resp, stale, err := s.read(clientv3.OpGet(s.p+"meta/rev"), clientv3.OpGet(s.p+"meta/compacted"),
		clientv3.OpGet(s.logKey(rev+1), clientv3.WithRange(clientv3.GetPrefixRangeEnd(s.p+"log/"))))
	if err != nil {
		return nil, 0, err
	}
	current := revOf(resp.Responses[0].GetResponseRange())
	if rev > current && stale {
		// The member that answered lags behind what the subscriber has
		// seen: a snapshot from it would take the subscriber back.
		return nil, current, unavailable("changes", fmt.Errorf("the etcd member that answers is at revision %d, behind %d", current, rev))
	}
	if rev < revOf(resp.Responses[1].GetResponseRange()) || rev > current {
		return nil, current, store.ErrCompacted
	}
	at := resp.Header.Revision
	last := map[string]uint64{}
	var order []string
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		r, err := strconv.ParseUint(strings.TrimPrefix(string(kv.Key), s.p+"log/"), 16, 64)
		if err != nil {
			return nil, 0, fmt.Errorf("etcdstore: change log key %q: %w", kv.Key, err)
		}
		for _, key := range strings.Split(string(kv.Value), "\n") {
			if key == "" {
				continue
			}
			if _, seen := last[key]; !seen {
				order = append(order, key)
			}
			last[key] = r
		}
	}
	var changes []store.Change
	// The objects are read at the same etcd revision as the log, in
	// batches under etcd's default limit of operations per transaction.
	for i := 0; i < len(order); i += 100 {
		batch := order[i:min(i+100, len(order))]
		ops := make([]clientv3.Op, len(batch))
		for j, key := range batch {
			ops[j] = clientv3.OpGet(s.p+"obj/"+key, clientv3.WithRev(at))
		}
		r, _, err := s.read(ops...)
		if err != nil {
			return nil, 0, err
		}
		for j, key := range batch {
			kvs := r.Responses[j].GetResponseRange().Kvs
			if len(kvs) != 1 || len(kvs[0].Value) < 8 {
				changes = append(changes, store.Change{Key: key, Rev: last[key], Deleted: true})
				continue
			}
			changes = append(changes, store.Change{Key: key, Rev: u64(kvs[0].Value[:8]), Value: kvs[0].Value[8:]})
		}
	}
	return changes, current, nil
}

// etcdTx is a transaction's reads (at one etcd revision) and buffered
// writes; a read sees the transaction's own writes.
type etcdTx struct {
	s      *Store
	ctx    context.Context
	at     int64 // etcd revision of the reads
	space  string
	writes map[string]*[]byte // key -> value; nil pointer: deleted
	err    error              // the first read error: the commit is abandoned
}

func (t *etcdTx) fail(err error) {
	if t.err == nil {
		t.err = unavailable("read in transaction", err)
	}
}

func (t *etcdTx) getRaw(key string) ([]byte, bool) {
	if w, ok := t.writes[key]; ok {
		if w == nil {
			return nil, false
		}
		return *w, true
	}
	if t.err != nil {
		return nil, false
	}
	resp, err := t.s.cli.Get(t.ctx, t.s.p+t.space+key, clientv3.WithRev(t.at))
	if err != nil {
		t.fail(err)
		return nil, false
	}
	if len(resp.Kvs) != 1 {
		return nil, false
	}
	return resp.Kvs[0].Value, true
}

func (t *etcdTx) listRaw(prefix string) []store.KV {
	got := map[string][]byte{}
	if t.err == nil {
		resp, err := t.s.cli.Get(t.ctx, t.s.p+t.space+prefix, clientv3.WithPrefix(), clientv3.WithRev(t.at))
		if err != nil {
			t.fail(err)
		} else {
			for _, kv := range resp.Kvs {
				got[strings.TrimPrefix(string(kv.Key), t.s.p+t.space)] = kv.Value
			}
		}
	}
	for k, w := range t.writes {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		if w == nil {
			delete(got, k)
		} else {
			got[k] = *w
		}
	}
	out := make([]store.KV, 0, len(got))
	for k, v := range got {
		out = append(out, store.KV{Key: k, Value: v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// objTx adapts etcdTx to store.TxBackend.
type objTx struct{ *etcdTx }

func (t objTx) Get(key string) (store.KV, bool) {
	v, ok := t.getRaw(key)
	if !ok || len(v) < 8 {
		return store.KV{}, false
	}
	return store.KV{Key: key, Rev: u64(v[:8]), Value: append([]byte(nil), v[8:]...)}, true
}

func (t objTx) List(prefix string) []store.KV {
	var out []store.KV
	for _, kv := range t.listRaw(prefix) {
		if len(kv.Value) < 8 {
			continue
		}
		out = append(out, store.KV{Key: kv.Key, Rev: u64(kv.Value[:8]), Value: append([]byte(nil), kv.Value[8:]...)})
	}
	return out
}

func (t objTx) Put(key string, value []byte, rev uint64) error {
	v := append(be(rev), value...)
	t.writes[key] = &v
	return nil
}

func (t objTx) Delete(key string, rev uint64) (bool, error) {
	if _, ok := t.getRaw(key); !ok {
		return false, t.err
	}
	t.writes[key] = nil
	return true, nil
}

// secTx adapts etcdTx to store.SecureBackend.
type secTx struct{ *etcdTx }

func (t secTx) Get(key string) []byte {
	v, ok := t.getRaw(key)
	if !ok {
		return nil
	}
	return append([]byte(nil), v...)
}

func (t secTx) Put(key string, value []byte) error {
	v := append([]byte(nil), value...)
	t.writes[key] = &v
	return nil
}

func (t secTx) Delete(key string) error {
	t.writes[key] = nil
	return nil
}

func (t secTx) List(prefix string) []store.KV { return t.listRaw(prefix) }

// begin reads the guard key and returns a transaction reading at that
// etcd revision.
func (s *Store) begin(ctx context.Context, guard, space string) (*etcdTx, []byte, int64, error) {
	resp, err := s.cli.Get(ctx, s.p+guard)
	if err != nil {
		return nil, nil, 0, unavailable("begin transaction", err)
	}
	var val []byte
	var mod int64
	if len(resp.Kvs) == 1 {
		val, mod = resp.Kvs[0].Value, resp.Kvs[0].ModRevision
	}
	return &etcdTx{s: s, ctx: ctx, at: resp.Header.Revision, space: space, writes: map[string]*[]byte{}}, val, mod, nil
}

// commit writes ops if guard was not modified since mod; false: conflict.
func (s *Store) commit(ctx context.Context, guard string, mod int64, ops []clientv3.Op) (bool, error) {
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.p+guard), "=", mod)).Then(ops...).Commit()
	if errors.Is(err, rpctypes.ErrNoSpace) {
		// etcd's quota is full (its NOSPACE alarm): like a full disk of
		// the embedded store, not an outage; nothing was written.
		return false, fmt.Errorf("etcdstore: commit: etcd is out of space (its NOSPACE alarm is raised: free keys, compact, defragment, then disarm the alarm): %w: %w: %w", store.ErrWrite, syscall.ENOSPC, err)
	}
	if errors.Is(err, rpctypes.ErrRequestTooLarge) || err != nil && strings.Contains(err.Error(), "larger than max") {
		// Refused before it was applied (by etcd, or by the client's
		// own send limit): retrying cannot make it fit.
		return false, fmt.Errorf("etcdstore: commit: the transaction is larger than etcd takes (etcd's --max-request-bytes, default 1.5 MiB): apply in parts, or raise it: %w", err)
	}
	if err != nil {
		// The commit may or may not have happened: the caller gets an
		// error and the state is whatever etcd holds, never half of it.
		return false, unavailable("commit", err)
	}
	return resp.Succeeded, nil
}

// Update runs fn in an optimistic transaction (see the package comment),
// retrying on conflict. If fn writes nothing, the revision does not move.
func (s *Store) Update(fn func(*store.Tx) error) (uint64, error) {
	for range maxAttempts {
		ctx, cancel := context.WithTimeout(s.ctx0(), s.timeout)
		rev, done, err := s.updateOnce(ctx, fn)
		cancel()
		if done || err != nil {
			return rev, err
		}
	}
	return 0, fmt.Errorf("etcdstore: update: %w: still conflicting after %d attempts", store.ErrUnavailable, maxAttempts)
}

func (s *Store) updateOnce(ctx context.Context, fn func(*store.Tx) error) (uint64, bool, error) {
	et, val, mod, err := s.begin(ctx, "meta/rev", "obj/")
	if err != nil {
		return 0, false, err
	}
	cur := u64(val)
	next := cur + 1
	t := store.NewTx(objTx{et}, next)
	if err := fn(t); err != nil {
		return 0, false, err
	}
	if et.err != nil {
		return 0, false, et.err
	}
	if t.Changed() == 0 {
		return cur, true, nil
	}
	keys := make([]string, 0, len(et.writes))
	for k := range et.writes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if n := len(keys) + 4; n > s.maxOps {
		return 0, false, fmt.Errorf("etcdstore: a transaction changing %d objects needs %d etcd operations, more than the %d etcd allows (raise etcd's --max-txn-ops and etcdMaxTxnOps, or apply in parts)", len(keys), n, s.maxOps)
	}
	ops := make([]clientv3.Op, 0, len(keys)+4)
	for _, k := range keys {
		if strings.Contains(k, "\n") {
			return 0, false, fmt.Errorf("etcdstore: key %q holds a newline", k)
		}
		if w := et.writes[k]; w != nil {
			ops = append(ops, clientv3.OpPut(s.p+"obj/"+k, string(*w)))
		} else {
			ops = append(ops, clientv3.OpDelete(s.p+"obj/"+k))
		}
	}
	ops = append(ops, clientv3.OpPut(s.logKey(next), strings.Join(keys, "\n")),
		clientv3.OpPut(s.p+"meta/rev", string(be(next))))
	if next > s.keep {
		// Drop the log below next-keep; everything up to it is compacted.
		drop := next - s.keep
		ops = append(ops, clientv3.OpDelete(s.p+"log/", clientv3.WithRange(s.logKey(drop+1))),
			clientv3.OpPut(s.p+"meta/compacted", string(be(drop))))
	}
	ok, err := s.commit(ctx, "meta/rev", mod, ops)
	if err != nil || !ok {
		return 0, false, err
	}
	return next, true, nil
}

// UpdateSecure runs fn in an optimistic transaction on the security
// records, retrying on conflict.
func (s *Store) UpdateSecure(fn func(*store.SecureTx) error) error {
	for range maxAttempts {
		ctx, cancel := context.WithTimeout(s.ctx0(), s.timeout)
		done, err := s.updateSecureOnce(ctx, fn)
		cancel()
		if done || err != nil {
			return err
		}
	}
	return fmt.Errorf("etcdstore: secure update: %w: still conflicting after %d attempts", store.ErrUnavailable, maxAttempts)
}

func (s *Store) updateSecureOnce(ctx context.Context, fn func(*store.SecureTx) error) (bool, error) {
	et, val, mod, err := s.begin(ctx, "meta/secseq", "sec/")
	if err != nil {
		return false, err
	}
	if err := fn(store.NewSecureTx(secTx{et})); err != nil {
		return false, err
	}
	if et.err != nil {
		return false, et.err
	}
	if len(et.writes) == 0 {
		return true, nil
	}
	if n := len(et.writes) + 1; n > s.maxOps {
		return false, fmt.Errorf("etcdstore: a security transaction of %d writes is more than the %d etcd operations allowed (etcd's --max-txn-ops)", len(et.writes), s.maxOps)
	}
	ops := make([]clientv3.Op, 0, len(et.writes)+1)
	for k, w := range et.writes {
		if w != nil {
			ops = append(ops, clientv3.OpPut(s.p+"sec/"+k, string(*w)))
		} else {
			ops = append(ops, clientv3.OpDelete(s.p+"sec/"+k))
		}
	}
	ops = append(ops, clientv3.OpPut(s.p+"meta/secseq", string(be(u64(val)+1))))
	ok, err := s.commit(ctx, "meta/secseq", mod, ops)
	if ok {
		s.mirrorSecure(et.writes)
	}
	return ok, err
}

// GetSecure returns the security record key, or nil.
func (s *Store) getSecureEtcd(key string) ([]byte, error) {
	resp, _, err := s.read(clientv3.OpGet(s.p + "sec/" + key))
	if err != nil {
		return nil, err
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
		return kvs[0].Value, nil
	}
	return nil, nil
}

// ListSecure returns every security record with prefix, in key order.
func (s *Store) listSecureEtcd(prefix string) ([]store.KV, error) {
	resp, _, err := s.read(clientv3.OpGet(s.p+"sec/"+prefix, clientv3.WithPrefix()))
	if err != nil {
		return nil, err
	}
	var out []store.KV
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		out = append(out, store.KV{Key: strings.TrimPrefix(string(kv.Key), s.p+"sec/"), Value: kv.Value})
	}
	return out, nil
}
