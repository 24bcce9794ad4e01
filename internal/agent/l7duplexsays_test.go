package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestDuplexEarlyAnswerSaysClose: on the net/http server paths (a head
// the fast path hands over, a peer's stream served per request), and on
// the fast path once it went full duplex (the client waits), an
// endpoint that answers a large upload at once without reading it (413,
// and "Connection: close", as net/http's server) has its answer say
// "Connection: close" too: the agent closes the connection after it (the
// body's rest is more than a drain takes). Full duplex had the answer go
// out without it (net/http's server adds it only when it drains the body
// itself), and a client sent its next request on a connection about to
// close.
func TestDuplexEarlyAnswerSaysClose(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "too big", http.StatusRequestEntityTooLarge) // the body unread
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	a := policedAgent(t, "dxc", 139, 19893, ln.Addr().(*net.TCPAddr).Port, "1s", "POST")
	vip := "127.139.0.1:19893"
	waitListening(t, vip)
	dialVIP := func() net.Conn {
		c, err := net.Dial("tcp", vip)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for _, tc := range []struct {
		name  string
		dial  func() net.Conn
		extra string
	}{
		{"fast", dialVIP, ""}, // the fast path, full duplex once the 413 came
		{"source", dialVIP, bigPad},
		{"authz", func() net.Conn { return peerStream(t, a, "dxc") }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.dial()
			c.SetDeadline(time.Now().Add(15 * time.Second))
			head := fmt.Sprintf("POST /big HTTP/1.1\r\nHost: dxc\r\n%sContent-Length: %d\r\n\r\n%s", tc.extra, 1<<20, strings.Repeat("b", 1024))
			if _, err := io.WriteString(c, head); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
				t.Fatalf("%s, Connection: close %v; want the endpoint's 413 saying the connection closes", resp.Status, resp.Close)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := br.ReadByte(); err == nil || strings.Contains(err.Error(), "timeout") {
				t.Fatalf("after the answer: %v, want the connection closed", err)
			}
		})
	}
}
