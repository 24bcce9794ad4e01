package relay

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/enroll"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
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

// TestMemberStreamNoTrustWithinHandshakeTimeout: a relay's
// ControlHandshakeTimeout also bounds the wait, after the stream's
// handshake, for the control plane's first trust document (the relay's
// welcome, which a control plane sends at once), as an agent's bounds
// the wait for its welcome. A control plane that completes the handshake
// and then sends nothing has the stream given up within the bound, with
// an error naming what did not come and the setting, and the relay dials
// again. Before, the relay waited for 4 heartbeats (60 s) whatever the
// setting.
func TestMemberStreamNoTrustWithinHandshakeTimeout(t *testing.T) {
	const bound = time.Second
	_, fc, log := runBoundedMember(t, bound)

	c := fc.next(t) // handshake complete; the test sends nothing on it
	handshaken := time.Now()
	c.SetReadDeadline(handshaken.Add(bound + 5*time.Second))
	_, err := io.Copy(io.Discard, c) // the relay's heartbeats, if any, until it closes the stream
	took := time.Since(handshaken)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the relay still waits for the first trust document %v after the handshake, with a bound of %v", took, bound)
	}
	if took > bound+3*time.Second {
		t.Errorf("the relay gave up the stream %v after the handshake, want within its bound of %v (and slack)", took, bound)
	}
	testenv.WaitFor(t, 5*time.Second, "the stream's end logged with its cause", func() bool {
		for _, line := range strings.Split(log.String(), "\n") {
			if strings.Contains(line, "control plane stream ended") && strings.Contains(line, "no trust document") &&
				strings.Contains(line, "controlHandshakeTimeout") {
				return true
			}
		}
		return false
	})
	fc.next(t) // and it dials again
	if strings.Contains(log.String(), "connected to the control plane") {
		t.Error("the relay says it connected to a control plane that sent no trust document")
	}
}

// TestMemberStreamRefusedTrustNamedAtWelcomeBound: a control plane whose
// first trust document the relay refuses (another trust domain's, here)
// has the stream given up at the welcome's bound, as one that sends
// none, but the stream's end names the refusal, not a trust document
// that never came: the operator is sent to the document, not to
// controlHandshakeTimeout. Before, the end said "no trust document ...
// (controlHandshakeTimeout)" although one had come.
func TestMemberStreamRefusedTrustNamedAtWelcomeBound(t *testing.T) {
	const bound = time.Second
	ca, fc, log := runBoundedMember(t, bound)

	c := fc.next(t)
	other := &wire.Trust{TrustDomain: "other.example", Bundles: map[string][][]byte{"other.example": identity.DERs(ca.Roots())}}
	if err := wire.Write(c, &wire.Message{Type: wire.TypeTrust, Trust: other}); err != nil {
		t.Fatal(err)
	}
	var end string
	testenv.WaitFor(t, bound+5*time.Second, "the stream's end logged", func() bool {
		for _, line := range strings.Split(log.String(), "\n") {
			if strings.Contains(line, "control plane stream ended") {
				end = line
				return true
			}
		}
		return false
	})
	if strings.Contains(end, "no trust document") || !strings.Contains(end, "refused") || !strings.Contains(end, "other.example") {
		t.Errorf("stream end %q: want the refused trust document named, not a missing one", end)
	}
}

// runBoundedMember runs relay r1 with a ControlHandshakeTimeout of bound
// against a fake control plane (until the test ends) and returns the CA,
// the fake plane and the relay's log.
func runBoundedMember(t *testing.T, bound time.Duration) (*identity.CA, *fakeControl, *testenv.Buffer) {
	t.Helper()
	ca, err := identity.OpenCA(identity.CAConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	fc := newFakeControl(t, ca)
	dir, _, _ := memberStateDir(t, ca, "r1")
	log := new(testenv.Buffer)
	m, err := OpenMember(context.Background(), MemberConfig{StateDir: dir, Control: []string{fc.ln.Addr().String()}, Name: "r1",
		ControlHandshakeTimeout: bound, Logger: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx, nil) }()
	t.Cleanup(func() { cancel(); <-done })
	return ca, fc, log
}

// TestMemberWelcomeWaitGrows: over a link where the control plane's first
// trust document always takes longer than ControlHandshakeTimeout, a
// relay that gave up each stream at the bound reconnected forever. Now
// each stream given up so waits twice as long as the one before, up to
// four times the bound, and a stream that gets its trust document brings
// the wait back to the bound.
func TestMemberWelcomeWaitGrows(t *testing.T) {
	const bound = 300 * time.Millisecond
	ca, fc, log := runBoundedMember(t, bound)

	// given up waits for the relay to give up stream c, sent nothing, and
	// returns how long after the handshake it did.
	givenUp := func(c net.Conn) time.Duration {
		t.Helper()
		handshaken := time.Now()
		c.SetReadDeadline(handshaken.Add(4*bound + 5*time.Second))
		_, err := io.Copy(io.Discard, c) // the relay's heartbeats, if any, until it closes the stream
		took := time.Since(handshaken)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("the relay still waits for the first trust document %v after the handshake", took)
		}
		return took
	}
	for i, want := range []time.Duration{bound, 2 * bound, 4 * bound, 4 * bound} {
		took := givenUp(fc.next(t))
		t.Logf("stream %d given up after %v", i+1, took)
		if took < want-bound/3 || took > want+2*time.Second {
			t.Fatalf("stream %d given up %v after the handshake, want %v (the wait after %d given up)", i+1, took, want, i)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "the longer wait logged", func() bool {
		return strings.Contains(log.String(), "the next stream waits "+(4*bound).String())
	})

	c := fc.next(t)
	if err := wire.Write(c, &wire.Message{Type: wire.TypeTrust, Trust: caTrust(ca)}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "the relay connected", func() bool {
		return strings.Contains(log.String(), "relay: connected to the control plane")
	})
	c.Close()
	if took := givenUp(fc.next(t)); took > bound+2*time.Second || took < bound-bound/3 {
		t.Fatalf("after a stream that got its trust document, the next given up %v after the handshake, want %v", took, bound)
	}
}

// TestWelcomeWait: the wait for the first trust document doubles at each
// stream given up for none, up to 4 times the bound, and a bound too
// long to double stays as set.
func TestWelcomeWait(t *testing.T) {
	for _, tc := range []struct {
		name   string
		bound  time.Duration
		misses int
		want   time.Duration
	}{
		{"none missed", 10 * time.Second, 0, 10 * time.Second},
		{"one", 10 * time.Second, 1, 20 * time.Second},
		{"two", 10 * time.Second, 2, 40 * time.Second},
		{"capped", 10 * time.Second, 50, 40 * time.Second},
		{"too long to double", math.MaxInt64 / 2, 3, math.MaxInt64 / 2},
	} {
		if got := welcomeWait(tc.bound, tc.misses); got != tc.want {
			t.Errorf("%s: welcomeWait(%v, %d) = %v, want %v", tc.name, tc.bound, tc.misses, got, tc.want)
		}
	}
}

// TestMemberWelcomeWaitNotCutByReadIdle: the reads of a relay stream are
// given up after 4 heartbeats without a frame (streamIdle, 60 s), and
// before the first trust document there is none: a wait for it grown past
// that (a controlHandshakeTimeout over 15 s, doubled twice) ended at 60 s
// all the same, as an i/o timeout, not counted as a stream given up for
// no trust document, while the log had said the next stream waits longer.
// The first read waits as long as the welcome's bound.
func TestMemberWelcomeWaitNotCutByReadIdle(t *testing.T) {
	const bound = 400 * time.Millisecond
	idle := streamIdle
	streamIdle = 500 * time.Millisecond // below 2 and 4 times bound, as 60 s is below 4 times 20 s
	t.Cleanup(func() { streamIdle = idle })
	_, fc, log := runBoundedMember(t, bound)

	givenUp := func(c net.Conn) time.Duration {
		t.Helper()
		handshaken := time.Now()
		c.SetReadDeadline(handshaken.Add(4*bound + 5*time.Second))
		_, err := io.Copy(io.Discard, c)
		took := time.Since(handshaken)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("the relay still waits for the first trust document %v after the handshake", took)
		}
		return took
	}
	for i, want := range []time.Duration{bound, 2 * bound, 4 * bound} {
		took := givenUp(fc.next(t))
		t.Logf("stream %d given up after %v", i+1, took)
		if took < want-bound/3 || took > want+2*time.Second {
			t.Fatalf("stream %d given up %v after the handshake, want %v (the wait after %d given up; reads idle after %v)", i+1, took, want, i, streamIdle)
		}
	}
	if s := log.String(); strings.Contains(s, "i/o timeout") {
		t.Errorf("a stream ended by its read deadline, not the wait for the trust document:\n%s", s)
	}
}
