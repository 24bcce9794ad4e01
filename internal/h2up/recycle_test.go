package h2up_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// TestRecycledMapsKeepValues: maps given back by Recycle serve later
// responses (of this connection, here) cleared, and the values a caller
// kept from a recycled response (the agent keeps the slices in its
// client's header) stay what they were while later responses fill the
// maps again.
func TestRecycledMapsKeepValues(t *testing.T) {
	addr := serveRawOnce(t, func(c net.Conn, fr *http2.Framer) {
		n := 0
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if f, ok := f.(*http2.MetaHeadersFrame); ok {
				n++
				v := strconv.Itoa(n)
				// Every other response has a key the others lack: a
				// recycled map must not bring it along.
				fields := []string{":status", "200", "x-n", v, "x-b", "b" + v}
				if n%2 == 0 {
					fields = append(fields, "x-even", v)
				}
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, EndHeaders: true, BlockFragment: headerBlock(fields...)})
				fr.WriteData(f.StreamID, false, []byte("body"))
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, EndHeaders: true, EndStream: true,
					BlockFragment: headerBlock("grpc-status", v)})
			}
		}
	})
	pool := h2up.New(h2up.Config{Dial: dialTo(addr)})
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type kept struct{ n, b, status []string }
	var all []kept
	for i := 1; i <= 50; i++ {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
		resp, err := pool.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := resp.Header["X-Even"]; ok != (i%2 == 0) {
			t.Fatalf("response %d: X-Even present %v (header %v)", i, ok, resp.Header)
		}
		if len(resp.Header) != 2+(1-i%2) {
			t.Fatalf("response %d: header %v", i, resp.Header)
		}
		if _, err := io.ReadAll(resp.Body); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if len(resp.Trailer) != 1 {
			t.Fatalf("response %d: trailer %v", i, resp.Trailer)
		}
		all = append(all, kept{resp.Header["X-N"], resp.Header["X-B"], resp.Trailer["Grpc-Status"]})
		h2up.Recycle(resp)
		if resp.Header != nil || resp.Trailer != nil {
			t.Fatalf("Recycle left the response's maps set")
		}
	}
	for i, k := range all {
		v := strconv.Itoa(i + 1)
		if got := fmt.Sprint(k.n, k.b, k.status); got != fmt.Sprintf("[%s] [b%s] [%s]", v, v, v) {
			t.Errorf("response %d: kept values %s after later responses", i+1, got)
		}
	}
}
