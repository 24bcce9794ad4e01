package gateway

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
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

// TestNetworkBoundsGatewayAnswer: a gateway (or whoever answers at its
// address: it is not authenticated) that sends an endless answer head is
// cut off once the head passes its bound, rather than read into memory
// until the dial's deadline.
func TestNetworkBoundsGatewayAnswer(t *testing.T) {
	gw := testenv.AcceptOne(t, func(c net.Conn) {
		io.WriteString(c, "HTTP/1.1 200 Connection Established\r\nX-Pad: ")
		pad := make([]byte, 64<<10)
		for i := range pad {
			pad[i] = 'a'
		}
		for range 64 { // 4 MiB of one header line, then silence
			if _, err := c.Write(pad); err != nil {
				return
			}
		}
		io.Copy(io.Discard, c)
	})
	n := Network{Gateway: gw, Via: []string{"192.0.2.1:443"}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := n.Dial(ctx, "tcp", "192.0.2.1:443")
	if err == nil {
		c.Close()
		t.Fatal("an answer head without end was taken for a tunnel")
	}
	if errors.Is(err, os.ErrDeadlineExceeded) || ctx.Err() != nil {
		t.Fatalf("read the answer head until the dial's deadline: %v", err)
	}
	if !strings.Contains(err.Error(), "answer head over") {
		t.Fatalf("dial: %v, want the head's bound named", err)
	}
}

// TestGatewayRefusalLogBounded: what a refused client sent (its target,
// its method: each up to net/http's 1 MiB head) is logged cut short, so
// a client cannot make the gateway write a megabyte of log per request.
func TestGatewayRefusalLogBounded(t *testing.T) {
	allowed := echo(t)
	var logs testenv.Buffer
	_, gw := startGateway(t, Config{Allow: []string{allowed}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	long := strings.Repeat("a", 70000)
	for _, raw := range []string{
		"CONNECT " + long + ":1 HTTP/1.1\r\nHost: " + long + ":1\r\n\r\n",
		long + " / HTTP/1.1\r\nHost: " + allowed + "\r\n\r\n",
	} {
		c, err := net.Dial("tcp", gw)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, raw)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil || resp.StatusCode == http.StatusOK {
			t.Fatalf("%.20q: %v, %v", raw, resp, err)
		}
	}
	testenv.WaitFor(t, 5*time.Second, "two refusals logged", func() bool {
		return strings.Count(logs.String(), "gateway: refused") == 2
	})
	for _, line := range strings.Split(logs.String(), "\n") {
		if len(line) > 2048 {
			t.Errorf("a refusal logged in %d bytes: %.120s…", len(line), line)
		}
	}
}
