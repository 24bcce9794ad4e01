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
}

func (t *heldTimer) Reset(time.Duration) bool { return t.swap(false) }
func (t *heldTimer) Stop() bool               { return t.swap(true) }
func (t *heldTimer) fire()                    { t.swap(true) }

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
	t.Helper()
	client, server := net.Pipe()
	t.Cleanup(func() { client.Close(); server.Close() })
	ctx, gone := context.WithCancel(context.Background())
	t.Cleanup(gone)
	timer = &heldTimer{}
	cs = &h1ClientConn{ctx: ctx, conn: server, br: bufio.NewReader(server), gone: gone,
		afterFunc: func(time.Duration, func()) stoppableTimer { return timer }}
	return cs, timer, client, ctx
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
// watch the client: the next request's callback does, and two watches
// read one bufio.Reader at once (the data race CI found in
// TestIstioTasks, session 18). The schedule is forced with a held timer.
func TestHeadWatchLateCallbackSkips(t *testing.T) {
	cs, timer, client, ctx := watchedConn(t)

	cs.watchHead() // request 1 awaits its head
	timer.fire()   // the timer fires; its callback is not scheduled yet
	cs.stopHead()  // request 1's head comes
	cs.watchHead() // request 2 awaits its head
	runsWithin(t, 5*time.Second, "request 1's late callback", cs.headWatch)
	cs.headMu.Lock()
	started := cs.headDone != nil
	cs.headMu.Unlock()
	if started {
		t.Fatal("request 1's late callback started a watch of the client during request 2")
	}

	// Request 2's own callback watches, and sees the client go.
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

// stopHead ends a watch that is reading the client, without taking the
// client for gone, and the next request's watch starts afresh.
func TestHeadWatchStoppedWhileWatching(t *testing.T) {
	cs, timer, _, ctx := watchedConn(t)

	cs.watchHead()
	timer.fire()
	watching := make(chan struct{})
	go func() { defer close(watching); cs.headWatch() }()
	// Wait for the watch to be reading the client.
	deadline := time.Now().Add(5 * time.Second)
	for {
		cs.headMu.Lock()
		started := cs.headDone != nil
		cs.headMu.Unlock()
		if started {
			break
		}
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
	cs.headMu.Lock()
	skip := cs.headSkip
	cs.headMu.Unlock()
	if skip != 0 {
		t.Fatalf("headSkip = %d after a watch that ran: the next request's callback would skip", skip)
	}
}
