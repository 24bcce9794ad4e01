package gossip

import (
	"bytes"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestDeathIsSeenWithinASecond: three members on loopback; one shuts down
// without leaving (as a crash would); the others learn of it quickly.
func TestDeathIsSeenWithinASecond(t *testing.T) {
	var mu sync.Mutex
	dead := map[string]time.Time{}
	mk := func(name string) *Gossip {
		g, err := New(Config{Name: name, BindAddr: "127.0.0.1:0", OnChange: func(n string, alive bool) {
			if !alive {
				mu.Lock()
				if _, ok := dead[name+"<-"+n]; !ok {
					dead[name+"<-"+n] = time.Now()
				}
				mu.Unlock()
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	a, b, c := mk("a"), mk("b"), mk("c")
	defer a.Close()
	defer b.Close()
	if _, err := b.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(a.Members()) != 3 || len(b.Members()) != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("members: a %v, b %v", a.Members(), b.Members())
		}
		time.Sleep(20 * time.Millisecond)
	}
	killed := time.Now()
	c.ml.Shutdown() // no Leave: a crash
	for {
		mu.Lock()
		ta, oka := dead["a<-c"]
		tb, okb := dead["b<-c"]
		mu.Unlock()
		if oka && okb {
			t.Logf("death of c seen by a after %v, by b after %v", ta.Sub(killed), tb.Sub(killed))
			// README: a dead peer is known in under a second.
			if ta.Sub(killed) >= time.Second || tb.Sub(killed) >= time.Second {
				t.Fatal("death seen after a second or more; README promises under a second")
			}
			return
		}
		if time.Since(killed) > 5*time.Second {
			t.Fatal("death of c never seen")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestKeyedGossip: members with the key gossip; one without it, or with
// another key, cannot join; after a key change (SetKey on every member, one
// after the other) they still hear each other, and a member left with the
// old key only is shut out.
func TestKeyedGossip(t *testing.T) {
	k1, k2, k3 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 32)
	mk := func(name string, key []byte) *Gossip {
		g, err := New(Config{Name: name, BindAddr: "127.0.0.1:0", SecretKey: key})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Close() })
		return g
	}
	a, b := mk("a", k1), mk("b", k1)
	if _, err := b.Join([]string{a.Addr()}); err != nil {
		t.Fatalf("same key: %v", err)
	}
	for _, bad := range []*Gossip{mk("plain", nil), mk("other", k3)} {
		if n, err := bad.Join([]string{a.Addr()}); err == nil && n > 0 {
			t.Fatalf("a member without the key joined (%d)", n)
		}
	}
	if _, err := New(Config{Name: "x", BindAddr: "127.0.0.1:0", SecretKey: []byte("short")}); err == nil {
		t.Fatal("a 5-byte key was accepted")
	}
	if err := mk("nokey", nil).SetKey(k2); err == nil {
		t.Fatal("SetKey on a member without a keyring succeeded")
	}
	stale := mk("stale", k1)
	if _, err := stale.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	for _, g := range []*Gossip{a, b} {
		if err := g.SetKey(k2); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.SetKey(k3); err != nil { // k1 is dropped: only k3 and k2 remain
		t.Fatal(err)
	}
	if err := b.SetKey(k3); err != nil {
		t.Fatal(err)
	}
	c := mk("c", k3)
	if _, err := c.Join([]string{a.Addr()}); err != nil {
		t.Fatalf("new key: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ma, mb := a.Members(), b.Members()
		if !slices.Contains(ma, "stale") && slices.Contains(ma, "c") && slices.Contains(mb, "c") && slices.Contains(ma, "b") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after rotation: a sees %v, b sees %v (want b and c, not stale)", ma, mb)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSetKeyRetiresPreviousKey: the key a revoked node knows is accepted
// only for a grace period after the change, not until the next change
// (which may never come): after it, a member that kept the old key is no
// longer heard.
func TestSetKeyRetiresPreviousKey(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	a, err := New(Config{Name: "a", BindAddr: "127.0.0.1:0", SecretKey: k1})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	a.keyGrace = 100 * time.Millisecond
	if err := a.SetKey(k2); err != nil {
		t.Fatal(err)
	}
	if n := len(a.kr.GetKeys()); n != 2 {
		t.Fatalf("right after the change: %d keys, want 2 (the old one in grace)", n)
	}
	deadline := time.Now().Add(3 * time.Second)
	for len(a.kr.GetKeys()) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the previous key is still accepted %v after the change", 3*time.Second)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !bytes.Equal(a.kr.GetKeys()[0], k2) {
		t.Fatal("the new key was retired")
	}
}

// TestAllow: a member with Allow hears only the members it allows, also
// when another member passes on what it knows of one it does not: here
// evil joins b, which allows all and gossips evil on to a. a never adds
// evil nor reports it to OnChange, and still hears b.
func TestAllow(t *testing.T) {
	var mu sync.Mutex
	asked := map[string]netip.AddrPort{}
	var changes []string
	a, err := New(Config{Name: "a", BindAddr: "127.0.0.1:0",
		OnChange: func(n string, alive bool) { mu.Lock(); changes = append(changes, n); mu.Unlock() },
		Allow: func(n string, addr netip.AddrPort) error {
			mu.Lock()
			defer mu.Unlock()
			asked[n] = addr
			if n != "b" {
				return errors.New("not allowed")
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	mk := func(name string) *Gossip {
		g, err := New(Config{Name: name, BindAddr: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Close() })
		return g
	}
	b, evil := mk("b"), mk("evil")
	if _, err := evil.Join([]string{b.Addr()}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "a to hear b and be asked about evil", func() bool {
		mu.Lock()
		_, askedEvil := asked["evil"]
		mu.Unlock()
		return askedEvil && slices.Contains(a.Members(), "b")
	})
	mu.Lock()
	defer mu.Unlock()
	if m := a.Members(); slices.Contains(m, "evil") || slices.Contains(changes, "evil") {
		t.Fatalf("a's members %v, OnChange for %v: evil got in", m, changes)
	}
	if got := asked["evil"].String(); got != evil.Addr() {
		t.Errorf("Allow got evil at %s, want %s", got, evil.Addr())
	}
}

// TestCloseTwice: Close is idempotent (a second one panicked in
// memberlist's Leave: "leave after shutdown").
func TestCloseTwice(t *testing.T) {
	g, err := New(Config{Name: "a", BindAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := g.Close(); err != nil {
			t.Fatalf("Close %d: %v", i+1, err)
		}
	}
}

// TestWildcardBindRejected: the bind address is also the address the
// member gossips as; a wildcard one would have every peer probe 0.0.0.0 or
// [::], that is itself, and take the member for dead.
func TestWildcardBindRejected(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "[::]:0", ":0"} {
		g, err := New(Config{Name: "w", BindAddr: addr})
		if err == nil {
			defer g.Close()
			t.Errorf("New(%s) advertises %s, an address no peer can reach it at", addr, g.Addr())
		}
	}
}
