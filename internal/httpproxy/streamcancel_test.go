package httpproxy

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
)

// A CancelHeadWait racing a request's await falls in one order: either
// the request is refused and its connection not poisoned (the cancel came
// first), or it goes on and its connection is poisoned (the cancel came
// after): never both, never neither, as with the lock the mark had.
func TestStreamCancelMarkOneOrder(t *testing.T) {
	refused, poisoned := 0, 0
	for range 2000 {
		ctx := WithStreamCancel(context.Background())
		m := cancelsOnlyStreams(ctx)
		var hits atomic.Int32
		pc := &poolConn{poison: func() { hits.Add(1) }}
		var wg sync.WaitGroup
		var ok bool
		start := make(chan struct{})
		wg.Add(2)
		go func() { defer wg.Done(); <-start; CancelHeadWait(ctx) }()
		go func() { defer wg.Done(); <-start; ok = m.await(pc) }()
		close(start)
		wg.Wait()
		switch n := hits.Load(); {
		case ok && n != 1:
			t.Fatalf("await went on, poisoned %d times: want 1 (the cancel came after)", n)
		case !ok && n != 0:
			t.Fatalf("await refused, poisoned %d times: want 0 (the cancel came first)", n)
		case ok:
			poisoned++
		default:
			refused++
		}
		if m.await(nil) {
			t.Fatal("await after CancelHeadWait went on")
		}
	}
	t.Logf("%d refused, %d poisoned", refused, poisoned)
}
