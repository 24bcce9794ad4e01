package h2up_test

import (
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/fogmesh/fogmesh/internal/h2srv"
	"github.com/fogmesh/fogmesh/internal/h2up"
)

// TestDataAndEndSeenTogether: when a response's last DATA frame and its
// trailers arrive together (one write of the server's), the body's reader
// is woken after both were taken: its first read finds the response ended
// (UpstreamEnded), so the agent's server sends the message and the
// trailers in one write too.
func TestDataAndEndSeenTogether(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv := &h2srv.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		io.WriteString(w, "\x00\x00\x00\x00\x02hi") // HEADERS, DATA and trailers leave in one write
		w.Header().Set(http.TrailerPrefix+"Grpc-Status", "0")
	})}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go srv.ServeConn(c, h2srv.ConnOptions{})
		}
	}()
	defer srv.Close()
	pool := h2up.New(h2up.Config{Dial: dialTo(ln.Addr().String())})
	defer pool.Close()
	for i := range 100 {
		req, _ := http.NewRequest("POST", "http://"+ln.Addr().String()+"/s/M", nil)
		resp, err := pool.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		var b [16]byte
		n, _ := resp.Body.Read(b[:])
		ended := resp.Body.(interface{ UpstreamEnded() bool }).UpstreamEnded()
		rest, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if n+len(rest) != 7 || resp.Trailer.Get("Grpc-Status") != "0" {
			t.Fatalf("call %d: %d bytes, trailer %v", i, n+len(rest), resp.Trailer)
		}
		if !ended {
			t.Fatalf("call %d: the first read returned before the response's end was taken", i)
		}
	}
}
