package agent

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// lockedLog is a Logger's output, safe to read while the agent writes it.
type lockedLog struct{ testenv.Buffer }

func (l *lockedLog) has(s string) bool { return strings.Contains(l.String(), s) }

// startSlowAgent joins cp (at full speed) and then runs an agent whose
// links to cp hold each connection's first write for hold, with
// ControlHandshakeTimeout timeout.
func startSlowAgent(t *testing.T, cp *control.Server, hold, timeout time.Duration) *lockedLog {
	return startSlowAgentJoin(t, cp, hold, timeout, false)
}

// startSlowAgentJoin is startSlowAgent; with slowJoin, its join goes over
// the slow link too.
func startSlowAgentJoin(t *testing.T, cp *control.Server, hold, timeout time.Duration, slowJoin bool) *lockedLog {
	t.Helper()
	tok, err := cp.CreateToken(identity.TokenJoin, "s1", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var log lockedLog
	nw := &testenv.SlowNet{Hold: hold}
	cfg := agentConfig(agentOpts{name: "slow", site: "s1", region: "r1", vipOctet: 149, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	cfg.Insecure, cfg.JoinToken, cfg.WorkloadAPISocket = false, tok, "off"
	cfg.Network, cfg.ControlHandshakeTimeout = nw, Duration(timeout)
	cfg.Logger = slog.New(slog.NewTextHandler(&log, nil))
	nw.Slow.Store(slowJoin)
	a, err := New(cfg) // joins
	if err != nil {
		t.Fatal(err)
	}
	nw.Slow.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return &log
}

// TestControlHandshakeTimeoutSlowLink: over a link where the sync
// handshake takes longer than the default 10 s, an agent whose
// ControlHandshakeTimeout allows it connects to a control plane whose
// SyncHandshakeTimeout does.
func TestControlHandshakeTimeoutSlowLink(t *testing.T) {
	if testing.Short() {
		t.Skip("holds a handshake past the default 10 s bound")
	}
	cp := startControlWith(t, t.TempDir(), "", func(c *control.Config) {
		c.Insecure, c.SyncHandshakeTimeout = false, 3*control.DefaultSyncHandshakeTimeout
	})
	log := startSlowAgent(t, cp, control.DefaultSyncHandshakeTimeout+time.Second, 3*control.DefaultSyncHandshakeTimeout)
	testenv.WaitFor(t, 25*time.Second, "the agent connected over the slow link", func() bool {
		return log.has("agent: connected to control plane")
	})
	if log.has("TLS handshake (timeout)") {
		t.Fatal("a handshake timed out within the configured bound")
	}
}

// TestControlHandshakeTimeoutSlowJoin: the join, too, takes the agent's
// ControlHandshakeTimeout: over a link where its handshake takes longer
// than 10 s, a new node joins (it failed every attempt at a fixed 10 s).
func TestControlHandshakeTimeoutSlowJoin(t *testing.T) {
	if testing.Short() {
		t.Skip("holds a handshake past the default 10 s bound")
	}
	cp := startControlWith(t, t.TempDir(), "", func(c *control.Config) {
		c.Insecure, c.SyncHandshakeTimeout = false, 3*control.DefaultSyncHandshakeTimeout
	})
	log := startSlowAgentJoin(t, cp, control.DefaultSyncHandshakeTimeout+time.Second, 3*control.DefaultSyncHandshakeTimeout, true)
	testenv.WaitFor(t, 25*time.Second, "the agent connected over the slow link", func() bool {
		return log.has("agent: connected to control plane")
	})
}

// TestControlHandshakeTimeoutExceeded: a handshake longer than the agent's
// ControlHandshakeTimeout is given up, and the log says it timed out.
func TestControlHandshakeTimeoutExceeded(t *testing.T) {
	cp := startControlWith(t, t.TempDir(), "", func(c *control.Config) { c.Insecure = false })
	log := startSlowAgent(t, cp, 5*time.Second, 300*time.Millisecond)
	testenv.WaitFor(t, 10*time.Second, "the handshake timed out", func() bool { return log.has("TLS handshake (timeout)") })
	if log.has("agent: connected to control plane") {
		t.Fatal("connected past the configured bound")
	}
}

// TestControlHandshakeTimeoutConfig: a negative ControlHandshakeTimeout is
// refused, naming the setting; 0 is 10 s.
func TestControlHandshakeTimeoutConfig(t *testing.T) {
	cfg := agentConfig(agentOpts{name: "n", site: "s1", region: "r1", vipOctet: 149, stateDir: t.TempDir()})
	if err := CheckConfig(cfg); err != nil {
		t.Fatal(err)
	}
	cfg.ControlHandshakeTimeout = Duration(-time.Second)
	if err := CheckConfig(cfg); err == nil || !strings.Contains(err.Error(), "controlHandshakeTimeout") {
		t.Fatalf("negative: %v, want an error naming controlHandshakeTimeout", err)
	}
}

// newTextLogger is a logger writing text lines to l.
func newTextLogger(l *lockedLog) *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }
