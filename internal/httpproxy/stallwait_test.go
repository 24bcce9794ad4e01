package httpproxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// Bugs a review of session 19's own changes found: each test fails
// without its fix.

// TestRawIOStallWaitsOn: OnStall returning nil must let the Write
// wait on; a reader that pauses longer than StallAfter then reads
// everything must not fail the write.
func TestRawIOStallWaitsOn(t *testing.T) {
	addr := testenv.AcceptOne(t, func(c net.Conn) {
		time.Sleep(300 * time.Millisecond) // a slow endpoint
		io.Copy(io.Discard, c)
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := NewRawIO(c)
	stalls := 0
	r.OnStall, r.StallAfter = func() error { stalls++; return nil }, 50*time.Millisecond
	buf := make([]byte, 32<<20)
	n, err := r.Write(buf)
	if err != nil {
		t.Fatalf("Write of %d bytes to a slow reader failed after %d bytes, %d stalls: %v", len(buf), n, stalls, err)
	}
	// And the next write is not failed by a deadline left set.
	if _, err := r.Write(buf[:1<<10]); err != nil {
		t.Fatalf("next Write: %v", err)
	}
}

// TestPoolSlowEndpointUpload: an endpoint that takes a moment
// before reading a large request body (and then reads it all) must get
// the request; the pool's stall hook must not fail it.
func TestPoolSlowEndpointUpload(t *testing.T) {
	const size = 32 << 20
	u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
		time.Sleep(500 * time.Millisecond) // busy before reading the body
		return countBody(c, req, 0)
	})
	p := u.pool(PoolConfig{})
	defer p.Close(true)
	req, _ := http.NewRequest("POST", "http://svc/upload", io.LimitReader(zeros{}, size))
	req.ContentLength = size
	resp, err := p.RoundTrip(req)
	if err != nil {
		t.Fatalf("upload to a slow endpoint failed: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != strconv.Itoa(size) {
		t.Fatalf("status %d body %q", resp.StatusCode, b)
	}
}

// countBody reads the rest of req's body and answers 200 with the length
// of the whole body, read bytes of it read already.
func countBody(c net.Conn, req *http.Request, read int64) bool {
	n, _ := io.Copy(io.Discard, req.Body)
	s := strconv.FormatInt(read+n, 10)
	io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(s))+"\r\n\r\n"+s)
	return true
}

// smallBuffers is the socket buffer size (each side) with which a body of
// a few MiB stalls the pool's writes as soon as the endpoint stops reading.
const smallBuffers = 64 << 10

// stallingPool is u's pool over connections with a small send buffer; the
// endpoint sets its receive buffer (smallBuffers).
func stallingPool(u *upstream) *Pool {
	addr := u.ln.Addr().String()
	return u.pool(PoolConfig{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.(*net.TCPConn).SetWriteBuffer(smallBuffers)
		}
		return c, err
	}})
}

// TestPoolInterimDuringUpload: an endpoint that sends interim responses
// (102 Processing while it works, 100 Continue, 103 Early Hints) as it
// reads a large request body slowly must get the whole body, and the
// client its final answer; the interim ones are dropped, as exchange drops
// those that come after the body. The stall hook took any bytes for an
// early answer and ended the upload ("the endpoint answered before it
// took the whole request: unexpected EOF").
func TestPoolInterimDuringUpload(t *testing.T) {
	const size, rounds = 8 << 20, 2
	for name, parts := range map[string][]string{
		"102":             {"HTTP/1.1 102 Processing\r\n\r\n"},
		"100":             {"HTTP/1.1 100 Continue\r\n\r\n"},
		"103 with fields": {"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nLink: </b.js>; rel=preload\r\n\r\n"},
		"two at once":     {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"},
		"102 in parts":    {"HTTP/1", ".1 10", "2 Processing\r", "\nX: y\r\n", "\r\n"}, // each part seen by a stall
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
				if req.Method == "GET" {
					return ok(c, req)
				}
				c.(*net.TCPConn).SetReadBuffer(smallBuffers)
				var n int64
				for range rounds {
					for _, part := range parts {
						io.WriteString(c, part)
						time.Sleep(3 * earlyResponseWait / 2) // not reading: the pool's write stalls
					}
					m, err := io.CopyN(io.Discard, req.Body, size/rounds)
					if n += m; err != nil {
						return false
					}
				}
				return countBody(c, req, n)
			})
			p := stallingPool(u)
			defer p.Close(true)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://svc/upload", io.LimitReader(zeros{}, size))
			req.ContentLength = size
			resp, err := p.RoundTrip(req)
			if err != nil {
				t.Fatalf("upload to an endpoint that sent %q while it read failed: %v", parts, err)
			}
			uploadedOnOneConn(t, p, u, resp, size)
		})
	}
}
