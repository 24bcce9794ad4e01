package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

func open(t *testing.T, path string, o Options) *Store {
	t.Helper()
	s, err := Open(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func put(t *testing.T, s *Store, kv ...string) uint64 {
	t.Helper()
	rev, err := s.Update(func(tx *Tx) error {
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

func TestChangesSince(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "db"), Options{})
	r1 := put(t, s, "a", "1", "b", "1")
	r2 := put(t, s, "a", "2")
	r3 := put(t, s, "b", "") // delete
	if r1 != 1 || r2 != 2 || r3 != 3 {
		t.Fatalf("revs %d %d %d", r1, r2, r3)
	}
	if r := put(t, s, "missing", ""); r != 3 {
		t.Fatalf("no-op update moved revision to %d", r)
	}
	ch, cur, err := s.ChangesSince(1)
	if err != nil || cur != 3 {
		t.Fatal(err, cur)
	}
	if len(ch) != 2 || ch[0].Key != "a" || string(ch[0].Value) != "2" || ch[0].Rev != 2 ||
		ch[1].Key != "b" || !ch[1].Deleted || ch[1].Rev != 3 {
		t.Fatalf("changes %+v", ch)
	}
	if ch, _, _ := s.ChangesSince(3); len(ch) != 0 {
		t.Fatalf("changes since current: %+v", ch)
	}
	if _, _, err := s.ChangesSince(9); !errors.Is(err, ErrCompacted) {
		t.Fatalf("future revision: %v", err)
	}
}

func TestCompaction(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "db"), Options{LogRetention: 3})
	for i := 0; i < 6; i++ {
		put(t, s, "k", string(rune('a'+i)))
	}
	if _, _, err := s.ChangesSince(1); !errors.Is(err, ErrCompacted) {
		t.Fatalf("want ErrCompacted, got %v", err)
	}
	ch, cur, err := s.ChangesSince(4)
	if err != nil || cur != 6 || len(ch) != 1 || string(ch[0].Value) != "f" {
		t.Fatal(ch, cur, err)
	}
}

func TestReopenKeepsDataAndID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	id := s.ID()
	put(t, s, "Service/demo/hello", "x")
	s.Close()
	s2 := open(t, path, Options{})
	if s2.ID() != id {
		t.Fatal("store id changed across reopen")
	}
	kv, ok, err := s2.Get("Service/demo/hello")
	if err != nil || !ok || string(kv.Value) != "x" || kv.Rev != 1 {
		t.Fatal(kv, ok, err)
	}
	kvs, rev, _ := s2.List("Service/")
	if len(kvs) != 1 || rev != 1 {
		t.Fatal(kvs, rev)
	}
}

func TestFailedUpdateStoresNothing(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "db"), Options{})
	boom := errors.New("boom")
	_, err := s.Update(func(tx *Tx) error {
		tx.Put("a", []byte("1"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if _, ok, _ := s.Get("a"); ok {
		t.Fatal("failed update stored a key")
	}
	if r, _ := s.Rev(); r != 0 {
		t.Fatal("failed update moved revision", r)
	}
}

func TestWatchFiresOnCommit(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "db"), Options{})
	w := s.Watch()
	put(t, s, "a", "1")
	select {
	case <-w:
	default:
		t.Fatal("watch not closed after commit")
	}
}

// Updates that arrive while a commit runs are committed together in one
// transaction, each at its own revision; one that fails in such a group
// fails alone.
func TestGroupCommit(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	release := make(chan struct{})
	first := make(chan uint64)
	go func() {
		rev, err := s.Update(func(tx *Tx) error {
			<-release // hold the commit while the others queue
			return tx.Put("k/first", []byte("1"))
		})
		if err != nil {
			t.Error(err)
		}
		first <- rev
	}()
	// Wait until the first caller commits (it leaves the queue).
	testenv.WaitFor(t, 10*time.Second, "first update committing", func() bool { return committing(s) })
	const n = 20
	type res struct {
		i   int
		rev uint64
		err error
	}
	out := make(chan res, n)
	for i := range n {
		go func() {
			rev, err := s.Update(func(tx *Tx) error {
				if i == 7 {
					tx.Put("k/bad", []byte("x")) // written, then rolled back
					return errors.New("refused")
				}
				return tx.Put(fmt.Sprintf("k/%02d", i), []byte("v"))
			})
			out <- res{i, rev, err}
		}()
	}
	testenv.WaitFor(t, 10*time.Second, "updates queued", func() bool { return queued(s) == n })
	before := s.commits.Load()
	close(release)
	if rev := <-first; rev != 1 {
		t.Fatalf("first update at %d, want 1", rev)
	}
	revs := map[uint64]bool{}
	for range n {
		r := <-out
		if r.i == 7 {
			if r.err == nil {
				t.Fatal("the failing update succeeded")
			}
			continue
		}
		if r.err != nil || r.rev < 2 || revs[r.rev] {
			t.Fatalf("update %d: rev %d err %v (revisions so far %v)", r.i, r.rev, r.err, revs)
		}
		revs[r.rev] = true
	}
	// One group with a failure: the group's transaction, then each alone.
	if c := s.commits.Load() - before; c != 1+n {
		t.Fatalf("%d write transactions after the first, want %d (the group, then each alone)", c, 1+n)
	}
	if _, ok, _ := s.Get("k/bad"); ok {
		t.Fatal("the failed update's write is stored")
	}
	if rev, _ := s.Rev(); rev != n {
		t.Fatalf("store at %d, want %d", rev, n)
	}

	// Without failure a group is one transaction.
	before = s.commits.Load()
	hold := make(chan struct{})
	go s.Update(func(tx *Tx) error { <-hold; return tx.Put("k/hold", []byte("1")) })
	testenv.WaitFor(t, 10*time.Second, "update committing", func() bool { return committing(s) })
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Update(func(tx *Tx) error { return tx.Put(fmt.Sprintf("g/%02d", i), []byte("v")) })
		}()
	}
	testenv.WaitFor(t, 10*time.Second, "updates queued", func() bool { return queued(s) == n })
	close(hold)
	wg.Wait()
	if c := s.commits.Load() - before; c != 2 {
		t.Fatalf("%d write transactions for 1+%d updates, want 2", c, n)
	}
}

func committing(s *Store) bool {
	s.gmu.Lock()
	defer s.gmu.Unlock()
	return s.committing && len(s.queue) == 0
}

func queued(s *Store) int {
	s.gmu.Lock()
	defer s.gmu.Unlock()
	return len(s.queue)
}

// TestSecureUpdatesJoinTheGroupCommit: security records written while
// objects commit (the control plane's audit head after every admin
// change) share the objects' transaction, instead of a write transaction
// (two fdatasyncs under bbolt's one writer) each.
func TestSecureUpdatesJoinTheGroupCommit(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "db"), Options{})
	hold := make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	defer release() // a failed wait must not leave the writer held
	held := make(chan error, 1)
	go func() {
		_, err := s.Update(func(tx *Tx) error { <-hold; return tx.Put("k/hold", []byte("1")) })
		held <- err
	}()
	testenv.WaitFor(t, 10*time.Second, "update committing", func() bool { return committing(s) })
	before := s.commits.Load()
	const n = 5
	errs := make(chan error, 2*n)
	for i := range n {
		go func() {
			_, err := s.Update(func(tx *Tx) error { return tx.Put(fmt.Sprintf("g/%02d", i), []byte("v")) })
			errs <- err
		}()
		go func() {
			errs <- s.UpdateSecure(func(tx *SecureTx) error { return tx.Put(fmt.Sprintf("head/%02d", i), []byte("h")) })
		}()
	}
	testenv.WaitFor(t, 10*time.Second, "updates and security records queued", func() bool { return queued(s) == 2*n })
	release()
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	for range 2 * n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if c := s.commits.Load() - before; c != 1 {
		t.Fatalf("%d write transactions for %d updates and %d security records queued together, want 1", c, n, n)
	}
	if rev, _ := s.Rev(); rev != 1+n {
		t.Fatalf("store at %d, want %d (security records take no revision)", rev, 1+n)
	}
	for i := range n {
		if v, err := s.GetSecure(fmt.Sprintf("head/%02d", i)); err != nil || string(v) != "h" {
			t.Fatalf("head/%02d = %q, %v", i, v, err)
		}
	}

	// A failing security update stores nothing and fails alone.
	boom := errors.New("refused")
	if err := s.UpdateSecure(func(tx *SecureTx) error { tx.Put("head/bad", []byte("x")); return boom }); !errors.Is(err, boom) {
		t.Fatalf("failing UpdateSecure: %v", err)
	}
	if v, _ := s.GetSecure("head/bad"); v != nil {
		t.Fatal("the failed security update's write is stored")
	}
}

// TestLazySecureUpdateRidesAlong: a lazy security record waits for the
// next commit of objects and shares it; alone, it commits when its wait
// is over.
func TestLazySecureUpdateRidesAlong(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "db"), Options{})
	put(t, s, "k/0", "v")

	// Queued with a long wait, it goes with the next update's commit.
	before := s.commits.Load()
	lazyDone := make(chan error, 1)
	go func() {
		lazyDone <- s.UpdateSecureLazy(func(tx *SecureTx) error { return tx.Put("head", []byte("1")) }, time.Hour)
	}()
	testenv.WaitFor(t, 10*time.Second, "the lazy record queued", func() bool { return queued(s) == 1 })
	if committing(s) {
		t.Fatal("a lazy record started a commit")
	}
	put(t, s, "k/1", "v")
	select {
	case err := <-lazyDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the lazy record did not go with the next commit")
	}
	if c := s.commits.Load() - before; c != 1 {
		t.Fatalf("%d write transactions for an update and a lazy record, want 1", c)
	}
	if v, _ := s.GetSecure("head"); string(v) != "1" {
		t.Fatalf("head = %q", v)
	}

	// Behind a commit under way with no other update, it is not handed
	// the queue at once but commits alone after its wait.
	hold := make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	defer release()
	held := make(chan error, 1)
	go func() {
		_, err := s.Update(func(tx *Tx) error { <-hold; return tx.Put("k/2", []byte("v")) })
		held <- err
	}()
	testenv.WaitFor(t, 10*time.Second, "update committing", func() bool { return committing(s) })
	before = s.commits.Load()
	go func() {
		lazyDone <- s.UpdateSecureLazy(func(tx *SecureTx) error { return tx.Put("head", []byte("2")) }, 20*time.Millisecond)
	}()
	testenv.WaitFor(t, 10*time.Second, "the lazy record queued", func() bool { return queued(s) == 1 })
	release()
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-lazyDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a lazy record alone never committed")
	}
	if c := s.commits.Load() - before; c != 1 { // the held one was counted when it began
		t.Fatalf("%d write transactions after the held update, want 1 (the lazy record alone)", c)
	}
	if v, _ := s.GetSecure("head"); string(v) != "2" {
		t.Fatalf("head = %q", v)
	}
}
