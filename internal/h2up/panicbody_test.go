package h2up_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// panicReadyBody says its read does not wait, then panics in it: a bug in
// a request body's wrapper, read on the caller's goroutine (sendReady,
// under the connection's write lock, right after the request's HEADERS).
type panicReadyBody struct{}

func (panicReadyBody) ReadReady() bool          { return true }
func (panicReadyBody) Read([]byte) (int, error) { panic("test: a bug in a request body's read") }
func (panicReadyBody) Close() error             { return nil }

// TestPanicInReadyBodyClosesStream: a request whose body panics as it is
// first read, its stream already opened, must not leave the stream open
// on the connection (a slot of the server's MAX_CONCURRENT_STREAMS and an
// entry of the connection's streams for good, a stream the endpoint
// waits on); the panic goes on to the caller, and the connection serves
// on.
func TestPanicInReadyBodyClosesStream(t *testing.T) {
	d := startDrainServer(t)
	addr := d.target.Load().(string)
	pool := h2up.New(h2up.Config{Dial: d.dial})
	defer pool.Close()
	get := func() { t.Helper(); getOKFrom(t, pool, addr) }
	get() // the connection is up
	p := func() (p any) {
		defer func() { p = recover() }()
		req, _ := http.NewRequest("POST", "http://"+addr+"/", panicReadyBody{})
		req.ContentLength = -1
		pool.RoundTrip(req)
		return nil
	}()
	if p == nil || !strings.Contains(p.(string), "request body's read") {
		t.Fatalf("recovered %v, want the body's panic", p)
	}
	waitStreamsClosed(t, pool)
	get() // served on, on the same connection
	if n := d.dials.Load(); n != 1 {
		t.Errorf("%d dials, want 1", n)
	}
}

// panicLaterBody's Read panics on its second call: after the HEADERS
// went out, on the pool's own writer of the body (writeBody).
type panicLaterBody struct{ n int }

func (b *panicLaterBody) Read(p []byte) (int, error) {
	b.n++
	if b.n > 1 {
		panic("test: a bug in a request body's later read")
	}
	return copy(p, "first"), nil
}

// TestPanicInBodyWriter: a request body whose Read panics on the pool's
// writer goroutine (not the caller's) ended the process. The panic goes
// to Config.OnPanic, the request fails with ErrBodyPanicked, its stream
// is reset (none stays open on the connection), and the connection
// serves on.
func TestPanicInBodyWriter(t *testing.T) {
	d := startDrainServer(t)
	addr := d.target.Load().(string)
	panics := make(chan any, 4)
	pool := h2up.New(h2up.Config{Dial: d.dial, OnPanic: func(v any) { panics <- v }})
	defer pool.Close()
	req, _ := http.NewRequest("POST", "http://"+addr+"/", &panicLaterBody{})
	req.ContentLength = -1
	resp, err := pool.RoundTrip(req)
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if !errors.Is(err, h2up.ErrBodyPanicked) {
		t.Fatalf("request error %v, want ErrBodyPanicked", err)
	}
	select {
	case v := <-panics:
		if !strings.Contains(fmt.Sprint(v), "later read") {
			t.Fatalf("OnPanic got %v", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnPanic not called")
	}
	waitStreamsClosed(t, pool)
	req, _ = http.NewRequest("GET", "http://"+addr+"/", nil)
	resp, err = pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Fatalf("after the panic: %q", b)
	}
	if n := d.dials.Load(); n != 1 {
		t.Errorf("%d dials, want 1: the connection should serve on", n)
	}
}

// panicReadConn panics in a Read that got bytes once armed: a bug in the
// read loop, on the pool's own goroutine.
type panicReadConn struct {
	net.Conn
	armed *atomic.Bool
}

func (c panicReadConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.armed.CompareAndSwap(true, false) {
		panic("test: a bug in the read loop")
	}
	return n, err
}

// TestPanicInReadLoop: a panic in a connection's read loop ended the
// process. It goes to Config.OnPanic, the connection is closed (the
// request waiting on it fails), and the pool serves on with a new one.
func TestPanicInReadLoop(t *testing.T) {
	addr := startDrainServer(t).target.Load().(string)
	var armed atomic.Bool
	var dials atomic.Int64
	panics := make(chan any, 4)
	pool := h2up.New(h2up.Config{OnPanic: func(v any) { panics <- v }, Dial: func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return panicReadConn{c, &armed}, nil
	}})
	defer pool.Close()
	get := func() error {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		resp, err := pool.RoundTrip(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err == nil && string(b) != "ok" {
			err = fmt.Errorf("answer %q", b)
		}
		return err
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	if err := get(); err == nil || !strings.Contains(err.Error(), "read loop panicked") {
		t.Fatalf("request on the connection whose read loop panicked: %v", err)
	}
	select {
	case v := <-panics:
		if !strings.Contains(fmt.Sprint(v), "read loop") {
			t.Fatalf("OnPanic got %v", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnPanic not called")
	}
	if err := get(); err != nil {
		t.Fatalf("after the panic: %v", err)
	}
	if n := dials.Load(); n != 2 {
		t.Errorf("%d dials, want 2", n)
	}
}

// startDrainServer starts an h2c server on loopback that reads a
// request's body to its end and answers "ok", and returns a dialer aimed
// at it.
func startDrainServer(t *testing.T) *dialer {
	t.Helper()
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	d := &dialer{}
	d.target.Store(ln.Addr().String())
	return d
}

// waitStreamsClosed waits up to 5 s for the pool's connection to hold no
// open stream.
func waitStreamsClosed(t *testing.T, pool *h2up.Pool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, _ := h2up.Buffered(pool)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d streams still open on the connection after the panic, want 0", n)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
	}
}

// getOKFrom sends a GET to addr through pool and wants "ok" back.
func getOKFrom(t *testing.T, pool *h2up.Pool, addr string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" || err != nil {
		t.Fatalf("answer %q %v", b, err)
	}
}
