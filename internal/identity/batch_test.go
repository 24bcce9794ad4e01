package identity

import (
	"strings"
	"testing"
	"time"
)

// TestSignWorkloadBatch: a batch is certificates for the one key and
// identity, each valid half a TTL after the one before, so that at every
// moment of the window one of them is valid with at least half its life
// left; a batch too large is refused.
func TestSignWorkloadBatch(t *testing.T) {
	clk := &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	ca := newCA(t, t.TempDir(), clk)
	key, _ := NewKey()
	der, _ := NewCSR(key)
	csr, err := ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	ttl, window := time.Hour, 3*time.Hour
	batch, err := ca.SignWorkloadBatch(csr, "shop", "orders", ttl, window)
	if err != nil {
		t.Fatal(err)
	}
	if len(batch) != 7 || WorkloadBatchSize(ttl, window) != 7 {
		t.Fatalf("%d certificates for 3 h of 1 h ones, want 7", len(batch))
	}
	for i, ch := range batch {
		leaf := ch[0]
		start := clk.t.Add(time.Duration(i) * 30 * time.Minute)
		if !leaf.NotBefore.Equal(start.Add(-ClockSkew)) || !leaf.NotAfter.Equal(start.Add(ttl)) {
			t.Errorf("certificate %d valid %s to %s, want from %s (backdated) for %s", i, leaf.NotBefore, leaf.NotAfter, start, ttl)
		}
		if !publicKeyEqual(leaf.PublicKey, key.Public()) || leaf.URIs[0].String() != "spiffe://fogmesh.local/ns/shop/sa/orders" {
			t.Errorf("certificate %d is for %s or another key", i, leaf.URIs[0])
		}
	}
	for at := clk.t; !at.After(clk.t.Add(window)); at = at.Add(time.Minute) {
		best := time.Duration(0)
		for _, ch := range batch {
			if !at.Before(ch[0].NotBefore) && at.Before(ch[0].NotAfter) {
				best = max(best, ch[0].NotAfter.Sub(at))
			}
		}
		if best < ttl/2 {
			t.Fatalf("at %s the best certificate has %s left", at, best)
		}
	}
	if _, err := ca.SignWorkloadBatch(csr, "shop", "orders", 2*time.Second, time.Hour); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("a batch of 3601 certificates: %v", err)
	}
	// Certificate times are whole seconds: a batch of 3 s SVIDs steps by
	// 1 s, starting at a whole second, so no two are alike.
	clk.t = clk.t.Add(1700 * time.Millisecond)
	short, err := ca.SignWorkloadBatch(csr, "shop", "orders", 3*time.Second, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(short) != 4 {
		t.Fatalf("%d certificates for 3 s of 3 s ones", len(short))
	}
	for i, ch := range short {
		if want := clk.t.Truncate(time.Second).Add(time.Duration(i) * time.Second); !ch[0].NotAfter.Equal(want.Add(3 * time.Second)) {
			t.Errorf("short certificate %d ends %s, want %s", i, ch[0].NotAfter, want.Add(3*time.Second))
		}
	}
}

// TestOverlapMustExceedNodeTTL: a rotation overlap no longer than the node
// TTL is refused (a node cut off through the rotation would lose its root).
func TestOverlapMustExceedNodeTTL(t *testing.T) {
	_, err := OpenCA(CAConfig{Dir: t.TempDir(), NodeTTL: 10 * 24 * time.Hour})
	if err == nil || !strings.Contains(err.Error(), "must exceed the node TTL") {
		t.Fatalf("10-day node TTL with the default overlap: %v", err)
	}
	if _, err := OpenCA(CAConfig{Dir: t.TempDir(), NodeTTL: 10 * 24 * time.Hour, Overlap: 11 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	if DefaultOverlap <= DefaultNodeTTL || DefaultNodeTTL/2 < 72*time.Hour {
		t.Fatalf("defaults: node TTL %s, overlap %s", DefaultNodeTTL, DefaultOverlap)
	}
}
