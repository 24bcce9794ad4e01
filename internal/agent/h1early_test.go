package agent

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// Bugs a review of the HTTP/1.1 path found (session 19): each test's
// comment says what went wrong before its fix, and each fails without it.

type endlessZeros struct{}

func (endlessZeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestH1EarlyRejection: an endpoint (net/http's server) refuses an
// upload with 413 as soon as it sees the head, without reading the body.
// Through the fast path the client must get that 413, as it does
// directly and through net/http's ReverseProxy.
func TestH1EarlyRejection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/upload" {
			http.Error(w, "too big", http.StatusRequestEntityTooLarge) // body unread
			return
		}
		io.WriteString(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	c := &http.Client{Timeout: 10 * time.Second}
	base := agentInFront(t, inFront{node: "e", octet: 208, svc: "early", vipPort: 19770,
		port: ln.Addr().(*net.TCPAddr).Port, client: c}).base

	direct, err := http.Post("http://"+ln.Addr().String()+"/upload", "application/octet-stream", io.LimitReader(endlessZeros{}, 8<<20))
	if err != nil {
		t.Fatal(err)
	}
	direct.Body.Close()
	if direct.StatusCode != 413 {
		t.Fatalf("directly: %d", direct.StatusCode)
	}

	// Keep-alive, and "Connection: close" (keep false before the drain:
	// the lingering close was not armed, and the unread body reset the
	// connection); five tries each, as the reset lost the answer only
	// when it beat the client's read.
	for _, closeConn := range []bool{false, true} {
		for i := 0; i < 5; i++ {
			req, _ := http.NewRequest("POST", base+"/upload", io.LimitReader(endlessZeros{}, 8<<20))
			req.ContentLength = 8 << 20
			req.Close = closeConn
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("Connection: close %v, try %d: through the agent: %v", closeConn, i, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 413 {
				t.Fatalf("Connection: close %v, try %d: through the agent: %d %q, want the endpoint's 413", closeConn, i, resp.StatusCode, b)
			}
		}
	}
}

// TestH1HeadErrorBody: the fast path's own error answer to a HEAD
// request (its endpoint is gone) carries the error text as a body, on a
// connection kept open. A HEAD response has no body (RFC 9110 §9.3.2):
// the client reads those bytes as the start of the next response.
func TestH1HeadErrorBody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(ln)

	c := &http.Client{Timeout: 10 * time.Second}
	addr := agentInFront(t, inFront{node: "h", octet: 216, svc: "headerr", vipPort: 19772,
		port: ln.Addr().(*net.TCPAddr).Port, client: c}).addr
	srv.Close() // the endpoint goes: the agent answers with its own error
	c.CloseIdleConnections()

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(conn, "HEAD /x HTTP/1.1\r\nHost: headerr\r\n\r\nGET /y HTTP/1.1\r\nHost: headerr\r\n\r\n")
	br := bufio.NewReader(conn)
	head, _ := http.NewRequest("HEAD", "http://headerr/x", nil)
	resp, err := http.ReadResponse(br, head)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway && resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("HEAD: %s, want the agent's own 502 or 503 (its endpoint is gone)", resp.Status)
	}
	resp2, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("the response after the HEAD's: %v (the HEAD answer's body is in the stream)", err)
	}
	b, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusBadGateway && resp2.StatusCode != http.StatusServiceUnavailable || len(b) == 0 {
		t.Fatalf("GET after the HEAD: %s %q, want the agent's own 502 or 503 with its error text", resp2.Status, b)
	}
}

// TestH1EarlyRejectionHeld: as TestH1EarlyRejection, but the
// endpoint keeps its connection open after the 413 and reads nothing
// more. net/http's client gets the 413 directly; through the fast path
// the request hangs (the pool writes the whole body before it reads any
// response, and the socket buffers are full).
func TestH1EarlyRejectionHeld(t *testing.T) {
	done := make(chan struct{})
	be := serveH1(t, func(c net.Conn, _ *bufio.Reader, req *http.Request) bool {
		if req.URL.Path != "/upload" {
			io.Copy(io.Discard, req.Body)
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			return true
		}
		io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
		<-done // reads nothing more
		return false
	})
	t.Cleanup(func() { close(done) }) // before the listener closes, as cleanups run last first

	c := &http.Client{Timeout: 5 * time.Second}
	base := agentInFront(t, inFront{node: "hd", octet: 217, svc: "held", vipPort: 19773, port: be.Port, client: c}).base

	post := func(url string) (*http.Response, error) {
		req, _ := http.NewRequest("POST", url, io.LimitReader(endlessZeros{}, 64<<20))
		req.ContentLength = 64 << 20
		return c.Do(req)
	}
	direct, err := post("http://" + be.String() + "/upload")
	if err != nil {
		t.Fatalf("directly: %v", err)
	}
	direct.Body.Close()
	if direct.StatusCode != 413 {
		t.Fatalf("directly: %d", direct.StatusCode)
	}
	resp, err := post(base + "/upload")
	if err != nil {
		t.Fatalf("through the agent: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("through the agent: %d, want the endpoint's 413", resp.StatusCode)
	}
}

// TestH1InterimDuringUpload: an endpoint that sends 102 Processing and
// then takes a while before it reads a large upload must get all of it,
// and the client the endpoint's final answer (the interim one is dropped,
// as the fast path drops 1xx answers). The pool's stall hook took the 102
// for an early answer and ended the upload: the client got a 502.
func TestH1InterimDuringUpload(t *testing.T) {
	const size = 32 << 20
	be := serveH1(t, func(c net.Conn, _ *bufio.Reader, req *http.Request) bool {
		if req.URL.Path == "/upload" {
			io.WriteString(c, "HTTP/1.1 102 Processing\r\n\r\n")
			time.Sleep(300 * time.Millisecond) // busy: the agent's writes stall
		}
		n, _ := io.Copy(io.Discard, req.Body)
		s := strconv.FormatInt(n, 10)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: "+strconv.Itoa(len(s))+"\r\n\r\n"+s)
		return true
	})

	c := &http.Client{Timeout: 10 * time.Second}
	base := agentInFront(t, inFront{node: "i", octet: 209, svc: "interim", vipPort: 19774, port: be.Port, client: c}).base

	req, _ := http.NewRequest("POST", base+"/upload", io.LimitReader(endlessZeros{}, size))
	req.ContentLength = size
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("through the agent: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != strconv.Itoa(size) {
		t.Fatalf("through the agent: %d %q, want 200 %q", resp.StatusCode, b, strconv.Itoa(size))
	}
}
