package etcdstore_test

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/store"
	"github.com/fogmesh/fogmesh/internal/store/etcdstore"
	"github.com/fogmesh/fogmesh/internal/store/etcdstore/etcdtest"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

func open(t *testing.T, c *etcdtest.Cluster, name string, tweak func(*etcdstore.Options)) *etcdstore.Store {
	t.Helper()
	o := etcdstore.Options{Endpoints: c.Endpoints(), Name: name, LeaseTTL: 2, Timeout: 2 * time.Second}
	if tweak != nil {
		tweak(&o)
	}
	s, err := etcdstore.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func put(t *testing.T, s store.Backend, kv ...string) uint64 {
	t.Helper()
	rev, err := s.Update(func(tx *store.Tx) error {
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				if err := tx.Delete(kv[i]); err != nil {
					return err
				}
				continue
			}
			if err := tx.Put(kv[i], []byte(kv[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// Two replicas on one etcd share the ID, the revisions, the objects, the
// change log, the watch and the security records.
func TestSharedByReplicas(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := open(t, c, "a", nil), open(t, c, "b", nil)
	if a.ID() == "" || a.ID() != b.ID() {
		t.Fatalf("store IDs %q and %q, want one shared ID", a.ID(), b.ID())
	}
	w := b.Watch()
	r1 := put(t, a, "Service/demo/x", "1", "Service/demo/y", "1")
	select {
	case <-w:
	case <-time.After(5 * time.Second):
		t.Fatal("b's watch did not fire after a's commit")
	}
	if r1 != 1 {
		t.Fatalf("first revision %d, want 1", r1)
	}
	r2 := put(t, b, "Service/demo/x", "2", "Service/demo/y", "")
	if r2 != 2 {
		t.Fatalf("revision after b's commit %d, want 2", r2)
	}
	kvs, rev, err := a.List("Service/")
	if err != nil || rev != 2 || len(kvs) != 1 || kvs[0].Key != "Service/demo/x" || string(kvs[0].Value) != "2" || kvs[0].Rev != 2 {
		t.Fatalf("a.List = %+v rev %d err %v", kvs, rev, err)
	}
	ch, cur, err := a.ChangesSince(1)
	if err != nil || cur != 2 || len(ch) != 2 {
		t.Fatalf("ChangesSince(1) = %+v, %d, %v", ch, cur, err)
	}
	got := map[string]store.Change{}
	for _, c := range ch {
		got[c.Key] = c
	}
	if x := got["Service/demo/x"]; x.Deleted || string(x.Value) != "2" || x.Rev != 2 {
		t.Errorf("x change %+v", x)
	}
	if y := got["Service/demo/y"]; !y.Deleted || y.Rev != 2 {
		t.Errorf("y change %+v, want deleted at 2", y)
	}
	if ch, _, err := b.ChangesSince(2); err != nil || len(ch) != 0 {
		t.Errorf("ChangesSince(current) = %+v, %v", ch, err)
	}
	if _, _, err := b.ChangesSince(3); !errors.Is(err, store.ErrCompacted) {
		t.Errorf("ChangesSince(future) err %v, want ErrCompacted", err)
	}
	// A write that changes nothing does not move the revision.
	if r, err := a.Update(func(*store.Tx) error { return nil }); err != nil || r != 2 {
		t.Errorf("empty update: %d, %v", r, err)
	}
	if err := a.UpdateSecure(func(tx *store.SecureTx) error { return tx.Put("token/1", []byte("h")) }); err != nil {
		t.Fatal(err)
	}
	if v, err := b.GetSecure("token/1"); err != nil || string(v) != "h" {
		t.Errorf("b.GetSecure = %q, %v", v, err)
	}
	if kvs, err := b.ListSecure("token/"); err != nil || len(kvs) != 1 || kvs[0].Key != "token/1" {
		t.Errorf("b.ListSecure = %+v, %v", kvs, err)
	}
	if r, _ := b.Rev(); r != 2 {
		t.Errorf("a security write moved the object revision to %d", r)
	}
}

// The change log keeps Retention revisions; older asks get ErrCompacted.
func TestChangeLogRetention(t *testing.T) {
	c := etcdtest.Start(t, 1)
	s := open(t, c, "a", func(o *etcdstore.Options) { o.Retention = 3 })
	for i := range 6 {
		put(t, s, fmt.Sprintf("k/%d", i), "v")
	}
	if _, _, err := s.ChangesSince(2); !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("ChangesSince(2) after 6 revisions with retention 3: err %v, want ErrCompacted", err)
	}
	ch, cur, err := s.ChangesSince(3)
	if err != nil || cur != 6 || len(ch) != 3 {
		t.Fatalf("ChangesSince(3) = %+v, %d, %v; want k/3..k/5", ch, cur, err)
	}
}

// A transaction larger than etcd allows fails with an error saying so (not
// "unavailable"), and stores nothing.
func TestTransactionTooLarge(t *testing.T) {
	c := etcdtest.Start(t, 1)
	s := open(t, c, "a", nil)
	put(t, s, "k/first", "v")
	_, err := s.Update(func(tx *store.Tx) error {
		for i := range 200 {
			if err := tx.Put(fmt.Sprintf("k/%d", i), []byte("v")); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil || errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "--max-txn-ops") {
		t.Fatalf("200 objects in one transaction: %v; want an error naming --max-txn-ops", err)
	}
	if kvs, rev, _ := s.List("k/"); len(kvs) != 1 || rev != 1 {
		t.Fatalf("after the refused transaction: %d keys at revision %d", len(kvs), rev)
	}
	// 124 objects (+4 operations of the store's own) is the most etcd's
	// default allows, and works.
	_, err = s.Update(func(tx *store.Tx) error {
		for i := range 124 {
			if err := tx.Put(fmt.Sprintf("k/%d", i), []byte("v")); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if ch, _, err := s.ChangesSince(1); err != nil || len(ch) != 124 {
		t.Fatalf("ChangesSince after 124 objects: %d changes, %v", len(ch), err)
	}
}

// Replicas writing at once: every read-modify-write lands exactly once
// (optimistic transactions retry on conflict), and allocations made from
// what a transaction read never collide.
func TestConcurrentTransactions(t *testing.T) {
	c := etcdtest.Start(t, 1)
	stores := []*etcdstore.Store{open(t, c, "a", nil), open(t, c, "b", nil), open(t, c, "c", nil)}
	const each = 10
	var wg sync.WaitGroup
	errs := make(chan error, len(stores)*each*2)
	for i, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				_, err := s.Update(func(tx *store.Tx) error {
					n := 0
					if kv, ok := tx.Get("counter"); ok {
						n, _ = strconv.Atoi(string(kv.Value))
					}
					if err := tx.Put("counter", []byte(strconv.Itoa(n+1))); err != nil {
						return err
					}
					// "allocate" the lowest free index, like a VIP
					used := map[string]bool{}
					for _, kv := range tx.List("alloc/") {
						used[string(kv.Value)] = true
					}
					for k := 1; ; k++ {
						if !used[strconv.Itoa(k)] {
							return tx.Put(fmt.Sprintf("alloc/%d-%d", i, j), []byte(strconv.Itoa(k)))
						}
					}
				})
				if err != nil {
					errs <- err
				}
				if err := s.UpdateSecure(func(tx *store.SecureTx) error {
					n, _ := strconv.Atoi(string(tx.Get("n")))
					return tx.Put("n", []byte(strconv.Itoa(n+1)))
				}); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	kv, ok, err := stores[0].Get("counter")
	if err != nil || !ok || string(kv.Value) != strconv.Itoa(len(stores)*each) {
		t.Fatalf("counter = %q (%v, %v), want %d", kv.Value, ok, err, len(stores)*each)
	}
	if v, _ := stores[1].GetSecure("n"); string(v) != strconv.Itoa(len(stores)*each) {
		t.Fatalf("secure counter = %q, want %d", v, len(stores)*each)
	}
	kvs, rev, _ := stores[2].List("alloc/")
	seen := map[string]string{}
	for _, kv := range kvs {
		if other, dup := seen[string(kv.Value)]; dup {
			t.Fatalf("index %s allocated twice: %s and %s", kv.Value, other, kv.Key)
		}
		seen[string(kv.Value)] = kv.Key
	}
	if len(kvs) != len(stores)*each || rev != uint64(len(stores)*each) {
		t.Fatalf("%d allocations at revision %d, want %d", len(kvs), rev, len(stores)*each)
	}
}

// Exactly one replica leads; when it goes, another takes over.
func TestLeaderElection(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, b := open(t, c, "a", nil), open(t, c, "b", nil)
	testenv.WaitFor(t, 10*time.Second, "a leader", func() bool { return a.Leader() != b.Leader() })
	lead, other := a, b
	if b.Leader() {
		lead, other = b, a
	}
	testenv.WaitFor(t, 5*time.Second, "the follower to see the leader", func() bool { return other.LeaderName() == lead.Name() })
	lead.Close()
	testenv.WaitFor(t, 10*time.Second, "the other replica to lead", other.Leader)
}

// A 3-member etcd under writes from two replicas: killing the raft leader
// costs at most a pause (errors are store.ErrUnavailable, never anything
// else), and losing quorum fails writes clearly while the last state is
// still read; after recovery every acknowledged write is there, once.
func TestEtcdLeaderKillAndQuorumLoss(t *testing.T) {
	c := etcdtest.Start(t, 3)
	fast := func(o *etcdstore.Options) { o.Timeout = time.Second }
	stores := []*etcdstore.Store{open(t, c, "a", fast), open(t, c, "b", fast)}
	var mu sync.Mutex
	acked := map[string]uint64{} // key -> revision it was acknowledged at
	var unexpected []error
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 100000; n++ { // bounded; stopped earlier
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("w/%d/%d", i, n)
				rev, err := s.Update(func(tx *store.Tx) error { return tx.Put(key, []byte(key)) })
				mu.Lock()
				if err == nil {
					acked[key] = rev
				} else if !errors.Is(err, store.ErrUnavailable) {
					unexpected = append(unexpected, err)
				}
				mu.Unlock()
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	testenv.WaitFor(t, 10*time.Second, "writes before the kill", func() bool { return count() >= 20 })
	var leader int
	testenv.WaitFor(t, 5*time.Second, "an etcd leader", func() bool { leader = c.Leader(); return leader >= 0 })
	c.Kill(leader)
	before := count()
	testenv.WaitFor(t, 15*time.Second, "writes to go on after the etcd leader was killed", func() bool { return count() >= before+20 })
	close(stop)
	wg.Wait()
	if len(unexpected) > 0 {
		t.Fatalf("writes failed with errors other than ErrUnavailable: %v", unexpected[0])
	}
	check := func(s *etcdstore.Store) {
		t.Helper()
		kvs, rev, err := s.List("w/")
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]uint64{}
		for _, kv := range kvs {
			got[kv.Key] = kv.Rev
		}
		for k, r := range acked {
			if got[k] != r {
				t.Fatalf("acknowledged write %s at revision %d: store has it at %d (revision %d)", k, r, got[k], rev)
			}
		}
		if uint64(len(kvs)) > rev {
			t.Fatalf("%d keys at revision %d: more keys than revisions", len(kvs), rev)
		}
	}
	check(stores[1])

	// Quorum loss: only one member left.
	c.Restart(leader)
	c.WaitMember(leader, 20*time.Second)
	killed := []int{(leader + 1) % 3, (leader + 2) % 3}
	for _, i := range killed {
		c.Kill(i)
	}
	start := time.Now()
	_, err := stores[0].Update(func(tx *store.Tx) error { return tx.Put("lost", []byte("x")) })
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("write without quorum: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("a write without quorum took %v to fail", d)
	}
	if err := stores[0].Health(); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Health without quorum: %v", err)
	}
	check(stores[0]) // the last state, read from the member left
	for _, i := range killed {
		c.Restart(i)
	}
	testenv.WaitFor(t, 20*time.Second, "health after quorum returns", func() bool { return stores[0].Health() == nil })
	if _, err := stores[1].Update(func(tx *store.Tx) error { return tx.Put("after", []byte("x")) }); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	check(stores[0])
}

// With no etcd member answering at all, reads serve the last state this
// replica saw (objects and security records), writes and Health fail with
// ErrUnavailable, and all is normal again when etcd returns.
func TestLastStateWithoutEtcd(t *testing.T) {
	c := etcdtest.Start(t, 1)
	s := open(t, c, "a", func(o *etcdstore.Options) { o.Timeout = 500 * time.Millisecond })
	put(t, s, "k/a", "1", "k/b", "2")
	rev := put(t, s, "k/b", "")
	if err := s.UpdateSecure(func(tx *store.SecureTx) error { return tx.Put("token/1", []byte("h")) }); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "the mirror at the last revision", func() bool { r, ok := s.Mirrored(); return ok && r == rev })
	c.Kill(0)
	if _, err := s.Update(func(tx *store.Tx) error { return tx.Put("k/c", []byte("3")) }); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("write without etcd: %v", err)
	}
	if err := s.Health(); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Health without etcd: %v", err)
	}
	kvs, r, err := s.List("k/")
	if err != nil || r != rev || len(kvs) != 1 || kvs[0].Key != "k/a" || string(kvs[0].Value) != "1" {
		t.Fatalf("List without etcd: %+v %d %v", kvs, r, err)
	}
	if kv, ok, err := s.Get("k/a"); err != nil || !ok || string(kv.Value) != "1" {
		t.Fatalf("Get without etcd: %+v %v %v", kv, ok, err)
	}
	if _, ok, err := s.Get("k/b"); err != nil || ok {
		t.Fatalf("Get of a deleted key without etcd: %v %v", ok, err)
	}
	if v, err := s.GetSecure("token/1"); err != nil || string(v) != "h" {
		t.Fatalf("GetSecure without etcd: %q %v", v, err)
	}
	if ch, cur, err := s.ChangesSince(rev); err != nil || len(ch) != 0 || cur != rev {
		t.Fatalf("ChangesSince(mirror's revision): %v %d %v", ch, cur, err)
	}
	if _, _, err := s.ChangesSince(rev - 1); !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("ChangesSince(older): %v, want ErrCompacted (a snapshot of the last state)", err)
	}
	if _, _, err := s.ChangesSince(rev + 1); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("ChangesSince(newer than the last state): %v, want ErrUnavailable", err)
	}
	c.Restart(0)
	testenv.WaitFor(t, 20*time.Second, "etcd back", func() bool { return s.Health() == nil })
	if r := put(t, s, "k/c", "3"); r != rev+1 {
		t.Fatalf("revision after recovery %d, want %d", r, rev+1)
	}
}

// A transaction larger than etcd's --max-request-bytes is refused with an
// error naming that flag, not reported as an outage to retry: retrying
// cannot make it fit. Nothing of it is written.
func TestRequestTooLarge(t *testing.T) {
	c := etcdtest.StartWith(t, 1, etcdtest.Options{Args: []string{"--max-request-bytes", "65536"}})
	s := open(t, c, "a", nil)
	rev := put(t, s, "k/first", "v")
	_, err := s.Update(func(tx *store.Tx) error { return tx.Put("k/big", []byte(strings.Repeat("x", 100<<10))) })
	if err == nil || errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "--max-request-bytes") {
		t.Fatalf("a 100 KiB object with a 64 KiB limit: %v; want an error naming --max-request-bytes, not unavailable", err)
	}
	if kvs, r, _ := s.List("k/"); len(kvs) != 1 || r != rev {
		t.Fatalf("after the refused transaction: %d keys at revision %d, want 1 at %d", len(kvs), r, rev)
	}
	put(t, s, "k/second", "v") // and the store goes on
}
