package h2up_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestServerAllowingNoStreams: a server that says SETTINGS_MAX_CONCURRENT_STREAMS
// 0 (RFC 9113 §6.5.2 allows it: no new streams for now) and refuses what
// comes anyway. Every request fails as refused, and the pool does not keep
// the connections it cannot use: it kept each one for its idle timeout
// (90 s), so every request left a connection open behind it, and a busy
// client's requests ran the agent out of file descriptors.
func TestServerAllowingNoStreams(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var open atomic.Int32 // connections the server holds
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			open.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer open.Add(-1)
				defer c.Close()
				serveNoStreams(c)
			}()
		}
	}()
	pool := h2up.New(h2up.Config{Dial: dialTo(ln.Addr().String())})
	defer pool.Close()
	const requests = 20
	for range requests {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
		resp, err := pool.RoundTrip(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			t.Fatal("a request succeeded on a server that takes no streams")
		}
	}
	// The connections the pool cannot use close.
	testenv.WaitFor(t, 5*time.Second, fmt.Sprintf("at most 1 of the connections of %d refused requests left open", requests),
		func() bool { return open.Load() <= 1 })
}

// serveNoStreams: SETTINGS with MAX_CONCURRENT_STREAMS 0 at once, then
// REFUSED_STREAM for every stream, until the client closes.
func serveNoStreams(c net.Conn) {
	fr, err := serverFramer(c)
	if err != nil {
		return
	}
	fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 0})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
		}
	}
}
