package h2up_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// TestPoolPanicWhilePicking: a panic while the pool reserves a stream
// slot (its lock held: a bug in a connection's reserve) or in its Dial
// fails that request only: the next request of the endpoint is served,
// where the lock left held (or the dial left announced) hung every later
// one.
func TestPoolPanicWhilePicking(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	var dialPanics atomic.Int32
	pool := h2up.New(h2up.Config{Dial: func(ctx context.Context) (net.Conn, error) {
		if dialPanics.Add(-1) >= 0 {
			panic("dial")
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ln.Addr().String())
	}})
	defer pool.Close()
	var reservePanics atomic.Int32
	defer h2up.SetReserveHook(func() {
		if reservePanics.Add(-1) >= 0 {
			panic("reserve")
		}
	})()

	get := func() (body string, panicked any) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer func() { panicked = recover() }()
			req, _ := http.NewRequest("GET", "http://x/", nil)
			resp, err := pool.RoundTrip(req)
			if err != nil {
				body = err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
		}()
		select {
		case <-done:
			return body, panicked
		case <-time.After(10 * time.Second):
			t.Fatal("the request hung: the pool's lock (or its dial) was left held by the panic before")
			return "", nil
		}
	}
	for _, step := range []struct {
		what           string
		dial, reserve  int32
		panic, wantOut string
	}{
		{"the dial panics", 1, 0, "dial", ""},
		{"then a request", 0, 0, "", "ok"},
		{"the reservation on the pooled connection panics", 0, 1, "reserve", ""},
		{"then a request", 0, 0, "", "ok"},
	} {
		dialPanics.Store(step.dial)
		reservePanics.Store(step.reserve)
		out, p := get()
		if step.panic != "" {
			if p != step.panic {
				t.Fatalf("%s: panic %v, want %q", step.what, p, step.panic)
			}
			continue
		}
		if p != nil || out != step.wantOut {
			t.Fatalf("%s: %q, panic %v; want %q", step.what, out, p, step.wantOut)
		}
	}
}
