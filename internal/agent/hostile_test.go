package agent

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// silentBackend answers /ok and reads every other request without ever
// answering it; gone gets a value when the agent closes such a
// connection.
func silentBackend(t *testing.T) (port int, got, gone chan struct{}) {
	t.Helper()
	got, gone = make(chan struct{}, 64), make(chan struct{}, 64)
	addr := serveH1(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		if req.URL.Path == "/ok" {
			c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
			return true
		}
		io.Copy(io.Discard, req.Body)
		got <- struct{}{}
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := br.ReadByte(); err != nil && !isTimeout(err) {
			gone <- struct{}{} // the agent closed it
		}
		return false
	})
	return addr.Port, got, gone
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// A client that sends a request and goes away before the endpoint answers
// (which it never does) must not leave the request, its goroutine and both
// connections behind: net/http's server cancels the request's context when
// its background read sees the client close, Envoy resets the upstream
// request on a downstream disconnect. Without that, every client that gave
// up on a hung endpoint cost the agent a goroutine and two descriptors for
// good (services have no request timeout by default).
func TestH1ClientGoneBeforeResponseHead(t *testing.T) {
	port, got, gone := silentBackend(t)
	addr := agentInFront(t, inFront{node: "f", octet: 250, svc: "silent", vipPort: 19301, port: port,
		client: &http.Client{Timeout: 5 * time.Second}, ready: "/ok"}).addr

	for _, req := range []string{
		"GET /hang HTTP/1.1\r\nHost: silent\r\n\r\n",
		"POST /hang HTTP/1.1\r\nHost: silent\r\nContent-Length: 3\r\n\r\nabc",
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(req))
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			c.Close()
			t.Fatal("the request did not reach the endpoint")
		}
		c.Close() // the client gives up
		select {
		case <-gone:
		case <-time.After(5 * time.Second):
			t.Fatalf("%q: the upstream request outlived its client by 5 s", req[:4])
		}
	}
	testenv.WaitFor(t, 5*time.Second, "no request left open", func() bool { return len(gone) == 0 })
}
