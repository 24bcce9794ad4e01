package relay

import (
	"context"
	"crypto/tls"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/enroll"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestMemberControlHandshakeTimeoutSlowLink: a relay's join and its
// stream to the control plane take MemberConfig.ControlHandshakeTimeout,
// as an agent's do: over a link where a TLS handshake takes longer than
// the default 10 s, a relay whose bound allows it joins a control plane
// whose syncHandshakeTimeout does, and connects. Before, both were bound
// by a fixed 10 s and every attempt failed.
func TestMemberControlHandshakeTimeoutSlowLink(t *testing.T) {
	if testing.Short() {
		t.Skip("holds a handshake past the default 10 s bound")
	}
	bound := 3 * control.DefaultSyncHandshakeTimeout
	cp, err := control.New(control.Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		SyncHandshakeTimeout: bound})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { cp.Serve(context.Background()); close(served) }()
	t.Cleanup(func() { cp.Close(); <-served })
	tok, err := cp.CreateToken(identity.TokenRelay, "", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	nw := &testenv.SlowNet{Hold: control.DefaultSyncHandshakeTimeout + time.Second}
	nw.Slow.Store(true)
	dial := func(ctx context.Context, addr string, cfg *tls.Config) (*tls.Conn, error) {
		raw, err := nw.Dial(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return enroll.HandshakeTLS(ctx, raw, addr, cfg)
	}
	var log testenv.Buffer
	// One slow handshake is 11 s: past 25 s, the join failed its attempts.
	jctx, jcancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer jcancel()
	m, err := OpenMember(jctx, MemberConfig{StateDir: t.TempDir(), Control: []string{cp.SyncAddr()}, Name: "r1", JoinToken: tok,
		Dial: dial, ControlHandshakeTimeout: bound, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatalf("join over the slow link: %v\n%s", err, log.String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx, nil) }()
	defer func() { cancel(); <-done }()
	testenv.WaitFor(t, 25*time.Second, "the relay's stream connected over the slow link", func() bool {
		return strings.Contains(log.String(), "relay: connected to the control plane")
	})
}
