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

	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestPingFloodWhileWriterStallsCut: the read loop goes on reading while
// a writer is blocked on an endpoint that stopped reading, its PING
// acknowledgements queued for the write lock. An endpoint that sends
// PINGs without reading their acknowledgements is cut once 10000 wait
// (as x/net/http2's server cuts one): the response it sends after 10001
// never reaches the caller, whose request fails with the connection;
// without the bound the queue grew with every PING.
func TestPingFloodWhileWriterStallsCut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.84.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	dialed := make(chan *stallConn, 1)
	// The read loop's GOAWAY on the way out does not wait for the write
	// lock (goAway): the cut fails the request, not the watchdog.
	pool := h2up.New(h2up.Config{StallTimeout: 3 * time.Second, Dial: func(ctx context.Context) (net.Conn, error) {
		c, err := dialTo(ln.Addr().String())(ctx)
		if err != nil {
			return nil, err
		}
		sc := &stallConn{Conn: c}
		dialed <- sc
		return sc, nil
	}})
	defer pool.Close()
	stalled := make(chan struct{})
	quit := make(chan struct{})
	srvDone := make(chan struct{})
	go func() {
		defer close(srvDone)
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		if _, err := io.ReadFull(br, make([]byte, len(http2.ClientPreface))); err != nil {
			return
		}
		fr := http2.NewFramer(c, br)
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
		fr.WriteWindowUpdate(0, 1<<31-1-65535)
		var id uint32
		for id == 0 {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if h, ok := f.(*http2.HeadersFrame); ok {
				id = h.StreamID
			}
		}
		select {
		case <-stalled:
		case <-quit:
			return
		}
		for i := range 10001 {
			if fr.WritePing(false, [8]byte{byte(i >> 8), byte(i)}) != nil {
				return
			}
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: headerBlock(":status", "200"), EndHeaders: true, EndStream: true})
		<-quit
	}()
	defer func() { close(quit); <-srvDone }()

	req, _ := http.NewRequest("POST", "http://x/upload", io.NopCloser(&zeros{}))
	got := make(chan error, 1)
	go func() {
		resp, err := pool.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		got <- err
	}()
	var sc *stallConn
	select {
	case sc = <-dialed:
	case <-time.After(10 * time.Second):
		t.Fatal("no connection dialed")
	}
	testenv.WaitFor(t, 10*time.Second, "the request body's write to block", func() bool {
		return sc.blockedFor() > 100*time.Millisecond
	})
	close(stalled)
	select {
	case err := <-got:
		if err == nil {
			t.Fatal("the response after 10001 unacknowledged PINGs reached the caller: the connection was not cut")
		}
		t.Logf("request: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not end 10 s after the PINGs")
	}
}
