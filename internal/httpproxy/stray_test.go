package httpproxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
)

// TestPoolUnsolicitedResponse: bytes an endpoint sends on an idle
// pooled connection (a duplicate response, a body longer than its
// Content-Length) were read as the response to the next request sent on
// it, possibly another client's, unless the connection had idled for a
// second. Every reuse is checked now (one MSG_PEEK), as net/http's
// Transport, HAProxy and nginx close an idle connection that gets bytes
// nobody asked for.
func TestPoolUnsolicitedResponse(t *testing.T) {
	roundTrip := func(t *testing.T, rt http.RoundTripper, addr string) string {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		resp, err := rt.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return string(b)
	}
	t.Run("pool", func(t *testing.T) {
		addr, stray, wrote, _ := strayUpstream(t)
		p := poolTo(addr)
		defer p.Close(true)
		if got := roundTrip(t, p, addr); got != "ok" {
			t.Fatalf("first: %q", got)
		}
		close(stray)
		<-wrote // on loopback, in the pool connection's receive buffer once written
		if got := roundTrip(t, p, addr); got != "ok" {
			t.Fatalf("second request got %q: the endpoint's unsolicited response", got)
		}
	})
}

// strayUpstream answers its first request with "ok", then (once told)
// writes a second, unsolicited response on the same connection: an
// endpoint bug, or a server's 408 on an idle connection. It reports when
// its side of that connection sees a close (closedCh).
func strayUpstream(t *testing.T) (addr string, stray chan struct{}, wrote, closedCh chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	stray, wrote, closedCh = make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		first := true
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn, first bool) {
				defer c.Close()
				br := bufio.NewReader(c)
				for i := 0; ; i++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						if first {
							close(closedCh)
						}
						return
					}
					io.Copy(io.Discard, req.Body)
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					if first && i == 0 {
						<-stray
						io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
						close(wrote)
					}
				}
			}(c, first)
			first = false
		}
	}()
	return ln.Addr().String(), stray, wrote, closedCh
}
