package httpproxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestTimedBodyDuplexEnd pins what TimedBody.Unanswered relies on in
// net/http's HTTP/1 server after Answered made it full duplex: a body that
// ends after the whole answer keeps the connection for the next request,
// and one that fails (a request where its next chunk should be) closes the
// connection after the answer (closeAfterAnswer), where the server alone
// would read that request.
func TestTimedBodyDuplexEnd(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan string, 4)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served <- r.Method + " " + r.URL.Path
		tb := new(TimedBody)
		tb.InitH1(w, r)
		tb.Arm(time.Second, 0)
		r.Body = tb
		tb.Answered() // an endpoint's head: answered whole before the body is read
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "ok")
		tb.Unanswered()
	})}
	go srv.Serve(ln)
	defer srv.Close()
	for _, tc := range []struct {
		rest   string
		reused bool
	}{
		{"3\r\nabc\r\n0\r\n\r\n", true},
		{"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", false},
	} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		<-served
		io.WriteString(c, tc.rest+"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err = http.ReadResponse(br, nil)
		switch {
		case tc.reused && err != nil:
			t.Errorf("%q: the next request: %v", tc.rest, err)
		case !tc.reused && err == nil:
			t.Errorf("%q: what followed a failed body was read as a request: %s (handler ran %d more)", tc.rest, resp.Status, len(served))
		case !tc.reused && strings.Contains(err.Error(), "timeout"):
			t.Errorf("%q: the connection did not end: %v", tc.rest, err)
		}
		if tc.reused && err == nil {
			if got := <-served; got != "GET /next" {
				t.Errorf("%q: served %q next, want GET /next", tc.rest, got)
			}
		}
		c.Close()
	}
}
