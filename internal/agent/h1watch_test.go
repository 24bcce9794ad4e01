package agent

import (
	"bufio"
	"context"
	"net"
	"sync"
	"testing"
	"time"
)

// heldTimer is a head-watch timer whose callback the test runs, at the
// moment it chooses: fire marks it expired (Stop then reports false, as a
// timer whose function has started) without running the callback.
type heldTimer struct {
	mu      sync.Mutex
	expired bool
	sets    int // Resets, and the first set (afterFunc)
}

func (t *heldTimer) Reset(time.Duration) bool {
	t.mu.Lock()
	t.sets++
	t.mu.Unlock()
	return t.swap(false)
}

func (t *heldTimer) resets() int   { t.mu.Lock(); defer t.mu.Unlock(); return t.sets }
func (t *heldTimer) pending() bool { t.mu.Lock(); defer t.mu.Unlock(); return !t.expired }
func (t *heldTimer) Stop() bool    { return t.swap(true) }
func (t *heldTimer) fire()         { t.swap(true) }

// swap sets expired and reports whether the timer was pending before.
func (t *heldTimer) swap(expired bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	pending := !t.expired
	t.expired = expired
	return pending
}

// watchedConn is a fast-path client connection on a pipe, with a held
// head-watch timer; closing client is the client going away.
func watchedConn(t *testing.T) (cs *h1ClientConn, timer *heldTimer, client net.Conn, ctx context.Context) {
	cs, timer, client, ctx, _ = watchedConnClock(t)
	return cs, timer, client, ctx
}

// testClock is a clock the test moves.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) read() time.Time     { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

// watchedConnClock is watchedConn with the head watch's clock, which the
// test moves past headWatchAfter for a callback to watch.
func watchedConnClock(t *testing.T) (cs *h1ClientConn, timer *heldTimer, client net.Conn, ctx context.Context, clock *testClock) {
	t.Helper()
	client, server := net.Pipe()
	t.Cleanup(func() { client.Close(); server.Close() })
	ctx, gone := context.WithCancel(context.Background())
	t.Cleanup(gone)
	timer = &heldTimer{}
	clock = &testClock{now: time.Unix(1000, 0)}
	cs = &h1ClientConn{ctx: ctx, conn: server, br: bufio.NewReader(server), gone: gone,
		headWatchState: headWatchState{afterFunc: func(time.Duration, func()) stoppableTimer { timer.Reset(0); return timer }, clock: clock.read}}
	return cs, timer, client, ctx, clock
}

// runsWithin runs f and fails the test if it has not returned after d.
func runsWithin(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s: still running after %v", what, d)
	}
}

// A head-watch callback that fired for a request whose head then came,
// and runs only after the next request armed its own watch, must not
// watch the client for that one before it waited headWatchAfter: two
// watches read one bufio.Reader at once (the data race CI found in
// TestIstioTasks, session 18), and a prompt response pays no watch. It
// sets the timer again for the rest of the next request's wait, whose
// callback then watches. The schedule is forced with a held timer.
func TestHeadWatchLateCallbackSkips(t *testing.T) {
	cs, timer, client, ctx, clock := watchedConnClock(t)

	cs.watchHead() // request 1 awaits its head
	clock.add(2 * headWatchAfter)
	timer.fire()   // the timer fires; its callback is not scheduled yet
	cs.stopHead()  // request 1's head comes
	cs.watchHead() // request 2 awaits its head
	if n := timer.resets(); n != 1 {
		t.Fatalf("timer set %d times for two requests, want 1 (its callback is pending)", n)
	}
	runsWithin(t, 5*time.Second, "request 1's late callback", cs.headWatch)
	if cs.watching() {
		t.Fatal("request 1's late callback started a watch of the client during request 2")
	}
	if n := timer.resets(); n != 2 || !timer.pending() {
		t.Fatalf("late callback: timer set %d times, pending %v; want set again for request 2's wait", n, timer.pending())
	}

	// Request 2's own callback, headWatchAfter later, watches, and sees
	// the client go.
	clock.add(headWatchAfter)
	timer.fire()
	watching := make(chan struct{})
	go func() { defer close(watching); cs.headWatch() }()
	client.Close()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("request 2's watch did not see the client close its connection")
	}
	<-watching
	runsWithin(t, 5*time.Second, "stopHead after the watch ended", cs.stopHead)
}

// The timer is set once for a busy connection's requests, not per
// request; one that fires with no request waiting lapses, and the next
// request sets it again; the connection's end stops it.
func TestHeadWatchTimerAcrossRequests(t *testing.T) {
	cs, timer, _, ctx, clock := watchedConnClock(t)
	for range 100 {
		cs.watchHead()
		clock.add(headWatchAfter / 100)
		cs.stopHead()
	}
	if n := timer.resets(); n != 1 {
		t.Fatalf("timer set %d times for 100 prompt requests, want 1", n)
	}
	timer.fire()
	cs.headWatch() // no request waits: nothing to watch, the timer lapses
	if cs.watching() || ctx.Err() != nil {
		t.Fatal("a callback with no request waiting watched the client")
	}
	cs.watchHead()
	if n := timer.resets(); n != 2 || !timer.pending() {
		t.Fatalf("after a lapse: timer set %d times, pending %v; want set again by the next request", n, timer.pending())
	}
	cs.stopHead()
	cs.endHead()
	if timer.pending() {
		t.Fatal("the connection's end left the timer set")
	}
}

// stopHead ends a watch that is reading the client, without taking the
// client for gone, and the next request's callback does not watch before
// that request waited headWatchAfter.
func TestHeadWatchStoppedWhileWatching(t *testing.T) {
	cs, timer, _, ctx, clock := watchedConnClock(t)

	cs.watchHead()
	clock.add(headWatchAfter)
	timer.fire()
	watching := make(chan struct{})
	go func() { defer close(watching); cs.headWatch() }()
	// Wait for the watch to be reading the client.
	deadline := time.Now().Add(5 * time.Second)
	for !cs.watching() {
		if time.Now().After(deadline) {
			t.Fatal("the fired callback did not start watching the client")
		}
		time.Sleep(time.Millisecond)
	}
	runsWithin(t, 5*time.Second, "stopHead of a running watch", cs.stopHead)
	<-watching
	if ctx.Err() != nil {
		t.Fatal("stopping the watch took the client for gone")
	}
	cs.watchHead()
	clock.add(headWatchAfter / 2)
	timer.fire()
	runsWithin(t, 5*time.Second, "the next request's early callback", cs.headWatch)
	if cs.watching() {
		t.Fatal("the next request's callback watched before headWatchAfter")
	}
	cs.stopHead()
}

// watching reports whether a head watch reads the client.
func (cs *h1ClientConn) watching() bool {
	cs.headMu.Lock()
	defer cs.headMu.Unlock()
	return cs.headDone != nil
}
