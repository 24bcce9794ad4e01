package h2up_test

import (
	"io"
	"net"
	"net/http"
	"testing"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// BenchmarkLargeResponse: one 64 MiB response from x/net's HTTP/2 server
// over loopback, read as it comes: the stream window's cost to a local
// endpoint's bulk rate (the window grows from 64 KiB to 1 MiB).
func BenchmarkLargeResponse(b *testing.B) { benchLargeResponse(b) }

// BenchmarkLargeResponseNoGrowth: the same with the process's window
// budget spent, so that the stream keeps its initial 64 KiB window.
func BenchmarkLargeResponseNoGrowth(b *testing.B) {
	defer h2up.SetWindowBudget(0)()
	benchLargeResponse(b)
}

func benchLargeResponse(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	chunk := make([]byte, 64<<10)
	const size = 64 << 20
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	srv := &http2.Server{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go srv.ServeConn(c, &http2.ServeConnOpts{Handler: h})
		}
	}()
	pool := h2up.New(h2up.Config{Dial: dialTo(ln.Addr().String())})
	defer pool.Close()
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		req, _ := http.NewRequest("GET", "http://x/big", nil)
		resp, err := pool.RoundTrip(req)
		if err != nil {
			b.Fatal(err)
		}
		if n, err := io.Copy(io.Discard, resp.Body); err != nil || n != size {
			b.Fatalf("read %d, %v", n, err)
		}
		resp.Body.Close()
	}
}
