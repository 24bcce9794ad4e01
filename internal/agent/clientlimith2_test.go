package agent

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestPerClientRequestCapH2: an HTTP/2 (prior knowledge) connection keeps
// its client's place in the per-client limiter while it is open, as a
// fast-path HTTP/1.1 connection does: with maxRequestsPerClient 3, its
// 4th concurrent stream gets 429, so does an HTTP/1.1 request from the
// same host meanwhile, another host is served, and once the streams end
// and the connection closes the limiter keeps no entry for the client.
func TestPerClientRequestCapH2(t *testing.T) {
	a, _, addr, release := perClientCapAgent(t, "pch", 19438, 209)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.3")}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	h2 := &http.Client{Timeout: 10 * time.Second, Transport: cc}
	var streams []*http.Response
	for range 3 {
		streams = append(streams, openStream(t, h2, "http://"+addr))
	}
	defer func() {
		for _, r := range streams {
			r.Body.Close()
		}
	}()
	if code, _ := getStatus(t, h2, "http://"+addr+"/ok", ""); code != http.StatusTooManyRequests {
		t.Fatalf("a 4th stream on a connection holding 3 (its client's cap): %d; want 429", code)
	}
	h1 := func(src string) int { // one request on a connection of its own
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		tr := &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		code, _ := getStatus(t, &http.Client{Timeout: 10 * time.Second, Transport: tr}, "http://"+addr+"/ok", "")
		return code
	}
	if code := h1("127.0.0.3"); code != http.StatusTooManyRequests {
		t.Fatalf("an HTTP/1.1 request from the same host meanwhile: %d; want 429", code)
	}
	if code := h1("127.0.0.4"); code != 200 {
		t.Fatalf("another client meanwhile: %d; want 200", code)
	}
	release()
	for _, r := range streams {
		if rest, err := io.ReadAll(r.Body); err != nil || string(rest) != "last\n" {
			t.Fatalf("rest of a stream: %q %v", rest, err)
		}
	}
	waitFor(t, "the connection served again", func() bool { code, _ := getStatus(t, h2, "http://"+addr+"/ok", ""); return code == 200 })
	cc.Shutdown(context.Background())
	c.Close()
	lim := &a.l7.clients
	waitFor(t, "no limiter entry once the connection is gone", func() bool {
		lim.mu.Lock()
		defer lim.mu.Unlock()
		return len(lim.n) == 0
	})
}
