package workloadapi

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// testCA is a throwaway root made for the test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, td string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://" + td)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root " + td},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, URIs: []*url.URL{u}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert, key}
}

func (ca *testCA) issue(t *testing.T, id string, serial int64) SVID {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse(id)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), NotBefore: time.Now().Add(-time.Minute),
		NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return SVID{ID: id, Chain: []*x509.Certificate{cert}, Key: key}
}

// fakeSource is a test double for the agent's identity store (named so:
// the server under test is real, the identities are made by the test).
type fakeSource struct {
	mu      sync.Mutex
	byUID   map[int32][]SVID
	bundles map[string][]*x509.Certificate
	ch      chan struct{}
}

func (f *fakeSource) SVIDs(c Caller) []SVID {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !c.Known {
		return nil
	}
	return f.byUID[c.UID]
}
func (f *fakeSource) Bundles() map[string][]*x509.Certificate {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bundles
}
func (f *fakeSource) TrustDomain() string { return "fogmesh.local" }
func (f *fakeSource) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ch
}
func (f *fakeSource) set(uid int32, svids []SVID) {
	f.mu.Lock()
	f.byUID[uid] = svids
	close(f.ch)
	f.ch = make(chan struct{})
	f.mu.Unlock()
}

func startServer(t *testing.T, src Source) (addr string, s *Server) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "workload.sock")
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	s = New(src, nil)
	done := make(chan struct{})
	go func() { s.Serve(ln); close(done) }()
	t.Cleanup(func() { s.Close(); <-done })
	return "unix://" + path, s
}

// TestGoSPIFFEClientFetchesAndRotates: go-spiffe's own Workload API client
// fetches the caller's SVID and bundles, and a watcher receives the rotated
// SVID without reconnecting.
func TestGoSPIFFEClientFetchesAndRotates(t *testing.T) {
	ca, other := newTestCA(t, "fogmesh.local"), newTestCA(t, "other.example")
	id := "spiffe://fogmesh.local/ns/demo/sa/orders"
	src := &fakeSource{byUID: map[int32][]SVID{int32(os.Getuid()): {ca.issue(t, id, 10)}},
		bundles: map[string][]*x509.Certificate{"fogmesh.local": {ca.cert}, "other.example": {other.cert}}, ch: make(chan struct{})}
	addr, srv := startServer(t, src)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sv, err := c.FetchX509SVID(ctx)
	if err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	if sv.ID.String() != id || sv.Certificates[0].SerialNumber.Int64() != 10 {
		t.Fatalf("got SVID %s serial %v", sv.ID, sv.Certificates[0].SerialNumber)
	}
	// The key matches the certificate.
	if !sv.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(sv.Certificates[0].PublicKey) {
		t.Fatal("private key does not match the certificate")
	}
	bs, err := c.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatalf("FetchX509Bundles: %v", err)
	}
	for _, td := range []string{"fogmesh.local", "other.example"} {
		b, err := bs.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(td))
		if err != nil || len(b.X509Authorities()) != 1 {
			t.Fatalf("bundle %s: %v", td, err)
		}
	}
	ctxs, err := c.FetchX509Context(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctxs.Bundles.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.example")); err != nil {
		t.Fatalf("federated bundle missing from the X.509 context: %v", err)
	}

	// Rotation: a watcher sees serial 11 arrive on the open stream.
	got := make(chan int64, 4)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	go c.WatchX509Context(wctx, watcher{func(x *workloadapi.X509Context) {
		got <- x.DefaultSVID().Certificates[0].SerialNumber.Int64()
	}})
	if s := <-got; s != 10 {
		t.Fatalf("watch first serial %d", s)
	}
	requests := srv.Requests.Load()
	src.set(int32(os.Getuid()), []SVID{ca.issue(t, id, 11)})
	select {
	case s := <-got:
		if s != 11 {
			t.Fatalf("rotated serial %d, want 11", s)
		}
	case <-ctx.Done():
		t.Fatal("rotation not pushed")
	}
	if srv.Requests.Load() != requests {
		t.Fatalf("the watcher reconnected (%d → %d requests): rotation should ride the open stream", requests, srv.Requests.Load())
	}
}

type watcher struct {
	f func(*workloadapi.X509Context)
}

func (w watcher) OnX509ContextUpdate(x *workloadapi.X509Context) { w.f(x) }
func (w watcher) OnX509ContextWatchError(error)                  {}

// TestNoIdentityAndMissingHeader: a caller without an identity gets
// PERMISSION_DENIED; a call without the security header gets
// INVALID_ARGUMENT; JWT methods are UNIMPLEMENTED.
func TestNoIdentityAndMissingHeader(t *testing.T) {
	ca := newTestCA(t, "fogmesh.local")
	src := &fakeSource{byUID: map[int32][]SVID{int32(os.Getuid()) + 1: {ca.issue(t, "spiffe://fogmesh.local/ns/a/sa/b", 1)}},
		bundles: map[string][]*x509.Certificate{"fogmesh.local": {ca.cert}}, ch: make(chan struct{})}
	addr, srv := startServer(t, src)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.FetchX509SVID(ctx); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("caller without identity: %v, want PermissionDenied", err)
	}
	if srv.Denied.Load() == 0 {
		t.Fatal("denial not counted")
	}
	if _, err := c.FetchJWTSVID(ctx, jwtParams()); status.Code(err) != codes.Unimplemented {
		t.Fatalf("JWT: %v, want Unimplemented", err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("without the security header: %v, want InvalidArgument", err)
	}
}

// TestHostileBytesOnSocket: garbage, a truncated preface and an HTTP/1 request
// on the socket do not stop the server.
func TestHostileBytesOnSocket(t *testing.T) {
	ca := newTestCA(t, "fogmesh.local")
	src := &fakeSource{byUID: map[int32][]SVID{int32(os.Getuid()): {ca.issue(t, "spiffe://fogmesh.local/ns/a/sa/b", 1)}},
		bundles: map[string][]*x509.Certificate{"fogmesh.local": {ca.cert}}, ch: make(chan struct{})}
	addr, _ := startServer(t, src)
	path := addr[len("unix://"):]
	for _, junk := range [][]byte{
		bytes.Repeat([]byte{0xff}, 4096),
		[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04"),
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
	} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(junk)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 512)
		c.Read(buf)
		c.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.FetchX509SVID(ctx); err != nil {
		t.Fatalf("after hostile bytes: %v", err)
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	p := filepath.Join(t.TempDir(), "file")
	os.WriteFile(p, []byte("x"), 0o600)
	if _, err := Listen(p); err == nil {
		t.Fatal("Listen replaced a regular file")
	}
}

func FuzzReadMessage(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0})
	f.Add([]byte{1, 0, 0, 0, 1, 7})
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := readMessage(bytes.NewReader(b))
		if err == nil && len(m) > maxRequest {
			t.Fatalf("accepted %d bytes", len(m))
		}
	})
}

func jwtParams() jwtsvid.Params { return jwtsvid.Params{Audience: "x"} }
