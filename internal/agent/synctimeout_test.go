package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
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

// TestWelcomeWaitGrows: a control plane whose welcome always takes longer
// than the agent's ControlHandshakeTimeout (here one that never sends it)
// had each stream given up at the bound, and the agent reconnecting
// forever. Now each stream given up so waits twice as long as the one
// before (up to 4 times the bound: syncproto's TestWelcomeWaitGrows), the
// log says so, and a stream that gets its welcome brings the wait back.
func TestWelcomeWaitGrows(t *testing.T) {
	const bound = 300 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var log lockedLog
	cfg := agentConfig(agentOpts{name: "n1", site: "s1", region: "r1", vipOctet: 98, control: []string{ln.Addr().String()}, stateDir: t.TempDir()})
	cfg.WorkloadAPISocket, cfg.ControlHandshakeTimeout = "off", Duration(bound)
	cfg.Logger = newTextLogger(&log)
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	// next accepts the agent's next stream and reads its hello.
	next := func() net.Conn {
		t.Helper()
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(20 * time.Second))
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := wire.NewReader(c).Read(); err != nil {
			t.Fatalf("hello: %v", err)
		}
		return c
	}
	// givenUp returns how long after its hello the agent gave up stream c,
	// sent nothing.
	givenUp := func(c net.Conn) time.Duration {
		t.Helper()
		hello := time.Now()
		c.SetReadDeadline(hello.Add(4*bound + 5*time.Second))
		_, err := io.Copy(io.Discard, c)
		took := time.Since(hello)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("the agent still waits for welcome %v after its hello", took)
		}
		return took
	}
	for i, want := range []time.Duration{bound, 2 * bound, 4 * bound} {
		took := givenUp(next())
		t.Logf("stream %d given up after %v", i+1, took)
		if took < want-bound/3 || took > want+2*time.Second {
			t.Fatalf("stream %d given up %v after its hello, want %v (the wait after %d given up)", i+1, took, want, i)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "the longer wait logged", func() bool { return log.has("the next stream waits " + (4 * bound).String()) })

	c := next()
	if err := wire.Write(c, &wire.Message{Type: wire.TypeWelcome, HeartbeatMillis: 1000}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "connected", func() bool { return log.has("agent: connected to control plane") })
	c.Close()
	if took := givenUp(next()); took < bound-bound/3 || took > bound+2*time.Second {
		t.Fatalf("after a stream that got its welcome, the next given up %v after its hello, want %v", took, bound)
	}
}
