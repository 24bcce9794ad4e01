package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/tracing/otlptest"
)

// panicSecondConn panics on its second write larger than 4 KiB (a
// response body's bytes, the head gone out before it), then writes on: a
// bug in the writing of a response after its head reached the client.
type panicSecondConn struct {
	net.Conn
	large int
}

func (c *panicSecondConn) Write(p []byte) (int, error) {
	if len(p) > 4<<10 {
		if c.large++; c.large == 2 {
			panic("test: a bug while writing a response's body")
		}
	}
	return c.Conn.Write(p)
}

// TestPanicAfterHeadRecord: a fast-path request whose response panics
// after its 200 head went out to the client (it read 200 OK, then the
// connection's close) is recorded with the status the client saw, 200,
// and the panic as its error (access log and span), not as a 500 the
// client never saw; once, and what it held is given back.
func TestPanicAfterHeadRecord(t *testing.T) {
	a, logPath, recv := panicObsAgent(t)
	const vip = "127.75.0.1:19751"
	c, sc := loopbackPair(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer a.recoverConn(sc)
		a.handleConn(context.Background(), netip.MustParseAddrPort(vip), &panicSecondConn{Conn: sc})
	}()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	const path = "/big/sent"
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: po.demo\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no head before the panic: %v", err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("head %s, want 200", resp.Status)
	}
	if b, err := io.ReadAll(resp.Body); err == nil && len(b) == 1<<20 {
		t.Fatal("the whole response of the request that panicked")
	}
	c.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection still served")
	}
	const want = "panic: test: a bug while writing a response's body"
	var lines []map[string]any
	waitFor(t, "the access-log line", func() bool {
		lines = lines[:0]
		for _, l := range readLog(t, logPath) {
			if l["path"] == path {
				lines = append(lines, l)
			}
		}
		return len(lines) > 0
	})
	if l := lines[0]; len(lines) != 1 || l["status"] != 200.0 || l["error"] != want {
		t.Errorf("access-log lines %v; want one, status 200, error %q", lines, want)
	}
	spans := recv.WaitFor(t, 10*time.Second, func(s []otlptest.Span) bool {
		for _, sp := range s {
			if sp.Attr("url.path") == path {
				return true
			}
		}
		return false
	})
	for _, sp := range spans {
		if sp.Attr("url.path") == path && (sp.Attr("http.response.status_code") != "200" || sp.Status.GetCode() != 2 || sp.Status.GetMessage() != want) {
			t.Errorf("span: status code %q, status %v; want 200, an error with the panic", sp.Attr("http.response.status_code"), sp.Status)
		}
	}
	holdsNothing(t, a)
}
