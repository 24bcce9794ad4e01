package control

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// adminHandshakes reads fogmesh_tls_handshakes_in_progress{port="admin"}.
func adminHandshakes(t *testing.T, s *Server) int {
	return int(metricValue(t, s, `fogmesh_tls_handshakes_in_progress{port="admin"}`))
}

// adminRefused reads the admin port's refused handshakes for reason.
func adminRefused(t *testing.T, s *Server, reason string) int {
	return int(metricValue(t, s, fmt.Sprintf(`fogmesh_tls_handshake_failures_total{port="admin",reason=%q}`, reason)))
}

// adminHTTPFrom is adminHTTP dialing from the local address from.
func adminHTTPFrom(t *testing.T, s *Server, from string) *http.Client {
	c := adminHTTP(t, s)
	tr := c.Transport.(*http.Transport)
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	tr.DialContext = d.DialContext
	t.Cleanup(tr.CloseIdleConnections)
	return c
}

// TestAdminHandshakeSourceBound: connections to the admin API (HTTPS) from
// one source that never send a ClientHello hold at most the per-source
// bound of its handshake slots; the extra ones are closed at once and
// counted as source_busy, while a client from another address is still
// answered (and holds no slot once its handshake is done). The silent
// connections are closed at the handshake timeout, their slots come back,
// and the source is served again.
func TestAdminHandshakeSourceBound(t *testing.T) {
	s := startSecure(t)
	per := DefaultAdminMaxHandshakesPerSource
	const src = "127.65.1.1"
	silent := testenv.DialSilent(t, per+4, src, s.AdminAddr())
	testenv.WaitFor(t, 3*time.Second, "4 connections over the source's bound closed at once", func() bool {
		return silent.ClosedByPeer() == 4 && adminRefused(t, s, "source_busy") == 4
	})
	for i := range per { // in order: the first ones took the slots
		if silent.IsClosed(i) {
			t.Fatalf("connection %d, under the bound, was closed", i)
		}
	}
	if n := adminHandshakes(t, s); n != per {
		t.Fatalf("%d admin handshakes in progress, want %d", n, per)
	}
	if code, body := adminGet(t, adminHTTPFrom(t, s, "127.65.1.2"), s, "/healthz", ""); code != http.StatusOK {
		t.Fatalf("a client from another address during the flood: %d %s", code, body)
	}
	if n := adminHandshakes(t, s); n != per {
		t.Fatalf("%d admin handshakes in progress after a served client, want %d", n, per)
	}

	// Plaintext HTTP on the HTTPS port is told so, as net/http does, and
	// frees its slot: the source's bound is full, so from another address.
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.65.1.3")}}
	pc, err := d.Dial("tcp", s.AdminAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(pc, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(pc), nil)
	if err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("plaintext request: %v %v", resp, err)
	}

	// The handshake timeout closes the silent connections and frees their
	// slots.
	testenv.WaitFor(t, 3*adminHandshakeTimeout, "the silent connections closed at the handshake timeout", func() bool {
		return silent.ClosedByPeer() == per+4 && adminHandshakes(t, s) == 0
	})
	if n := adminRefused(t, s, "timeout"); n != per {
		t.Fatalf("%d admin handshakes counted as timed out, want %d", n, per)
	}
	if code, body := adminGet(t, adminHTTPFrom(t, s, src), s, "/healthz", ""); code != http.StatusOK {
		t.Fatalf("the source after its slots came back: %d %s", code, body)
	}
}

// TestAdminHandshakeConfig: the admin bounds default, a negative one is
// no bound (as the sync port's), and set ones apply: past a bound of 2 in all, a third silent
// connection is closed as busy, whatever its source.
func TestAdminHandshakeConfig(t *testing.T) {
	c := Config{StateDir: t.TempDir()}
	if err := c.validate(); err != nil || c.AdminMaxHandshakes != DefaultAdminMaxHandshakes ||
		c.AdminMaxHandshakesPerSource != DefaultAdminMaxHandshakesPerSource {
		t.Fatalf("defaults: %v %d %d", err, c.AdminMaxHandshakes, c.AdminMaxHandshakesPerSource)
	}
	c = Config{StateDir: t.TempDir(), AdminMaxHandshakes: -1, AdminMaxHandshakesPerSource: -5}
	if err := c.validate(); err != nil {
		t.Fatalf("negative admin bounds refused: %v", err)
	}
	if max, per := identity.NewHandshakeGate(c.AdminMaxHandshakes, c.AdminMaxHandshakesPerSource).Limits(); max != -1 || per != -1 {
		t.Fatalf("negative admin bounds give a gate of %d, %d; want none (-1, -1)", max, per)
	}

	s := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, AdminMaxHandshakes: 2})
	a := testenv.DialSilent(t, 1, "127.65.2.1", s.AdminAddr())
	b := testenv.DialSilent(t, 1, "127.65.2.2", s.AdminAddr())
	testenv.WaitFor(t, 3*time.Second, "two slots taken", func() bool { return adminHandshakes(t, s) == 2 })
	third := testenv.DialSilent(t, 1, "127.65.2.3", s.AdminAddr())
	testenv.WaitFor(t, 3*time.Second, "a third connection refused as busy", func() bool {
		return third.ClosedByPeer() == 1 && adminRefused(t, s, "busy") == 1
	})
	if a.ClosedByPeer()+b.ClosedByPeer() != 0 {
		t.Fatal("a connection holding a slot was closed")
	}
}

// TestAdminRevokedCertCounted: a revoked admin client certificate refused
// by the admin API (HTTPS) is counted once, as the admin port's
// (port="admin",reason="revoked"), not as the sync port's nor as "other".
func TestAdminRevokedCertCounted(t *testing.T) {
	s := startSecure(t)
	if code, body := adminGet(t, adminCertHTTP(t, s), s, "/v1/trust", ""); code != http.StatusOK {
		t.Fatalf("the admin certificate before its revocation: %d %s", code, body)
	}
	if _, err := s.revokeAdmin("browser"); err != nil {
		t.Fatal(err)
	}
	c := adminCertHTTP(t, s) // a new connection: a new handshake
	resp, err := c.Get("https://" + s.AdminAddr() + "/v1/trust")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a revoked admin certificate was served: %d", resp.StatusCode)
	}
	waitFor(t, 5*time.Second, `the refusal counted as port="admin",reason="revoked"`, func() bool {
		return adminRefused(t, s, identity.ReasonRevoked) == 1
	})
	if n := s.TLSFailures(identity.ReasonRevoked); n != 0 {
		t.Fatalf(`%d refusals counted as port="sync",reason="revoked", want 0`, n)
	}
	if n := adminRefused(t, s, identity.ReasonOther); n != 0 {
		t.Fatalf(`%d refusals counted as port="admin",reason="other", want 0`, n)
	}
}

// countingListener counts the calls of its Accept.
type countingListener struct {
	net.Listener
	accepts atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	l.accepts.Add(1)
	return l.Listener.Accept()
}

// TestAdminListenerAcceptAfterClose: an Accept that comes after Close (as
// net/http's Serve may, when the server is shut down while it starts)
// returns net.ErrClosed and starts no accept loop: the loop was started
// after Close's wait (a WaitGroup Add racing its Wait, which the race
// detector flagged in CI) and outlived Close.
func TestAdminListenerAcceptAfterClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	inner := &countingListener{Listener: ln}
	l := newGatedTLSListener(inner, &tls.Config{}, newAdminGate(0, 0), time.Second, func(string) {}, slog.New(slog.DiscardHandler))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
	l.wg.Wait() // the loop, had one started
	if n := inner.accepts.Load(); n != 0 {
		t.Fatalf("the TCP listener's Accept called %d times after Close, want 0", n)
	}
}
