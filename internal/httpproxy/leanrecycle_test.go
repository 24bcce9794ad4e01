package httpproxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// leanRead parses head with LeanRequest over hb.
func leanRead(t *testing.T, hb *HeaderBuf, head string) *http.Request {
	t.Helper()
	br := bufio.NewReaderSize(strings.NewReader(head), BufSize)
	br.Peek(1)
	req := LeanRequest(context.Background(), br, hb)
	if req == nil {
		t.Fatalf("declined %q", head)
	}
	return req
}

func mapOf(h http.Header) uintptr { return uintptr(reflect.ValueOf(h).UnsafePointer()) }

// TestHeaderBufRecycle: after Recycle the next request is the last one's
// leanReq and its header the last one's map, holding only its own fields
// (none of the last request's, nor what was added to it on its way) and
// its own target; after Done both are new, and the request left to its
// holders keeps its fields; a map that grew past maxSpareFields is not
// kept.
func TestHeaderBufRecycle(t *testing.T) {
	var hb HeaderBuf
	first := leanRead(t, &hb, "GET /1?q=1 HTTP/1.1\r\nHost: a\r\nX-First: 1\r\nAccept: */*\r\nX-Also: 1\r\nConnection: close\r\n\r\n")
	first.RemoteAddr, first.URL.Host = "c:1", "a"    // as the fast path sets them
	first.Header["X-Added"] = []string{"on its way"} // as the proxy adds X-Forwarded-For
	m := mapOf(first.Header)
	hb.Recycle()
	second := leanRead(t, &hb, "GET /2 HTTP/1.1\r\nHost: b\r\nAccept: text/html\r\n\r\n")
	if mapOf(second.Header) != m {
		t.Errorf("the recycled map was not reused")
	}
	if want := (http.Header{"Accept": {"text/html"}}); !reflect.DeepEqual(second.Header, want) {
		t.Errorf("the second request's header is %v, want %v", second.Header, want)
	}
	if second != first {
		t.Errorf("the recycled request was not reused")
	}
	if second.Host != "b" || second.URL.Path != "/2" || second.URL.RawQuery != "" || second.URL.Host != "" || second.RemoteAddr != "" ||
		second.Close || second.RequestURI != "/2" {
		t.Errorf("second request: host %q, URL %#v, remote %q, close %t, target %q", second.Host, second.URL, second.RemoteAddr, second.Close, second.RequestURI)
	}

	// Done: the header is left to whoever holds it.
	hb.Done()
	third := leanRead(t, &hb, "GET /3 HTTP/1.1\r\nHost: c\r\nX-Third: 3\r\n\r\n")
	if mapOf(third.Header) == m || third == second {
		t.Errorf("a request left to its holders (Done) was reused: header %t, request %t", mapOf(third.Header) == m, third == second)
	}
	if second.Host != "b" || second.URL.Path != "/2" || second.Method != "GET" {
		t.Errorf("the held request became %q %q %q", second.Method, second.Host, second.URL.Path)
	}
	if want := (http.Header{"Accept": {"text/html"}}); !reflect.DeepEqual(second.Header, want) {
		t.Errorf("the held header became %v, want %v", second.Header, want)
	}

	// A map grown past maxSpareFields goes to the collector.
	hb.Recycle()
	var big strings.Builder
	for i := range maxSpareFields + 1 {
		fmt.Fprintf(&big, "X-F%d: v\r\n", i)
	}
	fourth := leanRead(t, &hb, "GET /4 HTTP/1.1\r\nHost: d\r\n"+big.String()+"\r\n")
	if mapOf(fourth.Header) != mapOf(third.Header) || len(fourth.Header) != maxSpareFields+1 {
		t.Errorf("fourth: map reused %t, %d fields", mapOf(fourth.Header) == mapOf(third.Header), len(fourth.Header))
	}
	m4 := mapOf(fourth.Header)
	hb.Recycle() // fourth is the next request (its leanReq): its map is gone
	fifth := leanRead(t, &hb, "GET /5 HTTP/1.1\r\nHost: e\r\n\r\n")
	if mapOf(fifth.Header) == m4 {
		t.Errorf("a map of %d fields was kept", maxSpareFields+1)
	}
	if len(fifth.Header) != 0 {
		t.Errorf("fifth: %v", fifth.Header)
	}
}

// TestHeaderBufRecycleDeclined: a head LeanRequest declines after it took
// the map (a Content-Length) leaves nothing in it for the next request.
func TestHeaderBufRecycleDeclined(t *testing.T) {
	var hb HeaderBuf
	br := bufio.NewReaderSize(strings.NewReader("POST / HTTP/1.1\r\nHost: a\r\nX-Declined: 1\r\nContent-Length: 1\r\n\r\nx"), BufSize)
	br.Peek(1)
	if LeanRequest(context.Background(), br, &hb) != nil {
		t.Fatal("a head with a body taken")
	}
	hb.Recycle()
	req := leanRead(t, &hb, "GET / HTTP/1.1\r\nHost: a\r\nX-Next: 1\r\n\r\n")
	if want := (http.Header{"X-Next": {"1"}}); !reflect.DeepEqual(req.Header, want) {
		t.Errorf("header %v, want %v", req.Header, want)
	}
}

// TestHeaderBufRecycleResponse: a raw lean response written and closed
// (RecycleResponse with it) is the next request's, with its own status,
// fields, length and body; one not named (a retry's, or none) is not
// reused.
func TestHeaderBufRecycleResponse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		for n := 1; ; n++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			body := strings.Repeat("b", n)
			fmt.Fprintf(c, "HTTP/1.1 %d S%d\r\nX-Id-%d: %d\r\nContent-Length: %d\r\n\r\n%s", 200+10*n, n, n, n, len(body), body)
			req.Body.Close()
		}
	}()
	pool := NewPool(PoolConfig{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ln.Addr().String())
	}})
	defer pool.Close(true)
	var hb HeaderBuf
	req, _ := http.NewRequestWithContext(WithResponseHeaderBuf(context.Background(), &hb), "GET", "http://x/", nil)
	get := func(n int) *http.Response {
		t.Helper()
		resp, err := pool.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		id := fmt.Sprint(n)
		if err != nil || string(b) != strings.Repeat("b", n) || resp.StatusCode != 200+10*n || resp.Status != fmt.Sprintf("%d S%d", 200+10*n, n) ||
			ResponseField(resp, "X-Id-"+id) != id || ResponseField(resp, "X-Id-"+fmt.Sprint(n-1)) != "" {
			t.Fatalf("response %d: %q %v, status %q, fields %q", n, b, err, resp.Status, ResponseHeader(resp))
		}
		return resp
	}
	first := get(1)
	hb.RecycleResponse(first)
	second := get(2)
	if second != first {
		t.Errorf("the response written was not reused")
	}
	hb.RecycleResponse(nil) // no response written (an error answered)
	third := get(3)
	if third == second {
		t.Errorf("a response not written was reused")
	}
	kept := *third
	hb.RecycleResponse(&kept) // a copy written (a retry's kept answer): the original may be held
	if fourth := get(4); fourth == third {
		t.Errorf("a response other than the one written was reused")
	}
}

// TestHeaderBufRecycleAppend: a lean request's values are cut from one
// array (its leanReq's, reused by the next request on the connection
// after Recycle) with capacity 1 each, so a value added to a field (Add,
// append: X-Forwarded-For, a rule adding a value) is copied out, before
// and after the array's reuse: it never overwrites the next field's value
// (in this request, or in the next one), and the slice it made is not the
// next request's.
func TestHeaderBufRecycleAppend(t *testing.T) {
	var hb HeaderBuf
	heads := []string{
		"GET /1 HTTP/1.1\r\nHost: a\r\nX-A: a1\r\nX-B: b1\r\nX-C: c1\r\n\r\n",
		"GET /2 HTTP/1.1\r\nHost: a\r\nX-A: a2\r\nX-B: b2\r\nX-C: c2\r\n\r\n",
		"GET /3 HTTP/1.1\r\nHost: a\r\nX-A: a3\r\nX-B: b3\r\nX-C: c3\r\n\r\n",
	}
	var kept []string // what the first request's append made
	for i, head := range heads {
		req := leanRead(t, &hb, head)
		n := fmt.Sprint(i + 1)
		req.Header.Add("X-A", "added")
		bb := append(req.Header["X-B"], "appended")
		if i == 0 {
			kept = bb
		}
		want := http.Header{"X-A": {"a" + n, "added"}, "X-B": {"b" + n}, "X-C": {"c" + n}}
		if !reflect.DeepEqual(req.Header, want) {
			t.Errorf("request %d: header %v after appends, want %v", i+1, req.Header, want)
		}
		if want := []string{"b" + n, "appended"}; !reflect.DeepEqual(bb, want) {
			t.Errorf("request %d: appended slice %q, want %q", i+1, bb, want)
		}
		hb.Recycle()
	}
	if want := []string{"b1", "appended"}; !reflect.DeepEqual(kept, want) {
		t.Errorf("the first request's appended slice is %q after two reuses, want %q", kept, want)
	}
}
