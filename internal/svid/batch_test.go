package svid

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/workloadapi"
)

// batchIssuer issues batches from a real CA (identity.SignWorkloadBatch)
// until cut.
type batchIssuer struct {
	*caIssuer
	ttl, window time.Duration
	cut         atomic.Bool
	batches     atomic.Int32
}

func (b *batchIssuer) IssueWorkloadBatch(_ context.Context, ns, sa string, csrDER []byte) ([][]*x509.Certificate, error) {
	if b.cut.Load() {
		return nil, errors.New("no control plane")
	}
	csr, err := identity.ParseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	b.batches.Add(1)
	return b.ca.SignWorkloadBatch(csr, ns, sa, b.ttl, b.window)
}

// syncBuf is a log sink tests read while the store writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestBatchServesThroughCut: from a batch of 2 s SVIDs covering 3 s the
// store serves, at every poll during a cut of several lifetimes, a
// certificate valid then (with the one key), signals each change of the
// current one, and once the batch runs out serves none, says why in the
// log and counts it.
func TestBatchServesThroughCut(t *testing.T) {
	now := time.Now()
	ca := newCAIssuer(t)
	ca.clock.Store(&now)
	iss := &batchIssuer{caIssuer: ca, ttl: 2 * time.Second, window: 3 * time.Second}
	var logs syncBuf
	s := NewStore(slog.New(slog.NewTextHandler(&logs, nil)))
	s.SetTrust(api.DefaultTrustDomain, ca.bundles())
	uid := 7
	s.SetWorkloads([]Holder{{Namespace: "shop", ServiceAccount: "orders", Attest: &Attest{UID: &uid}}})
	caller := workloadapi.Caller{UID: 7, Known: true}
	runStore(t, s, iss)
	waitFor(t, "a batch", func() bool { return len(s.SVIDs(caller)) == 1 })
	iss.cut.Store(true) // no new batch from here on
	changed := s.Changed()
	changes := 0
	serials := map[string]bool{}
	var key any
	deadline := now.Add(3500 * time.Millisecond) // inside the 4-5 s the batch covers
	for time.Now().Before(deadline) {
		select {
		case <-changed:
			changes++
			changed = s.Changed()
		default:
		}
		got := s.SVIDs(caller)
		at := time.Now()
		if len(got) != 1 {
			t.Fatalf("at %s: %d SVIDs served during the cut", at.Sub(now), len(got))
		}
		leaf := got[0].Chain[0]
		if at.Before(leaf.NotBefore) || !at.Before(leaf.NotAfter) {
			t.Fatalf("at %s served an SVID valid %s to %s", at.Sub(now), leaf.NotBefore.Sub(now), leaf.NotAfter.Sub(now))
		}
		if key == nil {
			key = got[0].Key
		} else if got[0].Key != key {
			t.Fatal("the key changed inside a batch")
		}
		serials[leaf.SerialNumber.String()] = true
		time.Sleep(20 * time.Millisecond) // the poll interval of this check, not a synchronisation
	}
	if len(serials) < 3 || changes < 2 {
		t.Fatalf("served %d certificates with %d change signals over 3.5 s of 2 s SVIDs stepping by 1 s", len(serials), changes)
	}
	testenvWait(t, "the batch to run out", func() bool { return len(s.SVIDs(caller)) == 0 })
	// The store's loop counts the expiry when it notices it, which can be
	// after a caller was first refused.
	testenvWait(t, "the expiry to be counted", func() bool {
		missing, expired := s.Missing()
		return missing == 1 && expired == 1
	})
	if missing, expired := s.Missing(); missing != 1 || expired != 1 {
		t.Fatalf("missing %d expired %d, want 1 1", missing, expired)
	}
	if !strings.Contains(logs.String(), "no valid workload SVID left") {
		t.Fatalf("no log says why:\n%s", logs.String())
	}
	if iss.batches.Load() != 1 {
		t.Fatalf("%d batches issued", iss.batches.Load())
	}
}

func testenvWait(t *testing.T, what string, cond func() bool) { waitFor(t, what, cond) }

// TestPersistServesAfterRestart: a store that keeps its SVIDs in a file
// (0600) serves them again after a restart with no issuer reachable; an
// unreadable file is an error, an entry whose key does not match its
// certificates is skipped.
func TestPersistServesAfterRestart(t *testing.T) {
	ca := newCAIssuer(t)
	iss := &batchIssuer{caIssuer: ca, ttl: time.Minute, window: 5 * time.Minute}
	path := filepath.Join(t.TempDir(), "svids.json")
	uid := 7
	ws := []Holder{{Namespace: "shop", ServiceAccount: "orders", Attest: &Attest{UID: &uid}}}
	caller := workloadapi.Caller{UID: 7, Known: true}

	s := NewStore(quiet())
	if err := s.Persist(path); err != nil {
		t.Fatal(err)
	}
	s.SetWorkloads(ws)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx, iss) }()
	waitFor(t, "a batch", func() bool { return len(s.SVIDs(caller)) == 1 })
	cancel()
	<-done
	first := s.SVIDs(caller)[0]
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v", fi, err)
	}

	iss.cut.Store(true)
	r := NewStore(quiet())
	if err := r.Persist(path); err != nil {
		t.Fatal(err)
	}
	r.SetWorkloads(ws)
	runStore(t, r, iss)
	got := r.SVIDs(caller)
	if len(got) != 1 || !got[0].Chain[0].Equal(first.Chain[0]) {
		t.Fatalf("after the restart: %v", got)
	}
	if !got[0].Key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(first.Key.Public()) {
		t.Fatal("the restarted store holds another key")
	}

	os.WriteFile(path, []byte("{not json"), 0o600)
	if err := NewStore(quiet()).Persist(path); err == nil {
		t.Fatal("a corrupt state file was accepted")
	}
	// The entry with another key is skipped.
	other, _ := identity.NewKey()
	k, _ := identity.EncodeKeyPEM(other)
	h := r.byID[first.ID]
	f := stateSVID{ID: first.ID, Key: string(k)}
	for _, ch := range h.chains {
		f.Chains = append(f.Chains, identity.DERs(ch))
	}
	if _, err := loadHeld(f); err == nil || !strings.Contains(err.Error(), "another key") {
		t.Fatalf("mismatched key: %v", err)
	}
}
