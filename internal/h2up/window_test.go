package h2up_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestUnreadResponseHoldsAtMostItsWindow: a response nobody reads (the
// agent's client stopped reading) holds at most the stream's receive
// window in the agent, 1 MiB. It was 4 MiB, and the agent's HTTP/2
// server lets one client open 250 streams (1 GiB held for one client
// connection, measured through h2srv). 1 MiB is the mesh stream's window
// (MeshStreamWindow), which bounds a remote endpoint's throughput anyway,
// and far above a local endpoint's bandwidth-delay product.
func TestUnreadResponseHoldsAtMostItsWindow(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sent := make(chan int64, 1)
	go serveUntilBlocked(ln, 8<<20, sent)
	pool := h2up.New(h2up.Config{Dial: dialTo(ln.Addr().String())})
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/big", nil)
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var n int64
	select {
	case n = <-sent:
	case <-ctx.Done():
		t.Fatal("the server never ran out of window")
	}
	testenv.WaitFor(t, 10*time.Second, "the bytes sent to arrive", func() bool {
		_, b := h2up.Buffered(pool)
		return int64(b) == n
	})
	if n > 1<<20 {
		t.Fatalf("a response nobody reads holds %d KiB in the agent, want at most 1024", n>>10)
	}
	// Reading it lets the rest come.
	if got, err := io.Copy(io.Discard, resp.Body); err != nil || got != 8<<20 {
		t.Fatalf("read %d bytes, %v; want the 8 MiB", got, err)
	}
}

// serveUntilBlocked answers one request with size bytes, sending DATA only
// within the client's windows; the first time the windows let nothing more
// go it sends what it sent so far to blocked, then goes on as
// WINDOW_UPDATEs come.
func serveUntilBlocked(ln net.Listener, size int64, blocked chan<- int64) {
	c, err := ln.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	fr, err := serverFramer(c)
	if err != nil {
		return
	}
	fr.WriteSettings()
	connWin, streamWin := int64(65535), int64(65535)
	var id uint32
	var sent int64
	reported := false
	chunk := make([]byte, 16<<10)
	for {
		for id != 0 && sent < size && connWin > 0 && streamWin > 0 {
			k := min(int64(len(chunk)), connWin, streamWin, size-sent)
			fr.WriteData(id, sent+k == size, chunk[:k])
			sent += k
			connWin -= k
			streamWin -= k
		}
		if id != 0 && sent < size && !reported {
			reported = true
			blocked <- sent
		}
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				break
			}
			if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
				streamWin += int64(v) - 65535
			}
			fr.WriteSettingsAck()
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connWin += int64(f.Increment)
			} else {
				streamWin += int64(f.Increment)
			}
		case *http2.MetaHeadersFrame:
			id = f.StreamID
			var hb bytesBuffer
			hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb, EndHeaders: true})
		}
	}
}
