package h2srv

import (
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestReadForPanicLockHeldServerCloses: a read loop that panics while its
// connection's lock is held (here by the test; by the panicked code
// itself, a section that unlocks without defer, it would be held for
// good) leaves the connection's close waiting for the lock, and its
// handler's stream open: ServeConn does not return, and the connection
// stays the server's. Server.Close, which closes every connection it has
// under the server's lock, must not wait for that one's lock (it would
// hold the server's lock for good: Close, Shutdown and every new
// connection after it would hang).
func TestReadForPanicLockHeldServerCloses(t *testing.T) {
	setInlineLimit(t, time.Millisecond)
	var armed atomic.Bool
	panics := make(chan loopPanic, 2)
	release := make(chan struct{})
	defer close(release)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
	unlock := func() { once.Do(sc.mu.Unlock) }
	defer unlock()
	armed.Store(true)
	rc.fr.WritePing(false, [8]byte{3})
	expectLoopPanic(t, panics, "h2srv.(*conn).readFor")
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
