package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestControlWaitingBoundsHandshakes: while a control plane waits for its
// store (its etcd endpoint is an address where nothing listens), its admin
// port, which answers /healthz over TLS, runs its handshakes under the
// admin API's gate with the configured bounds: of per+1 connections from
// one source that never send a ClientHello, the one over the per-source
// bound (adminMaxHandshakesPerSource) is closed at once, the others are
// held, and a client from another address is still answered (503, naming
// the store).
func TestControlWaitingBoundsHandshakes(t *testing.T) {
	const per = 3
	cfg := filepath.Join(t.TempDir(), "control.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("adminMaxHandshakesPerSource: %d\n", per)), 0o600); err != nil {
		t.Fatal(err)
	}
	p, addrs := startAddrs(t, "control", "-config", cfg, "-state-dir", t.TempDir(), "-admin-addr", any0, "-sync-addr", any0,
		"-store", "etcd", "-etcd-endpoints", closedAddr(t), "-name", "waiting")
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.67.0.2")}}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: d.DialContext,
		DisableKeepAlives: true, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	health := func() (int, string) {
		resp, err := hc.Get("https://" + addrs["admin"] + "/healthz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testenv.WaitFor(t, 20*time.Second, "a 503 naming the store", func() bool {
		select {
		case <-p.done:
			t.Fatalf("the replica exited while waiting for its store:\n%s", p.out)
		default:
		}
		code, body := health()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "waiting for the store")
	})

	silent := testenv.DialSilent(t, per+1, "127.67.0.1", addrs["admin"])
	// At once: well before the 5 s a handshake may take.
	testenv.WaitFor(t, 3*time.Second, "the connection over the source's bound closed at once", func() bool {
		return silent.IsClosed(per)
	})
	for i := range per { // in order: the first ones took the slots
		if silent.IsClosed(i) {
			t.Fatalf("connection %d, under the bound, was closed", i)
		}
	}
	if code, body := health(); code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for the store") {
		t.Fatalf("a client from another address during the flood: %d %s", code, body)
	}
}
