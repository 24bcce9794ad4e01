package h2up_test

import (
	"context"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// recoveringReadLoop reports whether a goroutine is in a read loop's
// recover (recoverRead's frame over readLoop's, not a goroutine it
// started).
func recoveringReadLoop() bool {
	buf := make([]byte, 4<<20)
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "h2up.(*conn).recoverRead(") && strings.Contains(g, "h2up.(*conn).readLoop(") {
			return true
		}
	}
	return false
}

// pingTwiceServer serves one connection: it answers the first request,
// sends a PING once ping1 is closed, closes acked when the PING's
// acknowledgement came (the read loop has processed every frame before
// it), sends a second PING once ping2 is closed (the test arms its panic
// in between) and reads until the connection ends.
func pingTwiceServer(t *testing.T) (addr string, ping1, acked, ping2 chan struct{}) {
	ping1, acked, ping2 = make(chan struct{}), make(chan struct{}), make(chan struct{})
	addr = serveRawOnce(t, func(c net.Conn, fr *http2.Framer) {
		if firstHeaders(fr) == nil {
			return
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: headerBlock(":status", "200"), EndStream: true, EndHeaders: true})
		<-ping1
		fr.WritePing(false, [8]byte{1})
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
				break
			}
		}
		close(acked)
		<-ping2
		fr.WritePing(false, [8]byte{2})
		for {
			if _, err := fr.ReadFrame(); err != nil {
				return
			}
		}
	})
	return addr, ping1, acked, ping2
}

// firstExchange is a lock-held panic test's start: pool's first request
// to pingTwiceServer's addr, then its first PING, acknowledged (the read
// loop has processed every frame before it).
func firstExchange(t *testing.T, pool *h2up.Pool, addr string, ping1, acked chan struct{}) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	close(ping1)
	select {
	case <-acked:
	case <-time.After(10 * time.Second):
		t.Fatal("no PING acknowledgement")
	}
}

// TestPanicInReadLoopLockHeld: when the read loop panics while the
// connection's lock is held (here by the test; by the panicked code
// itself, a section that unlocks without defer, it would be held for
// good), its recover does not wait for the lock: the panic is reported,
// the socket closed, and the read loop's goroutine ends; the close of
// the connection's state follows once the lock is free.
func TestPanicInReadLoopLockHeld(t *testing.T) {
	// The first PING's acknowledgement: the read loop has processed every
	// frame before it and waits to read (it takes the connection's lock
	// for some of them: the test's lock must not stop it before the
	// panic).
	addr, ping1, acked, ping2 := pingTwiceServer(t)
	var armed atomic.Bool
	panics := make(chan any, 2)
	pool := h2up.New(h2up.Config{OnPanic: func(v any) { panics <- v }, Dial: func(ctx context.Context) (net.Conn, error) {
		c, err := dialTo(addr)(ctx)
		if err != nil {
			return nil, err
		}
		return panicReadConn{c, &armed}, nil
	}})
	defer pool.Close()
	firstExchange(t, pool, addr, ping1, acked)

	unlock := h2up.LockConns(pool)
	locked := true
	defer func() {
		if locked {
			unlock()
		}
	}()
	armed.Store(true)
	close(ping2)
	select {
	case <-panics:
	case <-time.After(10 * time.Second):
		t.Fatal("OnPanic not called")
	}
	for deadline := time.Now().Add(10 * time.Second); recoveringReadLoop(); {
		if time.Now().After(deadline) {
			t.Fatal("the read loop's recover still runs (it waits for the connection's lock)")
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
	locked = false
	unlock()
	waitStreamsClosed(t, pool)
}

// TestPanicInReadLoopLockHeldPoolServes: a read loop that panics while
// its connection's lock is held (for good, were it the panicked code's
// own) takes no more than its connection with it. The pool's get reserves
// a slot under the pool's lock and the connection's: a new request would
// wait for that connection's lock holding the pool's, and every request
// of the pool after it, for ever; Pool.Close and CloseIdleConnections
// would wait for it too. The pool must skip the connection, dial another
// and close while the lock is still held.
func TestPanicInReadLoopLockHeldPoolServes(t *testing.T) {
	rawAddr, ping1, acked, ping2 := pingTwiceServer(t)
	drainAddr := startDrainServer(t).target.Load().(string)
	var armed atomic.Bool
	var dials atomic.Int64
	panics := make(chan any, 2)
	pool := h2up.New(h2up.Config{OnPanic: func(v any) { panics <- v }, Dial: func(ctx context.Context) (net.Conn, error) {
		addr := drainAddr
		if dials.Add(1) == 1 {
			addr = rawAddr
		}
		c, err := dialTo(addr)(ctx)
		if err != nil {
			return nil, err
		}
		return panicReadConn{c, &armed}, nil
	}})
	defer pool.Close()
	firstExchange(t, pool, rawAddr, ping1, acked)
	unlock := h2up.LockConns(pool)
	var once sync.Once
	defer once.Do(unlock)
	armed.Store(true)
	close(ping2)
	select {
	case <-panics:
	case <-time.After(10 * time.Second):
		t.Fatal("OnPanic not called")
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+drainAddr+"/", nil)
		resp, err := pool.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("a request after the panic, the connection's lock held: %v", err)
		}
	case <-time.After(10 * time.Second):
		once.Do(unlock) // lets the waiting request go
		<-done
		t.Fatal("a request after the panic waited for the panicked connection's lock (the pool's held meanwhile)")
	}
	// Nor do the pool's closes wait for it.
	closed := make(chan struct{})
	go func() {
		pool.CloseIdleConnections()
		pool.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		once.Do(unlock)
		<-closed
		t.Fatal("the pool's Close waited for the panicked connection's lock")
	}
	once.Do(unlock)
	waitStreamsClosed(t, pool)
}
