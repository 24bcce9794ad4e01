package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/fogmesh/fogmesh/internal/api"
)

// fakeIssuer is a test double for the control plane's CA (named so): a
// throwaway root that signs whatever the CSR asks, with a short lifetime so
// renewal shows.
type fakeIssuer struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	life   time.Duration
	serial atomic.Int64
	fail   atomic.Bool
}

func newFakeIssuer(t *testing.T, life time.Duration) *fakeIssuer {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	f := &fakeIssuer{cert: cert, key: key, life: life}
	f.serial.Store(100)
	return f
}

func (f *fakeIssuer) IssueWorkloadSVID(ctx context.Context, ns, sa string, csrDER []byte) ([]*x509.Certificate, error) {
	if f.fail.Load() {
		return nil, errors.New("control plane unreachable")
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(api.WorkloadID(api.DefaultTrustDomain, ns, sa))
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(f.serial.Add(1)), NotBefore: now, NotAfter: now.Add(f.life),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.cert, csr.PublicKey, f.key)
	if err != nil {
		return nil, err
	}
	c, _ := x509.ParseCertificate(der)
	return []*x509.Certificate{c}, nil
}

// TestWorkloadAPIThroughAgent: a workload attested by this process's uid
// fetches its SVID from the agent's socket with go-spiffe's client; the
// SVID rotates at half-life on the open stream; another workload without
// attestation is never handed out.
func TestWorkloadAPIThroughAgent(t *testing.T) {
	iss := newFakeIssuer(t, 4*time.Second)
	uid := os.Getuid()
	sock := filepath.Join(t.TempDir(), "wl.sock")
	a, err := New(Config{
		Node:     NodeConfig{Name: "n1", Site: "s1", Region: "r1"},
		MeshAddr: "127.0.0.1:0", DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", VIPRange: "127.184.0.0/16",
		StateDir: t.TempDir(), Upstreams: []string{}, WorkloadAPISocket: sock, SVIDIssuer: iss, Insecure: true,
		Workloads: []Workload{
			{Name: "orders-1", Service: "orders", Namespace: "shop", ServiceAccount: "orders-sa",
				Ports: []api.EndpointPort{{Name: "web", Port: 1}}, Check: Check{Type: "none"}, Attest: &Attest{UID: &uid}},
			{Name: "billing-1", Service: "billing", Namespace: "shop",
				Ports: []api.EndpointPort{{Name: "web", Port: 2}}, Check: Check{Type: "none"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	a.svids.SetTrust(api.DefaultTrustDomain, map[string][]*x509.Certificate{api.DefaultTrustDomain: {iss.cert}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	tctx, tcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer tcancel()
	c, err := workloadapi.New(tctx, workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var x *workloadapi.X509Context
	waitFor(t, "an SVID", func() bool { x, err = c.FetchX509Context(tctx); return err == nil })
	if len(x.SVIDs) != 1 || x.SVIDs[0].ID.String() != "spiffe://fogmesh.local/ns/shop/sa/orders-sa" {
		t.Fatalf("SVIDs: %v", x.SVIDs)
	}
	first := x.SVIDs[0].Certificates[0].SerialNumber.Int64()
	// Rotation at about half of 4 s, pushed on a watch.
	got := make(chan int64, 8)
	go c.WatchX509Context(tctx, svidWatcher{func(x *workloadapi.X509Context) {
		got <- x.DefaultSVID().Certificates[0].SerialNumber.Int64()
	}})
	deadline := time.After(8 * time.Second)
	for {
		select {
		case s := <-got:
			if s > first {
				t.Logf("rotated: serial %d -> %d", first, s)
				return
			}
		case <-deadline:
			t.Fatal("SVID not rotated within 8 s of a 4 s lifetime")
		}
	}
}

type svidWatcher struct {
	f func(*workloadapi.X509Context)
}

func (w svidWatcher) OnX509ContextUpdate(x *workloadapi.X509Context) { w.f(x) }
func (w svidWatcher) OnX509ContextWatchError(error)                  {}
