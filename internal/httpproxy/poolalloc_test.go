package httpproxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
)

// startRawUpstream answers every request head it reads (no bodies) with a
// canned 200 and allocates nothing per request, so AllocsPerRun over a
// pool's round trip counts the pool's allocations and net/http's parse.
func startRawUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadSlice('\n')
					if err != nil {
						return
					}
					if len(line) <= 2 { // the blank line that ends a head
						if _, err := c.Write(resp); err != nil {
							return
						}
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// poolRoundTripAllocs is the allocations of one request and its response
// body over a warm pooled connection, with req's context.
func poolRoundTripAllocs(t *testing.T, p *Pool, req *http.Request) float64 {
	t.Helper()
	var buf [64]byte
	rt := func() {
		resp, err := p.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		for {
			if _, err := resp.Body.Read(buf[:]); err == io.EOF {
				break
			} else if err != nil {
				t.Fatal(err)
			}
		}
		resp.Body.Close()
	}
	rt() // dial
	return testing.AllocsPerRun(200, rt)
}

// TestPoolCancelWatchAllocs: a request whose context can be cancelled
// (every request of the fast path: its client connection's) costs the
// pool only context.AfterFunc's registration over one that cannot be,
// not a closure per request as well.
func TestPoolCancelWatchAllocs(t *testing.T) {
	addr := startRawUpstream(t)
	p := NewPool(PoolConfig{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}})
	defer p.Close(true)
	plain, _ := http.NewRequest("GET", "http://svc/x", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cancellable := plain.WithContext(ctx)
	base := poolRoundTripAllocs(t, p, plain)
	watched := poolRoundTripAllocs(t, p, cancellable)
	if d := watched - base; d > 2.5 {
		t.Errorf("a cancellable context costs %.1f more allocations per request (%.1f, %.1f without); want at most 2 (context.AfterFunc's own: its context and its stop function)", d, watched, base)
	}
	t.Logf("%.1f allocations per request, %.1f with a cancellable context", base, watched)
}

// TestPoolStreamCancelAllocs: a request with a WithStreamCancel context
// whose small body came with its header costs the pool no hook at all.
func TestPoolStreamCancelAllocs(t *testing.T) {
	addr := startRawUpstream(t)
	p := NewPool(PoolConfig{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}})
	defer p.Close(true)
	plain, _ := http.NewRequest("GET", "http://svc/x", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	marked := plain.WithContext(WithStreamCancel(ctx))
	base := poolRoundTripAllocs(t, p, plain)
	if got := poolRoundTripAllocs(t, p, marked); got-base > 0.5 {
		t.Errorf("%.1f allocations per request with a WithStreamCancel context, %.1f without one; want no more", got, base)
	}
}
