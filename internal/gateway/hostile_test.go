package gateway

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"
)

// TestGatewayRefusedBodyNotAwaited: a refused request that declares a
// body it never sends does not hold its connection (and a goroutine of
// the gateway's) open: the gateway answers and hangs up, with no slot
// or per-client bound to stop a host of the site opening such
// connections without end.
func TestGatewayRefusedBodyNotAwaited(t *testing.T) {
	allowed, other := echo(t), echo(t)
	_, gw := startGateway(t, Config{Allow: []string{allowed}})
	for _, raw := range []string{
		"GET / HTTP/1.1\r\nHost: " + allowed + "\r\nContent-Length: 1000\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: " + allowed + "\r\nTransfer-Encoding: chunked\r\n\r\n",
		"CONNECT " + other + " HTTP/1.1\r\nHost: " + other + "\r\nContent-Length: 1000\r\n\r\n",
	} {
		c, err := net.Dial("tcp", gw)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%.30q: %v", raw, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatalf("%.30q: forwarded", raw)
		}
		if _, err := br.ReadByte(); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%.30q: answered %d, then the connection stayed open waiting for the body", raw, resp.StatusCode)
		}
	}
}
