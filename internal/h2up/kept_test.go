package h2up_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// TestInterleavedStreamsKeepTheirOwn: the read loop's one DATA frame
// (SetReuseFrames) and the values kept in each stream's allocation (small
// header and trailer blocks, a body's first 64 bytes) stay each stream's:
// the server interleaves the DATA frames of several streams, each with a
// small header, trailer and body of its own, and every response kept by
// the caller still reads as its stream sent it after the others came in.
func TestInterleavedStreamsKeepTheirOwn(t *testing.T) {
	const n = 6
	addr := serveRawOnce(t, func(c net.Conn, fr *http2.Framer) {
		var ids []uint32
		for len(ids) < n {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if f, ok := f.(*http2.MetaHeadersFrame); ok {
				ids = append(ids, f.StreamID)
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, EndHeaders: true,
					BlockFragment: headerBlock(":status", "200", "x-id", fmt.Sprint(f.StreamID))})
			}
		}
		// Each stream's body in parts, the streams' parts interleaved:
		// 3 parts of 30 bytes (past the first 64).
		for part := range 3 {
			for _, id := range ids {
				fr.WriteData(id, false, []byte(fmt.Sprintf("%02d-%d-%s", id, part, strings.Repeat(fmt.Sprint(id%10), 25))))
			}
		}
		for _, id := range ids {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: true,
				BlockFragment: headerBlock("grpc-status", fmt.Sprint(id), "t-id", fmt.Sprint(id))})
		}
		io.Copy(io.Discard, c)
	})
	pool := h2up.New(h2up.Config{Dial: dialTo(addr)})
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type kept struct {
		resp *http.Response
		body string
		err  error
	}
	got := make([]kept, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
			resp, err := pool.RoundTrip(req)
			if err != nil {
				got[i].err = err
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			got[i] = kept{resp, string(b), err}
		}()
	}
	wg.Wait()
	for i, k := range got {
		if k.err != nil {
			t.Fatalf("request %d: %v", i, k.err)
		}
		id := k.resp.Header.Get("X-Id")
		var want strings.Builder
		for part := range 3 {
			var idn int
			fmt.Sscan(id, &idn)
			fmt.Fprintf(&want, "%02d-%d-%s", idn, part, strings.Repeat(fmt.Sprint(idn%10), 25))
		}
		if k.body != want.String() {
			t.Errorf("stream %s: body %q, want %q", id, k.body, want.String())
		}
		if g, tr := k.resp.Trailer.Get("Grpc-Status"), k.resp.Trailer.Get("T-Id"); g != id || tr != id {
			t.Errorf("stream %s: trailers grpc-status %q t-id %q", id, g, tr)
		}
	}
}
