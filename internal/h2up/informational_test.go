package h2up_test

import (
	"bytes"
	"context"
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

// TestEndlessInformationalResponses: a server that answers a request with
// 1xx responses and never a final one. x/net's transport bounds the 1xx
// header blocks of a response by its header list limit and then fails the
// request; h2up dropped each one and waited on for ever, with the server
// free to keep it decoding (a request stuck and CPU spent per byte).
func TestEndlessInformationalResponses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sent := make(chan int, 1)
	go func() {
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
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if f, ok := f.(*http2.MetaHeadersFrame); ok {
				// 1000 blocks of 16 KiB: 16 MiB, past the 10 MiB limit.
				n := 0
				for ; n < 1000; n++ {
					block.Reset()
					enc.WriteField(hpack.HeaderField{Name: ":status", Value: "103"})
					enc.WriteField(hpack.HeaderField{Name: "link", Value: strings.Repeat("x", 16000)})
					if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: block.Bytes(), EndHeaders: true}) != nil {
						break
					}
				}
				sent <- n
				io.Copy(io.Discard, c)
				return
			}
		}
	}()
	pool := h2up.New(h2up.Config{Dial: dialTo(ln.Addr().String())})
	defer pool.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
	done := make(chan error, 1)
	go func() {
		resp, err := pool.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a response came from a server that sent none")
		}
		t.Logf("request failed: %v", err)
	case <-time.After(10 * time.Second):
		n := 0
		select {
		case n = <-sent:
		default:
		}
		t.Fatalf("request still waiting 10 s after %d informational responses of 16 KiB", n)
	}
}
