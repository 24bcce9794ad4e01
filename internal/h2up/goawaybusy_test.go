package h2up_test

import (
	"context"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// goAwayServer serves one connection that, once the request's HEADERS
// came (headers closed) and bad is closed, sends a connection
// WINDOW_UPDATE of 0 (a protocol error) and reads to the end: got has the
// first GOAWAY it read, or nil. pool dials it; req is a GET to send.
type goAwayServer struct {
	headers, bad chan struct{}
	got          chan *http2.GoAwayFrame
	pool         *h2up.Pool
	req          *http.Request
}

func startGoAwayServer(t *testing.T) *goAwayServer {
	g := &goAwayServer{headers: make(chan struct{}), bad: make(chan struct{}), got: make(chan *http2.GoAwayFrame, 1)}
	addr := serveRawOnce(t, func(c net.Conn, fr *http2.Framer) {
		if firstHeaders(fr) == nil {
			g.got <- nil
			return
		}
		close(g.headers)
		<-g.bad
		fr.AllowIllegalWrites = true
		fr.WriteWindowUpdate(0, 0)
		var ga *http2.GoAwayFrame
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				break
			}
			if gf, ok := f.(*http2.GoAwayFrame); ok && ga == nil {
				ga = gf
			}
		}
		g.got <- ga
	})
	g.pool = h2up.New(h2up.Config{Dial: dialTo(addr)})
	t.Cleanup(func() { g.pool.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	g.req, _ = http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
	return g
}

// TestGoAwayAfterBusyWriter: the read loop ends the connection on a
// protocol error (a WINDOW_UPDATE of 0 for the connection, RFC 9113
// §6.9) while a writer holds the write lock. The GOAWAY naming the error
// waited for the writer, which let go of the lock: the server read it
// before the connection closed, not a plain close.
func TestGoAwayAfterBusyWriter(t *testing.T) {
	defer h2up.SetGoAwayLockWait(30 * time.Second)() // the writer lets go; a slow machine is no reason to skip the GOAWAY
	g := startGoAwayServer(t)
	headers, bad, got, pool, req := g.headers, g.bad, g.got, g.pool, g.req
	rt := make(chan error, 1)
	go func() {
		resp, err := pool.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		rt <- err
	}()
	select {
	case <-headers: // the request's write let go of the lock
	case ga := <-got:
		t.Fatalf("the connection ended before the request's HEADERS (%v)", ga)
	case <-time.After(10 * time.Second):
		t.Fatal("no request's HEADERS")
	}
	release, ok := h2up.HoldWriteLock(pool)
	if !ok {
		t.Fatal("no connection")
	}
	close(bad)
	// The read loop waits for the lock (goAway), or (the old code) went on
	// to close the connection without its GOAWAY.
	testenv.WaitFor(t, 10*time.Second, "the read loop at its GOAWAY or its close", func() bool {
		buf := make([]byte, 1<<20)
		return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "h2up.(*conn).goAway") || h2up.Conns(pool) == 0
	})
	release()
	select {
	case ga := <-got:
		if ga == nil {
			t.Fatal("the connection closed without a GOAWAY")
		}
		if ga.ErrCode != http2.ErrCodeProtocol {
			t.Fatalf("GOAWAY %v, want PROTOCOL_ERROR", ga.ErrCode)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the connection is still open")
	}
	if err := <-rt; err == nil {
		t.Error("the request succeeded on a connection that failed")
	}
}

// TestGoAwayGivenUpForStuckWriter: a writer that does not let go of the
// write lock (blocked on an endpoint that stopped reading) delays the
// read loop's close by goAwayLockWait at most: the connection then closes
// without its GOAWAY, while the writer still holds the lock.
func TestGoAwayGivenUpForStuckWriter(t *testing.T) {
	defer h2up.SetGoAwayLockWait(50 * time.Millisecond)()
	g := startGoAwayServer(t)
	headers, bad, got, pool, req := g.headers, g.bad, g.got, g.pool, g.req
	go func() {
		if resp, err := pool.RoundTrip(req); err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-headers:
	case <-time.After(10 * time.Second):
		t.Fatal("no request's HEADERS")
	}
	release, ok := h2up.HoldWriteLock(pool)
	if !ok {
		t.Fatal("no connection")
	}
	defer release() // after the close: the close waits for the lock once the socket is closed
	close(bad)
	select {
	case ga := <-got:
		if ga != nil {
			t.Fatalf("a GOAWAY (%v) written while the test held the write lock", ga.ErrCode)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the connection is still open: the read loop waits for the lock")
	}
}
