package httpproxy

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// Bugs a review of session 19's own changes found: each test fails
// without its fix.

// TestRawIOStallWaitsOn: OnStall returning nil must let the Write
// wait on; a reader that pauses longer than StallAfter then reads
// everything must not fail the write.
func TestRawIOStallWaitsOn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		time.Sleep(300 * time.Millisecond) // a slow endpoint
		io.Copy(io.Discard, c)
	}()
	c, err := net.Dial("tcp", "127.0.0.1"+ln.Addr().String()[len("127.0.0.1"):])
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
