package h2up_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// TestCancelWhileBodyWaits: a request without a body whose response body
// has not come yet: a cancellation while the caller waits on the body
// ends the read with the context's error and resets the stream (h2up
// watches the context only from the first read that waits).
func TestCancelWhileBodyWaits(t *testing.T) {
	pool, events := readyPool(t, 65535)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/stall", nil)
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	read := make(chan error, 1)
	go func() {
		_, err := resp.Body.Read(make([]byte, 8))
		read <- err
	}()
	cancel()
	select {
	case err := <-read:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("read %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the read still waits after the cancel")
	}
	if ev := nextEvent(t, events); ev.reset != http2.ErrCodeCancel {
		t.Fatalf("server saw reset %v, want CANCEL", ev.reset)
	}
}

// TestCancelBeforeResponse: a cancellation while the response has not
// come ends the round trip with the context's error and resets the
// stream.
func TestCancelBeforeResponse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	resets := make(chan http2.ErrCode, 1)
	headers := make(chan struct{}, 1)
	go func() { // reads the request, never answers it
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		if _, err := io.ReadFull(br, make([]byte, len(http2.ClientPreface))); err != nil {
			return
		}
		fr := http2.NewFramer(c, br)
		fr.WriteSettings()
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.HeadersFrame:
				headers <- struct{}{}
			case *http2.RSTStreamFrame:
				resets <- f.ErrCode
			}
		}
	}()
	pool := h2up.New(h2up.Config{Dial: dialTo(ln.Addr().String())})
	defer pool.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-headers:
			cancel()
		case <-time.After(10 * time.Second):
		}
	}()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
	if _, err := pool.RoundTrip(req); !errors.Is(err, context.Canceled) {
		t.Fatalf("round trip %v, want context.Canceled", err)
	}
	select {
	case code := <-resets:
		if code != http2.ErrCodeCancel {
			t.Fatalf("reset %v, want CANCEL", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no RST_STREAM after the cancel")
	}
}
