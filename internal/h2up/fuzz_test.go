package h2up_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// FuzzServerBytes: whatever an endpoint sends after its SETTINGS, a
// request through the pool ends (a response, or an error) without a
// panic or a hang, and its body can be read to the end or an error.
func FuzzServerBytes(f *testing.F) {
	var hb []byte
	{
		var b bytesBuffer
		e := hpack.NewEncoder(&b)
		e.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
		hb = b
	}
	frame := func(typ http2.FrameType, flags http2.Flags, id uint32, payload []byte) []byte {
		n := len(payload)
		b := []byte{byte(n >> 16), byte(n >> 8), byte(n), byte(typ), byte(flags), byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id)}
		return append(b, payload...)
	}
	f.Add(frame(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersEndStream, 1, hb))
	f.Add(append(frame(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, hb), frame(http2.FrameData, http2.FlagDataEndStream, 1, []byte("ok"))...))
	f.Add(frame(http2.FrameRSTStream, 0, 1, []byte{0, 0, 0, 7}))
	f.Add(frame(http2.FrameGoAway, 0, 0, []byte{0, 0, 0, 0, 0, 0, 0, 0}))
	f.Add(frame(http2.FrameWindowUpdate, 0, 0, []byte{0x7f, 0xff, 0xff, 0xff}))
	f.Add(frame(http2.FrameData, 0, 1, []byte("early")))
	f.Add([]byte("garbage that is not a frame at all"))
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		defer server.Close()
		defer client.Close() // after pool.Close: a stream left open holds its connection
		go func() {
			br := bufio.NewReader(server)
			if _, err := io.ReadFull(br, make([]byte, len(http2.ClientPreface))); err != nil {
				return
			}
			go io.Copy(io.Discard, br) // the client's frames
			fr := http2.NewFramer(server, nil)
			fr.WriteSettings()
			server.Write(data)
			// Then the endpoint goes away: a request still waiting ends
			// with the connection (silence, which only the deadline ends,
			// made each input take 200 ms and the fuzzer crawl).
			server.Close()
		}()
		pool := h2up.New(h2up.Config{Dial: func(context.Context) (net.Conn, error) { return client, nil }, MaxStreams: 1})
		defer pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
		resp, err := pool.RoundTrip(req)
		if err != nil {
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	})
}
