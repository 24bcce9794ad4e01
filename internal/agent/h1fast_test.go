package agent

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// h1Backend is the endpoint behind the fast-path tests. Its idle
// connections stay open until closeIdle closes them (and returns once they
// are closed): an endpoint that closed them on a timer would race the
// agent's reuse in every subtest, not only in the one about stale
// connections (a 1 MiB POST once met a connection closed as it was sent).
func h1Backend(t *testing.T, bodyErrs *atomic.Int32) (port int, closeIdle func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			bodyErrs.Add(1)
			return
		}
		w.Header().Set("X-Got-XFF", strings.Join(r.Header["X-Forwarded-For"], "|"))
		w.Header().Set("X-Got-Foo", r.Header.Get("Foo"))
		w.Header().Set("X-Got-Connection", r.Header.Get("Connection"))
		w.Header().Set("X-Got-Query", r.URL.RawQuery)
		w.Header().Set("X-Got-TE", strings.Join(r.TransferEncoding, ","))
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "must not reach the client")
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		w.Write(b)
	})
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		for _, s := range []string{"a", "b", "c"} {
			io.WriteString(w, s)
			w.(http.Flusher).Flush()
		}
		w.Header().Set("X-Sum", "abc")
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Write(bytes.Repeat([]byte("0123456789abcdef"), 1<<16)) // 1 MiB
	})
	mux.HandleFunc("/vanish", func(w http.ResponseWriter, r *http.Request) {
		c, bw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		bw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b")
		bw.Flush()
		c.Close()
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want an upgrade", 400)
			return
		}
		c, bw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		bw.Flush()
		io.Copy(c, bw.Reader)
	})
	var mu sync.Mutex
	idle := map[net.Conn]bool{}
	var closed int
	srv := &http.Server{Handler: mux, ConnState: func(c net.Conn, st http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		switch st {
		case http.StateIdle:
			idle[c] = true
		case http.StateClosed, http.StateHijacked:
			closed++
			delete(idle, c)
		default:
			delete(idle, c)
		}
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	closeIdle = func() {
		mu.Lock()
		want := closed + len(idle)
		mu.Unlock()
		srv.SetKeepAlivesEnabled(false) // closes the idle connections
		srv.SetKeepAlivesEnabled(true)
		waitFor(t, "the endpoint to close its idle connections", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return closed >= want
		})
	}
	return ln.Addr().(*net.TCPAddr).Port, closeIdle
}

// TestH1FastPath covers what the HTTP/1.1 fast path does itself:
// pipelining, chunked and large bodies both ways, hop-by-hop headers,
// clients and endpoints that go away mid-message, stale pooled connections,
// and the hand-off of upgrades and 100-continue to the net/http server. It
// ends with no request goroutine left.
func TestH1FastPath(t *testing.T) {
	var bodyErrs atomic.Int32
	port, closeIdle := h1Backend(t, &bodyErrs)
	tr := &http.Transport{ExpectContinueTimeout: 5 * time.Second}
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	f := agentInFront(t, inFront{node: "f", octet: 241, svc: "fast", vipPort: 19300, port: port, client: c, ready: "/echo"})
	a, addr, base := f.agent, f.addr, f.base
	goroutines := settledGoroutines(t) // those of the start, once they stop coming and going

	dial := func(t *testing.T) (net.Conn, *bufio.Reader) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		return conn, bufio.NewReader(conn)
	}
	readBody := func(t *testing.T, resp *http.Response) string {
		t.Helper()
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	t.Run("pipelining", func(t *testing.T) {
		conn, br := dial(t)
		var reqs string
		for i := range 5 {
			reqs += fmt.Sprintf("POST /echo?i=%d HTTP/1.1\r\nHost: fast\r\nContent-Length: 3\r\n\r\nr#%d", i, i)
		}
		conn.Write([]byte(reqs))
		for i := range 5 {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := readBody(t, resp); got != fmt.Sprintf("r#%d", i) || resp.Header.Get("X-Got-Query") != fmt.Sprintf("i=%d", i) {
				t.Fatalf("response %d: %q %v", i, got, resp.Header)
			}
		}
	})

	t.Run("headers", func(t *testing.T) {
		conn, br := dial(t)
		conn.Write([]byte("GET /echo HTTP/1.1\r\nHost: fast\r\nConnection: Foo\r\nFoo: bar\r\nX-Forwarded-For: 6.6.6.6\r\nKeep-Alive: 5\r\n\r\n"))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		h := resp.Header
		if h.Get("X-Got-XFF") != "127.0.0.1" || h.Get("X-Got-Foo") != "" || h.Get("X-Got-Connection") != "" || h.Get("X-Hop") != "" {
			t.Fatalf("hop-by-hop or forwarding headers passed through: %v", h)
		}
	})

	t.Run("connection close", func(t *testing.T) {
		conn, br := dial(t)
		conn.Write([]byte("GET /echo HTTP/1.1\r\nHost: fast\r\nConnection: close\r\n\r\n"))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		if !resp.Close {
			t.Fatal("no Connection: close in the response")
		}
		if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("connection left open: %d %v", n, err)
		}
	})

	t.Run("chunked request", func(t *testing.T) {
		conn, br := dial(t)
		conn.Write([]byte("POST /echo HTTP/1.1\r\nHost: fast\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := readBody(t, resp); got != "abcdefg" || resp.Header.Get("X-Got-TE") != "chunked" {
			t.Fatalf("%q %v", got, resp.Header)
		}
	})

	t.Run("chunked response with trailer", func(t *testing.T) {
		resp, err := c.Get(base + "/chunked")
		if err != nil {
			t.Fatal(err)
		}
		if got := readBody(t, resp); got != "abc" || resp.Trailer.Get("X-Sum") != "abc" || resp.ContentLength != -1 {
			t.Fatalf("%q trailer %v length %d", got, resp.Trailer, resp.ContentLength)
		}
	})

	t.Run("large bodies", func(t *testing.T) {
		big := make([]byte, 3<<20)
		rand.Read(big)
		resp, err := c.Post(base+"/echo", "application/octet-stream", bytes.NewReader(big))
		if err != nil {
			t.Fatal(err)
		}
		if got := readBody(t, resp); got != string(big) {
			t.Fatalf("3 MiB echo: got %d bytes, different", len(got))
		}
		pr, pw := io.Pipe() // unknown length: sent chunked
		go func() { pw.Write(big[:1<<20]); pw.Close() }()
		resp, err = c.Post(base+"/echo", "application/octet-stream", pr)
		if err != nil {
			t.Fatal(err)
		}
		if got := readBody(t, resp); got != string(big[:1<<20]) {
			t.Fatalf("1 MiB chunked echo: status %d, got %d bytes, different (%.80q)", resp.StatusCode, len(got), got)
		}
		resp, err = c.Get(base + "/big")
		if err != nil {
			t.Fatal(err)
		}
		if got := readBody(t, resp); len(got) != 1<<20 {
			t.Fatalf("GET 1 MiB: %d bytes", len(got))
		}
	})

	t.Run("client gone mid-body", func(t *testing.T) {
		before := bodyErrs.Load()
		conn, _ := dial(t)
		conn.Write([]byte("POST /echo HTTP/1.1\r\nHost: fast\r\nContent-Length: 1000000\r\n\r\n"))
		conn.Write(bytes.Repeat([]byte("x"), 10000))
		conn.Close()
		waitFor(t, "the endpoint to see the body end early", func() bool { return bodyErrs.Load() > before })
	})

	t.Run("endpoint gone mid-response", func(t *testing.T) {
		resp, err := c.Get(base + "/vanish")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if err == nil {
			t.Fatal("a cut-off response read as complete")
		}
		resp, err = c.Get(base + "/echo")
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("after a cut-off response: %v", err)
		}
		readBody(t, resp)
	})

	t.Run("stale pooled connection", func(t *testing.T) {
		for _, method := range []string{"GET", "POST"} {
			for range 3 {
				closeIdle()
				// Not a wait for a condition: the pool peeks a connection
				// before a POST only once it has been idle 5 ms
				// (httpproxy.checkIdleAfterBody); this passes that bound.
				time.Sleep(10 * time.Millisecond)
				// GET without a body is sent again on a new connection;
				// POST's connection is checked before use.
				var body io.Reader
				want := ""
				if method == "POST" {
					body, want = strings.NewReader("x"), "x"
				}
				req, _ := http.NewRequest(method, base+"/echo", body)
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				if got := readBody(t, resp); resp.StatusCode != 200 || got != want {
					t.Fatalf("%s after the endpoint closed its idle connection: %s %q", method, resp.Status, got)
				}
			}
		}
	})

	t.Run("upgrade goes to the server", func(t *testing.T) {
		conn, br := dial(t)
		// A plain request first: the fast path serves it, then hands the
		// connection over with the upgrade request.
		conn.Write([]byte("GET /echo HTTP/1.1\r\nHost: fast\r\n\r\nGET /ws HTTP/1.1\r\nHost: fast\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		resp, err = http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 101 {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		conn.Write([]byte("ping"))
		b := make([]byte, 4)
		if _, err := io.ReadFull(br, b); err != nil || string(b) != "ping" {
			t.Fatalf("echo over the upgraded connection: %q %v", b, err)
		}
	})

	t.Run("expect 100-continue", func(t *testing.T) {
		req, _ := http.NewRequest("PUT", base+"/echo", strings.NewReader("continued"))
		req.Header.Set("Expect", "100-continue")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if got := readBody(t, resp); got != "continued" {
			t.Fatalf("%q", got)
		}
	})

	t.Run("malformed", func(t *testing.T) {
		for _, raw := range []string{
			"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
			"GET /echo HTTP/1.1\r\n\r\n",
			"GET /echo HTTP/1.1\r\nHost: fast\r\nX: a\x01b\r\n\r\n",
			"GET /echo HTTP/1.1\r\nHost: fast\r\nContent-Length: x\r\n\r\n",
		} {
			conn, br := dial(t)
			conn.Write([]byte(raw))
			line, _ := br.ReadString('\n')
			if !strings.HasPrefix(line, "HTTP/1.1 400") {
				t.Errorf("%q: got %q, want a 400", raw, line)
			}
			conn.Close()
		}
	})

	tr.CloseIdleConnections()
	waitFor(t, "client connections released", func() bool { return a.active.Load() == 0 })
	waitFor(t, "request goroutines to end", func() bool { return runtime.NumGoroutine() <= goroutines })
}

// settledGoroutines returns the number of goroutines once it held for five
// polls 10 ms apart (at most 5 s of polls; then the last count).
func settledGoroutines(t testing.TB) int {
	t.Helper()
	n, same := runtime.NumGoroutine(), 0
	for deadline := time.Now().Add(5 * time.Second); same < 5 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // poll interval
		if m := runtime.NumGoroutine(); m == n {
			same++
		} else {
			n, same = m, 0
		}
	}
	return n
}
