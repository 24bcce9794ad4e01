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

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// The HTTP/1.1 fast path is full duplex once the endpoint's answer head
// has come: a client that waits for that head (and what the endpoint
// echoes of its body so far) before it sends the rest of the body gets
// them, rather than waiting until timeouts.requestBody (the fast path used
// to forward the whole body before it read the answer).

// startFastDuplexEcho serves testenv.DuplexEcho (a POST's first 5 bytes
// echoed at once, then the count it read; /early: those 5 bytes only) and
// returns its port.
func startFastDuplexEcho(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(testenv.DuplexEcho)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// TestFastDuplexChunkedEcho: a chunked POST through the fast path whose
// client sends a first chunk, waits for the response head and the echo
// of that chunk, then sends the rest; then the endpoint's early whole
// answer to a body whose rest comes after it (drained: the next request
// on the connection is served, not read from the body's tail).
func TestFastDuplexChunkedEcho(t *testing.T) {
	f := agentInFront(t, inFront{node: "fdx", octet: 137, svc: "fdx", vipPort: 19890, port: startFastDuplexEcho(t), noRequest: true})
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := 0; i < 2; i++ { // the second on the same connection (and upstream one, reused)
		c.SetDeadline(time.Now().Add(15 * time.Second))
		io.WriteString(c, "POST /echo HTTP/1.1\r\nHost: fdx\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: no response head before the body's rest (the fast path waits for the whole body first?): %v", i, err)
		}
		echo := make([]byte, 5)
		if _, err := io.ReadFull(resp.Body, echo); err != nil || string(echo) != "hello" {
			t.Fatalf("request %d: echo of the first chunk %q, %v", i, echo, err)
		}
		io.WriteString(c, "6\r\n world\r\n0\r\n\r\n")
		rest, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 || string(rest) != "|n=11 err=<nil>" {
			t.Fatalf("request %d: %s, rest %q, %v; want 200 and %q", i, resp.Status, rest, err, "|n=11 err=<nil>")
		}
		if resp.Close {
			t.Fatalf("request %d: Connection: close after a body read whole", i)
		}
	}

	// An early whole answer; the body's rest comes after it.
	io.WriteString(c, "POST /early HTTP/1.1\r\nHost: fdx\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("early answer: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil || string(b) != "hello" {
		t.Fatalf("early answer: %s %q %v", resp.Status, b, err)
	}
	tail := "GET /smuggled HTTP/1.1\r\nHost: fdx\r\n\r\n" // read as a request if the body's rest is not drained
	fmt.Fprintf(c, "%x\r\n%s\r\n0\r\n\r\n", len(tail), tail)
	io.WriteString(c, "GET /next HTTP/1.1\r\nHost: fdx\r\n\r\n")
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the request after the early answer: %v", err)
	}
	b, _ = io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "ok /next" {
		t.Fatalf("the request after the early answer: %s %q", resp.Status, b)
	}

	// The fast path served them: its pool of the endpoint exists, and
	// net/http's server (the ReverseProxy transports) made none.
	a := f.agent
	a.l7.h1.mu.Lock()
	pools := len(a.l7.h1.pools)
	a.l7.h1.mu.Unlock()
	if pools != 1 {
		t.Fatalf("the fast path's pools: %d, want 1 (the requests did not go through it)", pools)
	}
	a.l7.mu.Lock()
	transports := len(a.l7.transports)
	a.l7.mu.Unlock()
	if transports != 0 {
		t.Fatalf("net/http's server path made %d transports", transports)
	}
}

// TestFastDuplexStalledClientBounded: a client that stalls its body is
// cut within timeouts.requestBody (300 ms here), now that the fast path
// waits for a body's bytes while it looks at the endpoint: before any
// answer (408), and once the endpoint answered whole before the body
// ended (the answer, then the connection closed), rather than the body's
// rest being waited for until the client leaves.
func TestFastDuplexStalledClientBounded(t *testing.T) {
	doc := `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"fdy","namespace":"demo"},
	"spec":{"ports":[{"name":"web","port":19891,"protocol":"http"}],"timeouts":{"requestBody":"300ms"}}}`
	f := agentInFront(t, inFront{node: "fdy", octet: 139, svc: "fdy", vipPort: 19891, port: startFastDuplexEcho(t), doc: doc, noRequest: true})
	for _, tc := range []struct{ path, want string }{
		{"/whole", "HTTP/1.1 408"}, // the endpoint answers once it read 5 bytes: 4 come
		{"/early", "HTTP/1.1 200"},
	} {
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		body := "5\r\nhello\r\n"
		if tc.path == "/whole" {
			body = "4\r\nhell\r\n"
		}
		io.WriteString(c, "POST "+tc.path+" HTTP/1.1\r\nHost: fdy\r\nTransfer-Encoding: chunked\r\n\r\n"+body)
		out, err := io.ReadAll(c) // to the connection's end
		if !strings.HasPrefix(string(out), tc.want) || err != nil {
			t.Fatalf("%s: the client stalled its body: %q, %v; want %q and the connection closed within timeouts.requestBody", tc.path, out, err, tc.want)
		}
	}
}

// TestFastDuplexOverMesh: as TestFastDuplexChunkedEcho, to an endpoint
// of another agent over a yamux stream: the fast path's upstream
// connection has no socket of its own to peek at (a read whose deadline
// has passed looks for the answer).
func TestFastDuplexOverMesh(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("fdm", 19892, "http"))
	ctl := []string{cp.SyncAddr()}
	startAgent(t, agentOpts{name: "fdm-ep", site: "s1", region: "r1", vipOctet: 137, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("fdm", "fdm-1", startFastDuplexEcho(t))}})
	off := false // a yamux stream, not a direct one (a TCP socket)
	client := startAgentWith(t, agentOpts{name: "fdm-client", site: "s1", region: "r1", vipOctet: 139, control: ctl, stateDir: t.TempDir()},
		func(cfg *Config) { cfg.MeshDirectStreams = &off })
	waitFor(t, "the client's agent to learn the endpoint", func() bool { return len(endpointsOf(client, "demo/fdm")) == 1 })
	addr := "127.139.0.1:19892"
	waitListening(t, addr)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(15 * time.Second))
	io.WriteString(c, "POST /echo HTTP/1.1\r\nHost: fdm\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no response head before the body's rest: %v", err)
	}
	echo := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, echo); err != nil || string(echo) != "hello" {
		t.Fatalf("echo of the first chunk %q, %v", echo, err)
	}
	io.WriteString(c, "6\r\n world\r\n0\r\n\r\n")
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "|n=11 err=<nil>" {
		t.Fatalf("%s, rest %q, %v", resp.Status, rest, err)
	}
	client.l7.h1.mu.Lock()
	pools := len(client.l7.h1.pools)
	client.l7.h1.mu.Unlock()
	if pools != 1 {
		t.Fatalf("the fast path's pools: %d, want 1 (the request did not go through it)", pools)
	}
}
