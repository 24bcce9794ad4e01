package h2srv

import (
	"context"
	"net/http"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// panickedLockHeld serves a connection whose handler holds its stream and
// whose read loop, taken over from it (readFor), panics while the
// connection's lock is held (here by the test; by the panicked code
// itself, a section that unlocks without defer, it would be held for
// good): the connection's close waits for the lock, the handler's stream
// stays open, ServeConn does not return, and the connection stays the
// server's. unlock lets the lock go (once).
func panickedLockHeld(t *testing.T) (s *Server, unlock func()) {
	t.Helper()
	setInlineLimit(t, time.Millisecond)
	var armed atomic.Bool
	panics := make(chan loopPanic, 2)
	release := make(chan struct{})
	s = &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}), OnPanic: func(v any) { panics <- loopPanic{v, string(debug.Stack())} }}
	addr, _ := servePanicky(t, s, &armed)
	before := takeOvers.Load()
	rc := newRawClient(t, addr)
	rc.headers(1, true)
	for deadline := time.Now().Add(10 * time.Second); takeOvers.Load() == before; {
		if time.Now().After(deadline) {
			t.Fatal("the handler's read loop was never taken over")
		}
		time.Sleep(time.Millisecond) // polling a condition, with a deadline
	}
	s.mu.Lock()
	var sc *conn
	for c := range s.conns {
		sc = c
	}
	s.mu.Unlock()
	if sc == nil {
		t.Fatal("no connection")
	}
	sc.mu.Lock()
	var once sync.Once
	unlock = func() { once.Do(sc.mu.Unlock) }
	t.Cleanup(func() { unlock(); close(release) })
	armed.Store(true)
	rc.fr.WritePing(false, [8]byte{3})
	expectLoopPanic(t, panics, "h2srv.(*conn).readFor")
	return s, unlock
}

// TestReadForPanicLockHeldServerCloses: Server.Close, which closes every
// connection it has under the server's lock, must not wait for the lock
// of one whose read loop panicked (it would hold the server's lock for
// good: Close, Shutdown and every new connection after it would hang).
func TestReadForPanicLockHeldServerCloses(t *testing.T) {
	s, unlock := panickedLockHeld(t)
	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		unlock()
		<-closed
		t.Fatal("Server.Close waited for the lock of the connection whose read loop panicked")
	}
}

// goAwayWaiting reports whether a goroutine runs conn.goAway.
func goAwayWaiting() bool {
	buf := make([]byte, 4<<20)
	return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "h2srv.(*conn).goAway(")
}

// TestReadForPanicLockHeldShutdown: Shutdown sends each connection its
// GOAWAY on a goroutine of its own, which takes the connection's lock:
// not for one whose read loop panicked (it would wait for the lock for
// good). Shutdown itself returns when its context ends.
func TestReadForPanicLockHeldShutdown(t *testing.T) {
	s, unlock := panickedLockHeld(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ctx) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		unlock()
		<-done
		t.Fatal("Shutdown did not return once its context ended")
	}
	for deadline := time.Now().Add(2 * time.Second); goAwayWaiting(); {
		if time.Now().After(deadline) {
			t.Fatal("a GOAWAY of Shutdown's waits for the panicked connection's lock")
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
}
