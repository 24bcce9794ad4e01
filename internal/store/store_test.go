package store

import (
	"errors"
	"path/filepath"
	"testing"
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
