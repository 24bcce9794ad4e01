package httpproxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestTimedBodyDuplexExpectContinue: a request that waits for "100
// Continue" before its body, answered whole by the endpoint before any of
// the body was asked for (an early 413, 417, a redirect). net/http's
// server sends no 100 after a final answer and closes the connection
// after it (the answer says "Connection: close"), so the client never
// sends the body: TimedBody.Unanswered must not wait for it (one gap,
// here a minute), holding the handler and the connection. Nor for the
// rest of the body of a client that said "Connection: close" and stalls:
// the server closes after the answer whatever comes.
func TestTimedBodyDuplexExpectContinue(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { done <- struct{}{} }()
		tb := new(TimedBody)
		tb.InitH1(w, r)
		tb.Arm(time.Minute, 0)
		r = r.WithContext(r.Context()) // the copy: the server's request keeps its body (as the agent's handlers)
		r.Body = tb
		tb.Answered() // an endpoint's head, before the body was asked for
		w.Header().Set("Content-Length", "2")
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		io.WriteString(w, "no")
		tb.Unanswered()
	})}
	go srv.Serve(ln)
	defer srv.Close()
	for _, tc := range []struct{ name, head string }{
		{"length", "POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"},
		{"chunked", "POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{"close", "POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nab"}, // and the rest never
	} {
		length := tc.name
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, tc.head)
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", length, err)
		}
		io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
			t.Errorf("%s: %s, close %t; want 413 and the connection's end", length, resp.Status, resp.Close)
		}
		// The client sends nothing more: the connection must end, and
		// the handler return, well before the body's gap.
		if _, err := br.ReadByte(); err != io.EOF {
			t.Errorf("%s: after the answer: %v, want the connection's end", length, err)
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the handler still waits for a body the client was never asked for", length)
		}
		c.Close()
	}
}
