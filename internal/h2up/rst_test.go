package h2up_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// TestResetNoErrorAfterResponseKeepsBody: a server may answer in full
// and then reset the stream with NO_ERROR to stop the request body (RFC
// 9113 §8.1; grpc-go does, when a client has not half-closed by the time
// its handler is done). The response body must stay readable: it was
// dropped, and a gRPC client got a response without its message (io.EOF).
// The server here sends the response, the RST_STREAM and then a PING; the
// body is read once the PING was answered, so after the reset was taken.
func TestResetNoErrorAfterResponseKeepsBody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acked := make(chan error, 1)
	go func() { acked <- serveResetAfterResponse(ln, true) }()
	pool := h2up.New(h2up.Config{Dial: dialTo(ln.Addr().String())})
	defer pool.Close()
	pr, pw := io.Pipe() // a request body still open
	defer pw.Close()
	req, _ := http.NewRequest("POST", "http://x/echo", pr)
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	select {
	case err := <-acked:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server's PING was not answered")
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != "hello" || resp.Trailer.Get("X-Done") != "yes" {
		t.Fatalf("body %q, err %v, trailer %v", b, err, resp.Trailer)
	}
}

// serveResetAfterResponse answers the first request with "hello" and a
// trailer, resets the stream with NO_ERROR, pings, and returns once the
// PING is acknowledged. Its SETTINGS go first, or (settingsFirst false)
// with the response, so that no frame of its own makes the client flush.
func serveResetAfterResponse(ln net.Listener, settingsFirst bool) error {
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	defer c.Close()
	fr, err := serverFramer(c)
	if err != nil {
		return err
	}
	if settingsFirst {
		if err := fr.WriteSettings(); err != nil {
			return err
		}
	}
	var hbuf []byte
	enc := func(fields ...string) []byte {
		var b bytesBuffer
		e := hpack.NewEncoder(&b)
		for i := 0; i < len(fields); i += 2 {
			e.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return b
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			id := f.StreamID
			if !settingsFirst {
				fr.WriteSettings()
			}
			hbuf = enc(":status", "200", "content-type", "text/plain")
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hbuf, EndHeaders: true})
			fr.WriteData(id, false, []byte("hello"))
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc("x-done", "yes"), EndHeaders: true, EndStream: true})
			fr.WriteRSTStream(id, http2.ErrCodeNo)
			fr.WritePing(false, [8]byte{1})
		case *http2.PingFrame:
			if f.IsAck() {
				return nil
			}
		}
	}
}

type bytesBuffer []byte

func (b *bytesBuffer) Write(p []byte) (int, error) { *b = append(*b, p...); return len(p), nil }

// TestHeadersGoOutBeforeTheBody: a request's HEADERS wait for its first
// DATA frame (one write for both), but not for a body that has nothing to
// send yet: a server that answers first (here, on the HEADERS alone) gets
// them, and the response comes back while the body is still open.
func TestHeadersGoOutBeforeTheBody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveResetAfterResponse(ln, false) // nothing sent before the request's HEADERS
	pool := h2up.New(h2up.Config{Dial: dialTo(ln.Addr().String())})
	defer pool.Close()
	pr, pw := io.Pipe() // nothing written until the response is in
	defer pw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://x/first", pr)
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatalf("no response while the body waits: %v", err)
	}
	resp.Body.Close()
}

// TestHeaderListOverLimitIsRefused: a response header list over the 10
// MiB the client advertises is an error (the Framer ends the connection),
// not a response with some of its fields silently dropped.
func TestHeaderListOverLimitIsRefused(t *testing.T) {
	addr := serveRawOnce(t, func(_ net.Conn, fr *http2.Framer) {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if h, ok := f.(*http2.MetaHeadersFrame); ok {
				var b bytesBuffer
				e := hpack.NewEncoder(&b)
				e.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				big := strings.Repeat("x", 1<<20)
				for i := range 11 {
					e.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-big-%d", i), Value: big})
				}
				block := []byte(b)
				first := true
				for len(block) > 0 {
					n := min(len(block), 16384)
					if first {
						fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: block[:n], EndHeaders: n == len(block), EndStream: true})
						first = false
					} else {
						fr.WriteContinuation(h.StreamID, n == len(block), block[:n])
					}
					block = block[n:]
				}
			}
		}
	})
	pool := h2up.New(h2up.Config{Dial: dialTo(addr)})
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
	resp, err := pool.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("got a response with %d header fields", len(resp.Header))
	}
	t.Logf("oversize header list: %v", err)
}
