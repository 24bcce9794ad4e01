package svid

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
	"github.com/fogmesh/fogmesh/internal/workloadapi"
)

// caIssuer issues from a real identity.CA whose clock the test sets, as the
// control plane does after checking the node may hold the identity.
type caIssuer struct {
	ca    *identity.CA
	clock atomic.Pointer[time.Time]
	calls atomic.Int32
	// swap, if set, names another identity in the certificate.
	swap atomic.Bool
}

func newCAIssuer(t *testing.T) *caIssuer {
	iss := &caIssuer{}
	now := time.Now()
	iss.clock.Store(&now)
	ca, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir(), Now: func() time.Time { return *iss.clock.Load() }})
	if err != nil {
		t.Fatal(err)
	}
	iss.ca = ca
	return iss
}

func (i *caIssuer) IssueWorkloadSVID(_ context.Context, ns, sa string, csrDER []byte) ([]*x509.Certificate, error) {
	i.calls.Add(1)
	csr, err := identity.ParseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	if i.swap.Load() {
		sa += "-other"
	}
	return i.ca.SignWorkloadCSR(csr, ns, sa, 0)
}

func (i *caIssuer) bundles() map[string][]*x509.Certificate {
	return map[string][]*x509.Certificate{api.DefaultTrustDomain: i.ca.Roots()}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// runStore runs s until the test ends.
func runStore(t *testing.T, s *Store, iss Issuer) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx, iss) }()
	t.Cleanup(func() { cancel(); <-done })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, 15*time.Second, what, cond)
}

// TestStoreIssuesAndRenews: an attested workload gets an SVID for its
// SPIFFE ID with a key made here, only the attested caller gets it, it is
// renewed once past its renewal time and not before, and it is forgotten
// when the workload goes.
func TestStoreIssuesAndRenews(t *testing.T) {
	iss := newCAIssuer(t)
	// Issued two hours ago with the 1 h default lifetime: due at once.
	past := time.Now().Add(-2 * time.Hour)
	iss.clock.Store(&past)
	s := NewStore(quiet())
	s.SetTrust(api.DefaultTrustDomain, iss.bundles())
	uid := 1000
	changed := s.Changed()
	s.SetWorkloads([]Holder{
		{Namespace: "shop", ServiceAccount: "orders", Attest: &Attest{UID: &uid}},
		{Namespace: "shop", ServiceAccount: "billing"}, // no Attest: never asked for
	})
	select {
	case <-changed:
	default:
		t.Fatal("SetWorkloads did not signal Changed")
	}
	runStore(t, s, iss)
	caller := workloadapi.Caller{UID: 1000, Known: true}
	waitFor(t, "a first SVID, then its renewal", func() bool { return iss.calls.Load() >= 2 })
	now := time.Now()
	iss.clock.Store(&now) // from here on, issued SVIDs are fresh
	waitFor(t, "a fresh SVID", func() bool {
		got := s.SVIDs(caller)
		return len(got) == 1 && got[0].Chain[0].NotAfter.After(now.Add(30*time.Minute))
	})
	got := s.SVIDs(caller)
	if got[0].ID != "spiffe://fogmesh.local/ns/shop/sa/orders" {
		t.Fatalf("SVID for %s", got[0].ID)
	}
	if !got[0].Key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(got[0].Chain[0].PublicKey) {
		t.Fatal("the held key is not the certificate's")
	}
	if other := s.SVIDs(workloadapi.Caller{UID: 1001, Known: true}); len(other) != 0 {
		t.Fatalf("a caller with another uid got %d SVIDs", len(other))
	}
	// A fresh SVID (NotBefore backdated 5 min, 65 min of life) is not
	// due; 40 minutes on, past 55 % of its life, it is.
	if due := s.due(time.Now()); len(due) != 0 {
		t.Fatalf("fresh SVID due: %v", due)
	}
	if due := s.due(time.Now().Add(40 * time.Minute)); len(due) != 1 || due[0] != got[0].ID {
		t.Fatalf("40 minutes later due: %v", due)
	}
	s.SetWorkloads(nil)
	if n := len(s.SVIDs(caller)); n != 0 {
		t.Fatalf("%d SVIDs after the workload went", n)
	}
}

// TestRenewRefusesAnotherIdentity: a certificate naming another identity is
// not installed.
func TestRenewRefusesAnotherIdentity(t *testing.T) {
	iss := newCAIssuer(t)
	iss.swap.Store(true)
	s := NewStore(quiet())
	uid := 1
	s.SetWorkloads([]Holder{{Namespace: "shop", ServiceAccount: "orders", Attest: &Attest{UID: &uid}}})
	err := s.renew(context.Background(), iss, "spiffe://fogmesh.local/ns/shop/sa/orders")
	if err == nil || !strings.Contains(err.Error(), "names another identity") {
		t.Fatalf("got %v", err)
	}
	if n := len(s.SVIDs(workloadapi.Caller{UID: 1, Known: true})); n != 0 {
		t.Fatalf("%d SVIDs held", n)
	}
	if err := s.renew(context.Background(), iss, "spiffe://fogmesh.local/ns/shop"); err == nil {
		t.Fatal("renewed a non-workload ID")
	}
}

// TestSyncIssuer: a request goes out as a TypeSVID frame; its answer,
// matched by nonce, returns the chain; a refusal and a dropped stream are
// errors; without a stream the call fails at once.
func TestSyncIssuer(t *testing.T) {
	ca := newCAIssuer(t)
	s := NewSyncIssuer()
	if _, err := s.IssueWorkloadSVID(context.Background(), "shop", "orders", nil); !errors.Is(err, errNoControl) {
		t.Fatalf("without a stream: %v", err)
	}
	var mu sync.Mutex
	var sent []*wire.Message
	out := make(chan *wire.Message, 4)
	s.Connected(func(m *wire.Message) error {
		mu.Lock()
		sent = append(sent, m)
		mu.Unlock()
		out <- m
		return nil
	}, false)
	type result struct {
		chain []*x509.Certificate
		err   error
	}
	call := func() <-chan result {
		ch := make(chan result, 1)
		go func() {
			key, _ := identity.NewKey()
			csr, _ := identity.NewCSR(key)
			c, err := s.IssueWorkloadSVID(context.Background(), "shop", "orders", csr)
			ch <- result{c, err}
		}()
		return ch
	}
	recv := func(ch <-chan result) result {
		select {
		case r := <-ch:
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("IssueWorkloadSVID did not return")
			return result{}
		}
	}

	res := call()
	m := <-out
	if m.Type != wire.TypeSVID || m.SVID == nil || m.SVID.Namespace != "shop" || m.SVID.ServiceAccount != "orders" || m.Nonce == "" {
		t.Fatalf("request frame %+v", m)
	}
	chain, err := ca.IssueWorkloadSVID(context.Background(), "shop", "orders", m.CSR)
	if err != nil {
		t.Fatal(err)
	}
	s.Answer(&wire.Message{Type: wire.TypeSVIDIssued, Nonce: "not-" + m.Nonce}) // no caller: dropped
	s.Answer(&wire.Message{Type: wire.TypeSVIDIssued, Nonce: m.Nonce, Certificates: identity.DERs(chain)})
	if r := recv(res); r.err != nil || len(r.chain) != 1 || !r.chain[0].Equal(chain[0]) {
		t.Fatalf("answered call: %v %v", r.chain, r.err)
	}

	res = call()
	m = <-out
	s.Answer(&wire.Message{Type: wire.TypeSVIDIssued, Nonce: m.Nonce, Error: "not your workload"})
	if r := recv(res); r.err == nil || !strings.Contains(r.err.Error(), "not your workload") {
		t.Fatalf("refused call: %v", r.err)
	}

	res = call()
	<-out
	s.Connected(nil, false)
	if r := recv(res); !errors.Is(r.err, errNoControl) {
		t.Fatalf("call on a dropped stream: %v", r.err)
	}
}

// TestNodeRenewAt: half the lifetime counted from issue (not from the
// backdated NotBefore), less at most a twentieth of it: never later, so
// half the lifetime is always in hand (docs/offline.md).
func TestNodeRenewAt(t *testing.T) {
	issued := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	life := 24 * time.Hour
	c := &x509.Certificate{NotBefore: issued.Add(-identity.ClockSkew), NotAfter: issued.Add(life)}
	lo, hi := issued.Add(life/2-life/20), issued.Add(life/2)
	for i := 0; i < 100; i++ {
		if at := NodeRenewAt(c); at.Before(lo) || at.After(hi) {
			t.Fatalf("renew at %s, want within [%s, %s]", at, lo, hi)
		}
	}
}
