package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
	"golang.org/x/sys/unix"
)

// upstream is a real HTTP/1.1 server on a loopback port that answers
// each request with respond, counting the connections it accepted and
// those still open.
type upstream struct {
	ln       net.Listener
	accepted atomic.Int32
	open     atomic.Int32
	respond  func(c net.Conn, req *http.Request) (keep bool)
	wg       sync.WaitGroup
}

func startUpstream(t *testing.T, respond func(c net.Conn, req *http.Request) (keep bool)) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{ln: ln, respond: respond}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.accepted.Add(1)
			u.open.Add(1)
			u.wg.Add(1)
			go u.serveConn(c)
		}
	}()
	t.Cleanup(func() { ln.Close(); u.wg.Wait() })
	return u
}

func (u *upstream) serveConn(c net.Conn) {
	defer u.wg.Done()
	defer u.open.Add(-1)
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		keep := u.respond(c, req)
		io.Copy(io.Discard, req.Body)
		if !keep {
			return
		}
	}
}

// ok answers 200 with body "ok".
func ok(c net.Conn, req *http.Request) bool {
	io.Copy(io.Discard, req.Body)
	io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	return true
}

func (u *upstream) pool(cfg PoolConfig) *Pool {
	addr := u.ln.Addr().String()
	if cfg.Dial == nil {
		cfg.Dial = func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
	}
	return NewPool(cfg)
}

func get(t *testing.T, p *Pool, method, body string) (int, string) {
	t.Helper()
	var rb io.Reader
	if body != "" {
		rb = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://svc/x", rb)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := p.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, what, cond)
}

// TestPoolReusesConnection: requests one after another, with and without
// a body, share one connection once each body is read to its end.
func TestPoolReusesConnection(t *testing.T) {
	u := startUpstream(t, ok)
	p := u.pool(PoolConfig{})
	defer p.Close(true)
	for i, m := range []string{"GET", "POST", "GET", "PUT"} {
		body := ""
		if m != "GET" {
			body = fmt.Sprintf("body %d", i)
		}
		if code, b := get(t, p, m, body); code != 200 || b != "ok" {
			t.Fatalf("%s: %d %q", m, code, b)
		}
	}
	if n := u.accepted.Load(); n != 1 {
		t.Fatalf("%d connections for 4 sequential requests; want 1", n)
	}
}

// TestPoolReplaysOnStaleConnection: the upstream closes an idle
// connection (its idle timeout) without saying so; a GET that finds it
// closed is sent again on a new connection, as http.Transport does.
func TestPoolReplaysOnStaleConnection(t *testing.T) {
	u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
		ok(c, req)
		return false // close after each response, no "Connection: close"
	})
	p := u.pool(PoolConfig{})
	defer p.Close(true)
	if code, _ := get(t, p, "GET", ""); code != 200 {
		t.Fatal(code)
	}
	waitFor(t, "the upstream to close its connection", func() bool { return u.open.Load() == 0 })
	if code, b := get(t, p, "GET", ""); code != 200 || b != "ok" {
		t.Fatalf("after a stale connection: %d %q", code, b)
	}
	if n := u.accepted.Load(); n != 2 {
		t.Fatalf("%d connections; want 2", n)
	}
}

// TestPoolReplaysOnHalfClosedConnection: the upstream answers, then shuts
// its side of the idle connection down but goes on reading (a relay whose
// far side is gone: the agent's own, on a direct stream), so a request
// sent there gets neither an answer nor a reset. The pool's read finds the
// end of the stream that came before the request, and a GET goes again
// on a new connection. The request is written inside the read of its
// answer (upWire), which does not see that end (it came before the read
// cleared the readiness) and waits until fuseRecheck, then reads: without
// that bound it would hang here.
func TestPoolReplaysOnHalfClosedConnection(t *testing.T) {
	defer func(d time.Duration) { fuseIdleMax = d }(fuseIdleMax)
	fuseIdleMax = time.Hour // the connection fuses however long the end took to come
	var mu sync.Mutex
	halfClosed := map[net.Conn]bool{}
	u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		if halfClosed[c] {
			return true // read on, answer nothing
		}
		ok(c, req)
		if len(halfClosed) == 0 { // the first connection only
			c.(*net.TCPConn).CloseWrite()
			halfClosed[c] = true
		}
		return true
	})
	p := u.pool(PoolConfig{})
	defer p.Close(true)
	if code, _ := get(t, p, "GET", ""); code != 200 {
		t.Fatal(code)
	}
	// The end of the stream has reached the pooled socket (a peek that
	// leaves the poller alone).
	p.mu.Lock()
	pc := p.idle[0]
	p.mu.Unlock()
	rc, err := pc.c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the upstream's end of stream", func() bool {
		eof := false
		rc.Control(func(fd uintptr) {
			var b [1]byte
			n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			eof = n == 0 && err == nil
		})
		return eof
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/x", nil)
	resp, err := p.RoundTrip(req)
	if err != nil {
		t.Fatalf("a GET after the upstream half-closed: %v", err)
	}
	resp.Body.Close()
	if n := u.accepted.Load(); resp.StatusCode != 200 || n != 2 {
		t.Fatalf("%d over %d connections; want 200 over 2", resp.StatusCode, n)
	}
}

type markedDial struct{ err error }

func (e *markedDial) Error() string { return "dial: " + e.err.Error() }
func (e *markedDial) Unwrap() error { return e.err }

// TestPoolDialError: a failed dial, and a pool closed while it dials,
// come back through DialError so the caller knows nothing was sent.
func TestPoolDialError(t *testing.T) {
	refused := errors.New("refused")
	mark := func(err error) error { return &markedDial{err} }
	p := NewPool(PoolConfig{
		Dial:      func(context.Context) (net.Conn, error) { return nil, refused },
		DialError: mark,
	})
	req, _ := http.NewRequest("GET", "http://svc/", nil)
	_, err := p.RoundTrip(req)
	var md *markedDial
	if !errors.As(err, &md) || !errors.Is(err, refused) {
		t.Fatalf("failed dial: %v; want it marked by DialError", err)
	}

	u := startUpstream(t, ok)
	p = u.pool(PoolConfig{DialError: mark})
	p.Close(true)
	_, err = p.RoundTrip(req)
	if !errors.As(err, &md) || !errors.Is(err, ErrPoolClosed) {
		t.Fatalf("closed pool: %v; want ErrPoolClosed marked by DialError", err)
	}
	waitFor(t, "the connection dialed into a closed pool to close", func() bool { return u.open.Load() == 0 })
}

// TestPoolMaxIdle: connections beyond MaxIdle are closed when their
// response is done instead of kept idle.
func TestPoolMaxIdle(t *testing.T) {
	var arrived sync.WaitGroup
	arrived.Add(2)
	u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
		arrived.Done()
		arrived.Wait() // both requests hold a connection at once
		return ok(c, req)
	})
	p := u.pool(PoolConfig{MaxIdle: 1})
	defer p.Close(true)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", "http://svc/", nil)
			resp, err := p.RoundTrip(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}()
	}
	wg.Wait()
	waitFor(t, "one of the two connections to close", func() bool { return u.open.Load() == 1 })
	if n := u.accepted.Load(); n != 2 {
		t.Fatalf("%d connections; want 2", n)
	}
}

// TestPoolShrinkIdle: ShrinkIdle closes the idle connections but the most
// recently used ones it keeps, and leaves a connection in use alone; the
// next request reuses a kept one.
func TestPoolShrinkIdle(t *testing.T) {
	const n = 4
	var arrived sync.WaitGroup
	arrived.Add(n)
	var busy atomic.Bool
	release := make(chan struct{})
	u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
		if req.URL.Path == "/slow" {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsl")
			<-release
			io.WriteString(c, "ow")
			return true
		}
		if !busy.Load() {
			arrived.Done()
			arrived.Wait() // n requests hold a connection at once
		}
		return ok(c, req)
	})
	p := u.pool(PoolConfig{})
	defer p.Close(true)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", "http://svc/", nil)
			resp, err := p.RoundTrip(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	}
	wg.Wait()
	if u.accepted.Load() != n {
		t.Fatalf("%d connections, want %d", u.accepted.Load(), n)
	}
	// One connection goes in use (a body half read); the other three
	// stay idle.
	busy.Store(true)
	req, _ := http.NewRequest("GET", "http://svc/slow", nil)
	resp, err := p.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.ShrinkIdle(1); got != n-2 {
		t.Fatalf("ShrinkIdle(1) closed %d, want %d", got, n-2)
	}
	waitFor(t, "two connections to close", func() bool { return u.open.Load() == 2 })
	close(release)
	if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "slow" {
		t.Fatalf("body of the request in use: %q, %v; want slow", b, err)
	}
	resp.Body.Close()
	if got := p.ShrinkIdle(1); got != 1 {
		t.Fatalf("ShrinkIdle(1) with two idle closed %d, want 1", got)
	}
	waitFor(t, "one connection left", func() bool { return u.open.Load() == 1 })
	get(t, p, "GET", "")
	if u.accepted.Load() != n {
		t.Fatalf("%d connections after the shrink, want %d (the kept one reused)", u.accepted.Load(), n)
	}
	if got := p.ShrinkIdle(0); got != 1 {
		t.Fatalf("ShrinkIdle(0) closed %d, want 1", got)
	}
	waitFor(t, "no connection left", func() bool { return u.open.Load() == 0 })
}

// TestPoolIdleTimeout: a connection idle for IdleTimeout is closed by the
// pool itself (not left to the next request to find).
func TestPoolIdleTimeout(t *testing.T) {
	u := startUpstream(t, ok)
	p := u.pool(PoolConfig{IdleTimeout: 50 * time.Millisecond})
	defer p.Close(true)
	get(t, p, "GET", "")
	if u.accepted.Load() != 1 {
		t.Fatal("no connection")
	}
	waitFor(t, "the idle connection to be closed", func() bool { return u.open.Load() == 0 })
}

// TestPoolEarlyCloseDiscardsConnection: a body closed before its end
// leaves unread bytes on the connection: it is closed, not reused.
func TestPoolEarlyCloseDiscardsConnection(t *testing.T) {
	u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
		c.Write(make([]byte, 100000))
		return true
	})
	p := u.pool(PoolConfig{})
	defer p.Close(true)
	req, _ := http.NewRequest("GET", "http://svc/", nil)
	resp, err := p.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Read(make([]byte, 10))
	resp.Body.Close()
	waitFor(t, "the half-read connection to close", func() bool { return u.open.Load() == 0 })
	if code, _ := get(t, p, "GET", ""); code != 200 {
		t.Fatal(code)
	}
	if n := u.accepted.Load(); n != 2 {
		t.Fatalf("%d connections; want 2", n)
	}
}

// TestPoolCancel: a request cancelled while it waits for the response
// header returns the context's cause and its connection is not reused.
func TestPoolCancel(t *testing.T) {
	release, reached := make(chan struct{}), make(chan struct{})
	u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
		if req.URL.Path == "/slow" {
			close(reached)
			<-release
			return false
		}
		return ok(c, req)
	})
	defer close(release)
	p := u.pool(PoolConfig{})
	defer p.Close(true)
	cause := errors.New("request timeout")
	ctx, cancel := context.WithCancelCause(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/slow", nil)
	go func() {
		<-reached // the upstream has the request: the pool waits for its answer
		cancel(cause)
	}()
	if _, err := p.RoundTrip(req); !errors.Is(err, cause) {
		t.Fatalf("cancelled request: %v; want its cause", err)
	}
	if code, _ := get(t, p, "GET", ""); code != 200 {
		t.Fatal(code)
	}
	if n := u.accepted.Load(); n != 2 {
		t.Fatalf("%d connections; want 2 (the cancelled one is not reused)", n)
	}
}

// retiringConn is a real connection a test marks retired, as a mesh
// stream of a retired session says it is (transport's streamConn).
type retiringConn struct {
	net.Conn
	retired atomic.Bool
}

func (c *retiringConn) Retired() bool { return c.retired.Load() }

// TestPoolLeavesRetiredConnections: an idle connection that says it was
// retired (its mesh session was left for a better path) is not reused:
// the next request dials a new one, which is then reused, and the retired
// one is closed.
func TestPoolLeavesRetiredConnections(t *testing.T) {
	u := startUpstream(t, ok)
	addr := u.ln.Addr().String()
	var mu sync.Mutex
	var conns []*retiringConn
	p := u.pool(PoolConfig{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		rc := &retiringConn{Conn: c}
		mu.Lock()
		conns = append(conns, rc)
		mu.Unlock()
		return rc, nil
	}})
	defer p.Close(true)
	for range 2 {
		if code, b := get(t, p, "GET", ""); code != 200 || b != "ok" {
			t.Fatalf("%d %q", code, b)
		}
	}
	mu.Lock()
	conns[0].retired.Store(true)
	mu.Unlock()
	for range 2 {
		if code, b := get(t, p, "GET", ""); code != 200 || b != "ok" {
			t.Fatalf("after the retirement: %d %q", code, b)
		}
	}
	if n := u.accepted.Load(); n != 2 {
		t.Fatalf("%d connections; want 2 (the first, retired, and one after it)", n)
	}
	waitFor(t, "the retired connection closed", func() bool { return u.open.Load() == 1 })
}

// TestPoolStreamCancel: with a WithStreamCancel context the pool still
// ends a body that streams when the context is cancelled (a client gone
// mid-stream), and a context derived from it (a timeout's) still ends a
// request whose response header does not come.
func TestPoolStreamCancel(t *testing.T) {
	release := make(chan struct{})
	reached := make(chan struct{}, 2)
	u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
		switch req.URL.Path {
		case "/stream": // a header and a first chunk, then silence
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
		case "/silent": // no header at all
		}
		reached <- struct{}{}
		<-release
		return false
	})
	defer close(release)
	p := u.pool(PoolConfig{})
	defer p.Close(true)

	conn, cancelConn := context.WithCancel(context.Background())
	defer cancelConn()
	req, _ := http.NewRequestWithContext(WithStreamCancel(conn), "GET", "http://svc/stream", nil)
	resp, err := p.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("first chunk %q, %v", buf, err)
	}
	<-reached
	read := make(chan error, 1)
	go func() { _, err := resp.Body.Read(buf); read <- err }()
	cancelConn()
	select {
	case err := <-read:
		if err == nil {
			t.Fatal("the body read returned no error after the cancel")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the body read still blocks 10 s after the context was cancelled")
	}
	resp.Body.Close()

	conn2, cancelConn2 := context.WithCancel(context.Background())
	defer cancelConn2()
	cause := errors.New("request timeout")
	timeout, cancelTimeout := context.WithCancelCause(WithStreamCancel(conn2))
	req, _ = http.NewRequestWithContext(timeout, "GET", "http://svc/silent", nil)
	go func() {
		<-reached // the upstream has the request: the pool waits for its header
		cancelTimeout(cause)
	}()
	done := make(chan error, 1)
	go func() { _, err := p.RoundTrip(req); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, cause) {
			t.Fatalf("request with a derived context cancelled: %v; want its cause", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request still waits for its header 10 s after its derived context was cancelled")
	}
}

// TestPoolBoundsResponseHead: an endpoint that sends a response head
// without end (one header line that never stops, or 1xx responses one
// after another) is read no further than MaxResponseHeadBytes, as
// net/http's Transport bounds it (MaxResponseHeaderBytes, 10 MiB by
// default): the request fails and the connection closes. The pool read
// it all, holding the growing line in memory.
func TestPoolBoundsResponseHead(t *testing.T) {
	const limit = 4 << 20    // PoolConfig.MaxResponseHeadBytes here
	const offered = 64 << 20 // what the endpoint tries to send
	for name, unit := range map[string]string{
		"one long line": strings.Repeat("a", 64<<10),
		"1xx after 1xx": strings.Repeat("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", 1<<10),
	} {
		t.Run(name, func(t *testing.T) {
			var sent atomic.Int64
			u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
				if name == "one long line" {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Long: ")
				}
				for sent.Load() < offered {
					n, err := io.WriteString(c, unit)
					sent.Add(int64(n))
					if err != nil {
						break
					}
				}
				return false
			})
			p := u.pool(PoolConfig{MaxResponseHeadBytes: limit})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/x", nil)
			resp, err := p.RoundTrip(req)
			if err == nil {
				resp.Body.Close()
				t.Fatal("a response head without end was taken")
			}
			if !strings.Contains(err.Error(), "response head") {
				t.Errorf("error %q does not say the head was too large", err)
			}
			waitFor(t, "the endpoint's writes to end", func() bool { return u.open.Load() == 0 })
			// The kernel's socket buffers hold a few MiB past what the pool read.
			if n := sent.Load(); n >= offered {
				t.Fatalf("the endpoint wrote all %d MiB: the pool read past its limit", n>>20)
			}
		})
	}
}
