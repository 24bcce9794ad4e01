package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Full duplex (l7duplex_test.go) takes net/http's HTTP/1 server's drain
// of the request body before the response header, which made sure that a
// body was read to its end (or the connection closed) by the time the
// handler returned. An endpoint may answer whole before it has read the
// body (an early 413, a redirect, an echo of the head): the handler then
// returns while the upstream transport still reads the body. net/http's
// server, as the handler returns, cuts any read of the connection in
// flight (connReader.abortPendingRead: a deadline in the past), its drain
// of the rest ignores the error, and it reads the next request: a chunked
// body's reader keeps the error, so the rest of the body on the wire is
// parsed as a request; a Content-Length body's read error cancelled the
// connection's context, which every later request on it inherits; and a
// client that stalls its body holds the connection for ever.

// reuseAgent is one agent in front of an endpoint that answers a POST at
// once (whole, with its length) and then reads the body, and answers
// anything else "smuggled", counted in smuggled. A policy (GET and POST)
// has the agent serve a peer's mesh streams per request (authzServer).
type reuseAgent struct {
	a        *Agent
	vip      string // the service's VIP address
	smuggled atomic.Int32
}

func startReuseAgent(t *testing.T) *reuseAgent {
	t.Helper()
	return startReuseAgentAt(t, 107, "1s")
}

// startReuseAgentAt is startReuseAgent with the agent's VIP range
// 127.<octet>.0.0/16 and timeouts.requestBody body.
func startReuseAgentAt(t *testing.T, octet int, body string) *reuseAgent {
	t.Helper()
	ra := &reuseAgent{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			ra.smuggled.Add(1)
			io.WriteString(w, "smuggled")
			return
		}
		rc := http.NewResponseController(w)
		rc.EnableFullDuplex()
		w.Header().Set("Content-Length", "5")
		io.WriteString(w, "early")
		rc.Flush()
		io.Copy(io.Discard, r.Body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	ra.a = policedAgent(t, "dxr", octet, 19870, ln.Addr().(*net.TCPAddr).Port, body, "GET, POST")
	ra.vip = fmt.Sprintf("127.%d.0.1:19870", octet)
	waitListening(t, ra.vip)
	return ra
}

// meshStream opens a peer's mesh stream to the endpoint (served per
// request: the policy).
func (ra *reuseAgent) meshStream(t *testing.T) net.Conn {
	t.Helper()
	return peerStream(t, ra.a, "dxr")
}

// vipConn connects to the service's VIP; its requests carry a head over
// 4 KiB, which the fast path hands to net/http's server.
func (ra *reuseAgent) vipConn(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", ra.vip)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var bigPad = "X-Pad: " + strings.Repeat("p", 5000) + "\r\n"

// earlyAnswer sends the head of a POST and the start of its body (a first
// chunk, or the first KiB of a 64 KiB Content-Length) and reads the
// endpoint's whole answer, which comes before the body ends.
func earlyAnswer(t *testing.T, c net.Conn, extra string, chunked bool) *bufio.Reader {
	t.Helper()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	head := fmt.Sprintf("POST /early HTTP/1.1\r\nHost: dxr\r\n%sContent-Length: %d\r\n\r\n%s", extra, 64<<10, strings.Repeat("b", 1024))
	if chunked {
		head = fmt.Sprintf("POST /early HTTP/1.1\r\nHost: dxr\r\n%sTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", extra)
	}
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer before the body ended: %v", err)
	}
	got, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || string(got) != "early" {
		t.Fatalf("%s, body %q, err %v; want 200 early", resp.Status, got, err)
	}
	return br
}

// connEnds: the connection must end without another response.
func (ra *reuseAgent) connEnds(t *testing.T, c net.Conn, br *bufio.Reader, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s: answered %s %q (the endpoint saw %d smuggled requests)", what, resp.Status, b, ra.smuggled.Load())
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("%s: the connection neither ended nor answered: %v", what, err)
	}
	if n := ra.smuggled.Load(); n != 0 {
		t.Fatalf("%s: the endpoint got %d smuggled requests", what, n)
	}
}

// eachPath runs f on a connection of each net/http server path: the VIP
// (a head the fast path hands over) and a peer's mesh stream (authzServer).
func (ra *reuseAgent) eachPath(t *testing.T, f func(t *testing.T, c net.Conn, extra string)) {
	t.Run("source", func(t *testing.T) { f(t, ra.vipConn(t), bigPad) })
	t.Run("authz", func(t *testing.T) { f(t, ra.meshStream(t), "") })
}

// TestDuplexBodyRestAfterAnswer: the client sends the rest of its body
// after the endpoint's whole answer, then a second request on the same
// connection, which must be served as any (the rest of the body is the
// body, not a request; the connection's context is not cancelled).
func TestDuplexBodyRestAfterAnswer(t *testing.T) {
	ra := startReuseAgent(t)
	for _, chunked := range []bool{true, false} {
		t.Run(map[bool]string{true: "chunked", false: "length"}[chunked], func(t *testing.T) {
			ra.eachPath(t, func(t *testing.T, c net.Conn, extra string) {
				br := earlyAnswer(t, c, extra, chunked)
				rest := strings.Repeat("b", 63<<10)
				if chunked {
					rest = "3\r\nabc\r\n0\r\n\r\n"
				}
				if _, err := io.WriteString(c, rest); err != nil {
					t.Fatal(err)
				}
				next := fmt.Sprintf("POST /early HTTP/1.1\r\nHost: dxr\r\n%sContent-Length: 5\r\n\r\nhello", extra)
				if _, err := io.WriteString(c, next); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("chunked %v: the next request on the connection: %v", chunked, err)
				}
				got, err := io.ReadAll(resp.Body)
				if err != nil || resp.StatusCode != 200 || string(got) != "early" {
					t.Fatalf("chunked %v: the next request: %s, body %q, err %v; want 200 early", chunked, resp.Status, got, err)
				}
			})
		})
	}
}

// TestDuplexBodyNotARequest: after the endpoint's whole answer, the client
// sends a request where its chunked body goes on: the body is malformed,
// and the connection must end without serving the request.
func TestDuplexBodyNotARequest(t *testing.T) {
	ra := startReuseAgent(t)
	ra.eachPath(t, func(t *testing.T, c net.Conn, extra string) {
		br := earlyAnswer(t, c, extra, true)
		if _, err := io.WriteString(c, "GET /smuggled HTTP/1.1\r\nHost: dxr\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		ra.connEnds(t, c, br, "a request in place of the body's next chunk")
	})
}

// TestDuplexBodyStalledAfterAnswer: after the endpoint's whole answer the
// client sends no more of its body: the connection ends once
// timeouts.requestBody (1s) passes, as after an answer of the agent's own.
func TestDuplexBodyStalledAfterAnswer(t *testing.T) {
	ra := startReuseAgent(t)
	for _, chunked := range []bool{true, false} {
		t.Run(map[bool]string{true: "chunked", false: "length"}[chunked], func(t *testing.T) {
			ra.eachPath(t, func(t *testing.T, c net.Conn, extra string) {
				br := earlyAnswer(t, c, extra, chunked)
				ra.connEnds(t, c, br, fmt.Sprintf("chunked %v: a body stalled after the answer", chunked))
			})
		})
	}
}
