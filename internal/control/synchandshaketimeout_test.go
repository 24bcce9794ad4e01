package control

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// slowLink is a connection over a slow link: its first write is held
// until hold has passed since it was opened (a satellite or 2G link
// carrying a ClientHello and a certificate chain), or until it is closed.
type slowLink struct {
	net.Conn
	until  time.Time
	once   sync.Once
	closed chan struct{}
}

func newSlowLink(c net.Conn, hold time.Duration) *slowLink {
	return &slowLink{Conn: c, until: time.Now().Add(hold), closed: make(chan struct{})}
}

func (c *slowLink) Write(p []byte) (int, error) {
	if d := time.Until(c.until); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-c.closed:
			t.Stop()
			return 0, net.ErrClosed
		}
	}
	return c.Conn.Write(p)
}

func (c *slowLink) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// slowSyncDial is syncDial over a slowLink holding the first flight for
// hold: it returns the answer to hello or the first error.
func slowSyncDial(t *testing.T, s *Server, svid *x509svid.SVID, hold time.Duration) (*wire.Message, error) {
	t.Helper()
	raw, err := net.DialTimeout("tcp", s.SyncAddr(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(newSlowLink(raw, hold), asIsClientConfig(s, svid, identity.ALPNSync))
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), hold+10*time.Second)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	n := &api.Node{Meta: api.Meta{Name: "slow"}, Spec: api.NodeSpec{Site: "s1", Region: "r", MeshAddress: "127.0.0.1:1"}}
	if err := wire.Write(c, &wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapPolicy2}, Node: n}); err != nil {
		return nil, err
	}
	return wire.NewReader(c).Read()
}

// syncLog is a Logger's output, safe to read while the server writes it.
type syncLog = testenv.Buffer

// TestSyncHandshakeTimeoutSlowLink: an agent whose handshake takes longer
// than the default bound (its first flight held past 10 s) is welcomed by
// a control plane whose SyncHandshakeTimeout allows it.
func TestSyncHandshakeTimeoutSlowLink(t *testing.T) {
	if testing.Short() {
		t.Skip("holds a handshake past the default 10 s bound")
	}
	s := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		SyncHandshakeTimeout: 3 * DefaultSyncHandshakeTimeout})
	m, err := slowSyncDial(t, s, signNode(t, s.CA(), "s1", "slow", 0), DefaultSyncHandshakeTimeout+time.Second)
	if err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("a handshake past the default bound, within the configured one: %v %+v", err, m)
	}
	if n := s.TLSFailures(identity.ReasonTimeout); n != 0 {
		t.Fatalf("%d handshakes timed out, want 0", n)
	}
}

// TestSyncHandshakeTimeoutExceeded: a handshake longer than the configured
// SyncHandshakeTimeout is closed at it, counted as reason "timeout" and
// logged so.
func TestSyncHandshakeTimeoutExceeded(t *testing.T) {
	var log syncLog
	s := serveControl(t, Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		SyncHandshakeTimeout: 300 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if m, err := slowSyncDial(t, s, signNode(t, s.CA(), "s1", "slow", 0), 3*time.Second); err == nil {
		t.Fatalf("a handshake past the configured bound got %+v", m)
	}
	waitCount(t, "the handshake counted as timed out", func() bool { return s.TLSFailures(identity.ReasonTimeout) == 1 })
	if l := log.String(); !strings.Contains(l, "sync TLS handshake refused") || !strings.Contains(l, "reason=timeout") {
		t.Fatalf("log does not say the handshake timed out:\n%s", l)
	}
	// A handshake within the bound still passes.
	if m, err := syncDial(t, s, signNode(t, s.CA(), "s1", "fast", 0), "s1", "fast"); err != nil || m.Type != wire.TypeWelcome {
		t.Fatalf("a prompt agent: %v %+v", err, m)
	}
}

// TestSyncHandshakeTimeoutConfig: 0 is the default; a negative one is
// refused, naming the setting.
func TestSyncHandshakeTimeoutConfig(t *testing.T) {
	c := Config{StateDir: t.TempDir()}
	if err := c.validate(); err != nil || c.SyncHandshakeTimeout != DefaultSyncHandshakeTimeout {
		t.Fatalf("default: %v %s", err, c.SyncHandshakeTimeout)
	}
	c = Config{StateDir: t.TempDir(), SyncHandshakeTimeout: -time.Second}
	if err := c.validate(); err == nil || !strings.Contains(err.Error(), "syncHandshakeTimeout") {
		t.Fatalf("negative: %v, want an error naming syncHandshakeTimeout", err)
	}
}

// TestOutboundHandshakeAtLeastDefault: a regional plane's join and link,
// and the wait for a region's hello, take syncHandshakeTimeout when it is
// raised (a slow link), but never less than the default: a bound lowered
// to free the sync port's handshake slots sooner does not cut a WAN link.
func TestOutboundHandshakeAtLeastDefault(t *testing.T) {
	for set, want := range map[time.Duration]time.Duration{
		300 * time.Millisecond:          DefaultSyncHandshakeTimeout,
		DefaultSyncHandshakeTimeout:     DefaultSyncHandshakeTimeout,
		3 * DefaultSyncHandshakeTimeout: 3 * DefaultSyncHandshakeTimeout,
	} {
		s := &Server{cfg: Config{SyncHandshakeTimeout: set}}
		if got := s.outboundHandshake(); got != want {
			t.Errorf("syncHandshakeTimeout %v: outbound bound %v, want %v", set, got, want)
		}
	}
}
