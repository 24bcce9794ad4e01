package h2up_test

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// TestFlushPendingTakesNoLockBack: FlushPending (run on the agent's
// HTTP/2 server's read loop) never waits for the write lock. It flushed
// through the writers' path, which lets the lock go to yield before the
// flush and then waits to take it back: a writer that took it meanwhile
// (a request body's writer, blocked on an endpoint that stopped reading)
// held the server's read loop, every stream of its client, for as long.
func TestFlushPendingTakesNoLockBack(t *testing.T) {
	d := startDrainServer(t)
	addr := d.target.Load().(string)
	pool := h2up.New(h2up.Config{Dial: d.dial})
	defer pool.Close()
	getOKFrom(t, pool, addr) // the connection is up
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	fl, err := pool.StartLater(req, h2up.CompletionFunc(func(resp *http.Response, err error, _ *h2up.ReadLoop) {
		if err == nil {
			resp.Body.Close()
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan func(), 1)
	var once atomic.Bool
	defer h2up.SetYieldHook(func() {
		if !once.CompareAndSwap(false, true) {
			return
		}
		// Another writer takes the lock while it is let go.
		go func() {
			release, _ := h2up.HoldWriteLock(pool)
			held <- release
		}()
		r := <-held // it has the lock
		held <- r
	})()
	done := make(chan struct{})
	go func() {
		fl.FlushPending()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Error("FlushPending waited for the write lock another writer holds")
	}
	if once.Load() {
		(<-held)()
	}
	<-done
}
