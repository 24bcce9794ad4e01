package httpproxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// cutConn fails its writes once left bytes have gone through (the rest
// of the write that crosses it is not sent).
type cutConn struct {
	net.Conn
	mu   sync.Mutex
	left int
}

var errCut = errors.New("write cut")

func (c *cutConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(p) <= c.left {
		c.left -= len(p)
		return c.Conn.Write(p)
	}
	n, _ := c.Conn.Write(p[:c.left])
	c.left = 0
	return n, errCut
}

// TestPoolHeadWriteFails: a request whose head's write fails part way
// (headWriter: a head that fits the writer's free space, written at once,
// and one larger than the writer's whole buffer, flushed in the middle)
// fails, its connection is closed, not kept, and the next request goes
// on a new connection whole: the endpoint reads no half request followed
// by another (review h32/rev3 of 18535a2, issue 14).
func TestPoolHeadWriteFails(t *testing.T) {
	for _, fields := range []int{3, 3 * BufSize / 40} {
		var reqs atomic.Int64
		u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
			reqs.Add(1)
			if req.Header.Get("X-Last") != "end" {
				t.Errorf("%d fields: the endpoint read a request without its last field: %v", fields, req.Header)
			}
			return ok(c, req)
		})
		addr := u.ln.Addr().String()
		var dials atomic.Int64
		p := u.pool(PoolConfig{Dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil || dials.Add(1) > 1 {
				return c, err
			}
			return &cutConn{Conn: c, left: 60}, nil // the first connection's writes fail inside the head
		}})
		send := func() (*http.Response, error) {
			req, _ := http.NewRequest("GET", "http://svc/path", nil)
			for i := range fields {
				req.Header.Set("X-Field-"+strings.Repeat("f", i%7)+string(rune('a'+i%26))+string(rune('a'+i/26%26)), strings.Repeat("v", 20))
			}
			req.Header.Set("X-Last", "end")
			return p.RoundTrip(req)
		}
		if resp, err := send(); err == nil {
			resp.Body.Close()
			t.Fatalf("%d fields: a request whose head's write failed answered %d", fields, resp.StatusCode)
		}
		p.mu.Lock()
		idle := len(p.idle)
		p.mu.Unlock()
		if idle != 0 {
			t.Fatalf("%d fields: %d idle connections after a failed write, want 0", fields, idle)
		}
		resp, err := send()
		if err != nil {
			t.Fatalf("%d fields: the next request: %v", fields, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || dials.Load() != 2 || reqs.Load() != 1 {
			t.Fatalf("%d fields: %d after the failure, %d dials, %d requests at the endpoint; want 200, 2, 1", fields, resp.StatusCode, dials.Load(), reqs.Load())
		}
		p.Close(true)
	}
}
