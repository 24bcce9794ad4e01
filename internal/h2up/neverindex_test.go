package h2up_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// TestCredentialsNeverIndexed: a request's authorization,
// proxy-authorization and short cookie reach the endpoint as never-indexed
// literals (RFC 7541 §7.1.3: an upstream connection carries many clients'
// requests, and a credential in its table could be guessed from header
// block sizes), the other fields as before (indexed).
func TestCredentialsNeverIndexed(t *testing.T) {
	fields := upstreamFields(t, func(h http.Header) {
		h.Set("Authorization", "Bearer secret-token-of-alice")
		h.Set("Proxy-Authorization", "Basic YWxpY2U6cHc=")
		h.Add("Cookie", "sid=a1b2c3")                                   // short: guessable
		h.Add("Cookie", "theme=dark-with-a-long-enough-value-to-index") // 20 bytes or more
		h.Set("X-Other", "plain")
	})
	want := map[string]bool{
		"authorization":       true,
		"proxy-authorization": true,
		"cookie=sid=a1b2c3":   true,
		"cookie=theme=dark-with-a-long-enough-value-to-index": false,
		"x-other": false,
	}
	seen := 0
	for _, f := range fields {
		key := f.Name
		if f.Name == "cookie" {
			key += "=" + f.Value
		}
		w, ok := want[key]
		if !ok {
			continue
		}
		seen++
		if f.Sensitive != w {
			t.Errorf("%s: never indexed %v, want %v", key, f.Sensitive, w)
		}
	}
	if seen != len(want) {
		t.Fatalf("the endpoint saw %d of the %d fields checked: %v", seen, len(want), fields)
	}
}

// TestCookieCrumbsNeverIndexed: a Cookie header of several pairs (as an
// HTTP/1.1 client sends it, and as h2srv joins an HTTP/2 client's crumbs)
// goes upstream one pair a field (RFC 9113 §8.2.3, as net/http's transport
// and nghttpx send it), so a short pair is never indexed however long the
// whole line. Before, the line went as one field of 20 bytes or more,
// indexed in the connection's table with the short session cookie in it:
// another client of the connection that knows the other pairs (a theme, a
// consent flag) guesses only that short one, as if it were alone.
func TestCookieCrumbsNeverIndexed(t *testing.T) {
	fields := upstreamFields(t, func(h http.Header) {
		h.Set("Cookie", "sid=a1b2c3; theme=dark-with-a-long-enough-value-to-index;  consent=1")
	})
	var cookies []hpack.HeaderField
	for _, f := range fields {
		if f.Name == "cookie" {
			cookies = append(cookies, f)
		}
	}
	want := []hpack.HeaderField{
		{Name: "cookie", Value: "sid=a1b2c3", Sensitive: true},
		{Name: "cookie", Value: "theme=dark-with-a-long-enough-value-to-index"},
		{Name: "cookie", Value: "consent=1", Sensitive: true},
	}
	if fmt.Sprint(cookies) != fmt.Sprint(want) {
		t.Fatalf("the endpoint saw the cookie fields %v, want %v", cookies, want)
	}
}

// upstreamFields sends one GET through a pool to a raw endpoint, its header
// set by set, and returns the fields the endpoint decoded (with their
// never-indexed flags).
func upstreamFields(t *testing.T, set func(http.Header)) []hpack.HeaderField {
	t.Helper()
	got := make(chan []hpack.HeaderField, 1)
	addr := serveRawOnce(t, func(c net.Conn, fr *http2.Framer) {
		h := firstHeaders(fr)
		if h == nil {
			return
		}
		got <- h.Fields
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.StreamID, BlockFragment: headerBlock(":status", "204"),
			EndStream: true, EndHeaders: true})
		firstHeaders(fr) // until the client closes
	})
	pool := h2up.New(h2up.Config{Dial: dialTo(addr)})
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc.demo/p", nil)
	set(req.Header)
	resp, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return <-got
}
