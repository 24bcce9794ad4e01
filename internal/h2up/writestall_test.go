package h2up_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// TestStalledWriteClosesConnection: an endpoint that stops reading leaves
// a request body's write blocked on a full socket for good. Requests on
// the connection give up at their deadlines
// (TestStalledEndpointLeavesOtherRequestsTheirDeadlines), but the
// connection, its blocked writer and its buffers stayed until the
// endpoint went away, and a request without a deadline never returned.
// A write that made no progress for StallTimeout now closes the
// connection: its streams fail as on a lost connection (a net.Error, the
// agent's reset), it leaves the pool, its goroutines end, and the next
// request dials a new one.
func TestStalledWriteClosesConnection(t *testing.T) {
	const stall = 300 * time.Millisecond
	base := runtime.NumGoroutine()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 2)
	go serveStalling(ln, accepted)
	var servers []net.Conn
	defer func() {
		ln.Close()
		for _, c := range servers {
			c.Close()
		}
	}()
	dialed := make(chan *stallConn, 2)
	pool := h2up.New(h2up.Config{StallTimeout: stall, Dial: func(ctx context.Context) (net.Conn, error) {
		c, err := dialTo(ln.Addr().String())(ctx)
		if err != nil {
			return nil, err
		}
		sc := &stallConn{Conn: c}
		dialed <- sc
		return sc, nil
	}})
	defer pool.Close()
	// next returns the pool's next connection once the endpoint took it.
	next := func() *stallConn {
		t.Helper()
		var sc *stallConn
		select {
		case sc = <-dialed:
		case <-time.After(10 * time.Second):
			t.Fatal("no connection dialed")
		}
		select {
		case c := <-accepted:
			servers = append(servers, c)
		case <-time.After(10 * time.Second):
			t.Fatal("no connection accepted")
		}
		return sc
	}

	// An endless body and no deadline: the socket fills within moments,
	// then only the connection's close ends the request.
	body := &zeros{}
	req, _ := http.NewRequest("POST", "http://x/upload", io.NopCloser(body))
	done := make(chan error, 1)
	go func() {
		resp, err := pool.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	sc := next()
	select {
	case err = <-done:
		t.Logf("request, after its write waited %v: %v", sc.longestWrite(), err)
	case <-time.After(10 * time.Second):
		t.Fatalf("the request is still in RoundTrip 10 s in, its write blocked for %v (StallTimeout %v, %d body bytes read): the connection was not closed",
			sc.blockedFor(), stall, body.n.Load())
	}
	var ne net.Error
	if !errors.As(err, &ne) {
		t.Errorf("request error %v (%T): not a net.Error, which the agent takes for a lost connection", err, err)
	}
	// The write that blocked was cut off no sooner than StallTimeout (and
	// nominally within 1.5 times it).
	if d := sc.longestWrite(); d < stall || d > stall+3*time.Second {
		t.Errorf("the connection was closed after a write waited %v; want about %v", d, stall)
	}
	if n := h2up.Conns(pool); n != 0 {
		t.Errorf("the pool holds %d connections after the stalled one closed; want 0", n)
	}
	// The endpoint sees the connection end (after the bytes it did not
	// read).
	servers[0].SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, servers[0]); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the endpoint's side of the connection: %v; want EOF or a reset", err)
	}
	// The connection's goroutines (its read loop, the body's writer)
	// ended: only serveStalling's accept loop is left.
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base+1 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before the test (+1 accept loop):\n%s",
				runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The next request gets a new connection.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ = http.NewRequestWithContext(ctx, "GET", "http://x/next", nil)
	go func() {
		resp, err := pool.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	next()
	cancel() // the stalling endpoint never answers
	<-done
}
