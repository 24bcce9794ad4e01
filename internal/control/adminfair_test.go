package control

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestAdminLockoutFromFourSources: four sources holding their per-source
// share of silent connections fill the admin API's gate; a client from
// another address is still served, in the place of the oldest silent
// connection of one of them (closed, counted as evicted), not refused as
// busy until the silent ones time out.
func TestAdminLockoutFromFourSources(t *testing.T) {
	s := startSecure(t)
	per := DefaultAdminMaxHandshakesPerSource
	var silent []*testenv.SilentConns
	for i := range DefaultAdminMaxHandshakes / per {
		silent = append(silent, testenv.DialSilent(t, per, fmt.Sprintf("127.68.0.%d", i+1), s.AdminAddr()))
	}
	testenv.WaitFor(t, 3*time.Second, "gate full", func() bool { return adminHandshakes(t, s) == DefaultAdminMaxHandshakes })
	c := adminHTTPFrom(t, s, "127.68.1.1")
	c.Timeout = 2 * time.Second
	req, _ := http.NewRequest(http.MethodGet, "https://"+s.AdminAddr()+"/healthz", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("an admin from another address is locked out while %d silent conns are open: %v", DefaultAdminMaxHandshakes, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: %d", resp.StatusCode)
	}
	testenv.WaitFor(t, 3*time.Second, "one silent connection evicted", func() bool {
		return adminRefused(t, s, identity.ReasonEvicted) == 1
	})
	closed := 0
	for _, sc := range silent {
		closed += sc.ClosedByPeer()
		if sc.ClosedByPeer() == 1 && !sc.IsClosed(0) {
			t.Errorf("a silent connection other than its source's oldest was evicted")
		}
	}
	if closed != 1 || adminRefused(t, s, identity.ReasonBusy) != 0 {
		t.Fatalf("%d silent connections closed, %d refused as busy; want 1, 0", closed, adminRefused(t, s, identity.ReasonBusy))
	}
	// The served client's slot is free again; the silent ones still hold theirs.
	testenv.WaitFor(t, 3*time.Second, "slots", func() bool { return adminHandshakes(t, s) == DefaultAdminMaxHandshakes-1 })
}

// TestAdminHandshakePanicRecovered: a panic in a handshake callback
// (GetCertificate here) drops that connection, as net/http's conn.serve
// did, and frees its slot; the listener goes on serving.
func TestAdminHandshakePanicRecovered(t *testing.T) {
	cert := selfSignedCert(t)
	var calls atomic.Int32
	cfg := &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		if calls.Add(1) == 1 {
			panic("test: GetCertificate")
		}
		return &cert, nil
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gate := identity.NewHandshakeGate(4, 2)
	var mu sync.Mutex
	failures := map[string]int{}
	l := newGatedTLSListener(ln, cfg, gate, 5*time.Second, func(r string) { mu.Lock(); failures[r]++; mu.Unlock() },
		slog.New(slog.DiscardHandler))
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- c
		}
	}()
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.68.2.1")}}
	clientCfg := &tls.Config{InsecureSkipVerify: true}
	if c, err := tls.DialWithDialer(d, "tcp", ln.Addr().String(), clientCfg); err == nil {
		c.Close()
		t.Fatal("the handshake whose GetCertificate panicked succeeded")
	}
	testenv.WaitFor(t, 3*time.Second, "the panicked handshake's slot freed and counted", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return gate.InProgress() == 0 && failures[identity.ReasonOther] == 1
	})
	c, err := tls.DialWithDialer(d, "tcp", ln.Addr().String(), clientCfg)
	if err != nil {
		t.Fatalf("after a panic: %v", err)
	}
	defer c.Close()
	select {
	case sc := <-accepted:
		sc.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("the next connection was not accepted")
	}
}

func selfSignedCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
