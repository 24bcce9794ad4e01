package httpproxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// chanBody is a request body whose client sends the parts put on ch (a
// closed ch: the end), and its BodyWaiter: it counts the round trips
// that went full duplex.
type chanBody struct {
	ch       chan string
	pending  string
	closed   bool
	duplexes atomic.Int32
}

func (b *chanBody) Read(p []byte) (int, error) {
	if b.pending == "" && !b.closed {
		s, ok := <-b.ch
		b.pending, b.closed = s, !ok
	}
	if b.pending == "" && b.closed {
		return 0, io.EOF
	}
	n := copy(p, b.pending)
	b.pending = b.pending[n:]
	return n, nil
}

// BodyWaits: nothing sent is left unread (a part, or the end: taken
// from ch if there, as the agent looks at what its reader holds).
func (b *chanBody) BodyWaits(SendRoomer) bool {
	if b.pending != "" || b.closed {
		return false
	}
	select {
	case s, ok := <-b.ch:
		b.pending, b.closed = s, !ok
		return false
	default:
		return true
	}
}

func (b *chanBody) Duplex(done <-chan struct{}) bool {
	b.duplexes.Add(1)
	return true
}

// duplexUpstream is an endpoint (net/http's server, full duplex) that
// answers a POST once it has read 5 bytes of its body: /early whole,
// else those bytes flushed, then the count of all it read; a GET with
// its path. It counts the connections it accepted.
func duplexUpstream(t *testing.T) (addr string, conns *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns = new(atomic.Int32)
	srv := &http.Server{Handler: http.HandlerFunc(testenv.DuplexEcho), ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), conns
}

func duplexPool(addr string) *Pool {
	return NewPool(PoolConfig{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}})
}

// duplexPost is a chunked POST of b to path, b its context's BodyWaiter.
func duplexPost(t *testing.T, path string, b *chanBody) *http.Request {
	t.Helper()
	ctx := WithStreamCancel(context.Background())
	SetBodyWaiter(ctx, b)
	req, err := http.NewRequestWithContext(ctx, "POST", "http://svc"+path, io.NopCloser(b))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	return req
}

// TestPoolDuplexAfterAnswer: a body whose client waits for the answer
// (and its echo of the first part) before it sends the rest gets them:
// the rest goes on beside the answer. A body all there (the common
// case) does not go full duplex.
func TestPoolDuplexAfterAnswer(t *testing.T) {
	addr, _ := duplexUpstream(t)
	p := duplexPool(addr)
	defer p.Close(true)

	b := &chanBody{ch: make(chan string, 4)}
	b.ch <- "hello"
	resp, err := p.RoundTrip(duplexPost(t, "/echo", b))
	if err != nil {
		t.Fatal(err)
	}
	echo := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, echo); err != nil || string(echo) != "hello" {
		t.Fatalf("echo %q, %v", echo, err)
	}
	b.ch <- " world" // only now
	close(b.ch)
	rest, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(rest) != "|n=11 err=<nil>" {
		t.Fatalf("rest %q, %v", rest, err)
	}
	if n := b.duplexes.Load(); n != 1 {
		t.Fatalf("%d round trips went full duplex, want 1", n)
	}

	// All of the body there before the answer: no second goroutine.
	b2 := &chanBody{ch: make(chan string, 4)}
	b2.ch <- "hello"
	b2.ch <- " world"
	close(b2.ch)
	resp, err = p.RoundTrip(duplexPost(t, "/echo", b2))
	if err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(all) != "hello|n=11 err=<nil>" {
		t.Fatalf("body all there: %q, %v", all, err)
	}
	if n := b2.duplexes.Load(); n != 0 {
		t.Fatalf("a body all there went full duplex (%d)", n)
	}
}

// TestPoolDuplexEarlyEndClosesConnection: an answer that ends while the
// body's rest is still to come (sent beside it) does not give its
// connection back to the pool: the next request goes on a new one, and
// the body's rest, once it comes, is written to nothing (the write
// fails), never read as the next request's.
func TestPoolDuplexEarlyEndClosesConnection(t *testing.T) {
	addr, conns := duplexUpstream(t)
	p := duplexPool(addr)
	defer p.Close(true)

	b := &chanBody{ch: make(chan string, 4)}
	b.ch <- "hello"
	resp, err := p.RoundTrip(duplexPost(t, "/early", b))
	if err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(all) != "hello" || b.duplexes.Load() != 1 {
		t.Fatalf("early answer %q, %v, %d full duplex", all, err, b.duplexes.Load())
	}
	b.ch <- strings.Repeat("x", 64<<10) // the rest, after the answer
	close(b.ch)
	if code, body := get(t, p, "GET", ""); code != 200 || body != "ok /x" {
		t.Fatalf("the next request: %d %q", code, body)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections, want 2: the one whose body was still going was reused", n)
	}
}

// panicBody panics in its Read when the client's next part is "PANIC".
type panicBody struct{ *chanBody }

func (b panicBody) Read(p []byte) (int, error) {
	if b.pending == "" && !b.closed {
		s, ok := <-b.ch
		b.pending, b.closed = s, !ok
	}
	if b.pending == "PANIC" {
		panic("body read")
	}
	return b.chanBody.Read(p)
}

// panicPool is duplexPool counting the panics OnPanic gets (the last in
// got).
func panicPool(addr string) (p *Pool, n *atomic.Int32, got *atomic.Value) {
	n, got = new(atomic.Int32), new(atomic.Value)
	p = NewPool(PoolConfig{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}, OnPanic: func(v any) { n.Add(1); got.Store(v) }})
	return p, n, got
}

// TestPoolDuplexBodyPanic: a panic in a body's Read on the goroutine that
// sends its rest, before the answer's head (the endpoint waits for 5
// bytes, 3 came), is the round trip's: RoundTrip panics on with its
// value once the connection is closed (a caller records it as a panic in
// its attempt, as when the body was read on its goroutine), and OnPanic
// does not get it too (logged and counted twice). The process goes on.
func TestPoolDuplexBodyPanic(t *testing.T) {
	addr, _ := duplexUpstream(t)
	p, n, _ := panicPool(addr)
	defer p.Close(true)
	b := &chanBody{ch: make(chan string, 4)}
	b.ch <- "hel"
	req := duplexPost(t, "/echo", b)
	req.Body = io.NopCloser(panicBody{b})
	go func() {
		waitFor(t, "the body to go full duplex", func() bool { return b.duplexes.Load() > 0 })
		b.ch <- "PANIC"
	}()
	raised := func() (v any) {
		defer func() { v = recover() }()
		resp, err := p.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		t.Errorf("RoundTrip returned (%v) after the body's read panicked before the head", err)
		return nil
	}()
	if raised != "body read" {
		t.Fatalf("RoundTrip raised %v, want the body's panic", raised)
	}
	p.mu.Lock()
	left := len(p.all)
	p.mu.Unlock()
	if left != 0 {
		t.Errorf("%d connections left in the pool after the panic", left)
	}
	if n.Load() != 0 {
		t.Errorf("OnPanic got the panic the round trip raised (%d)", n.Load())
	}
}

// TestPoolDuplexBodyPanicAfterHead: once the answer's head is returned, a
// panic in the body's Read on sendRest goes to PoolConfig.OnPanic, once,
// and the answer's read fails (the connection poisoned) rather than the
// process ending.
func TestPoolDuplexBodyPanicAfterHead(t *testing.T) {
	addr, _ := duplexUpstream(t)
	p, n, got := panicPool(addr)
	defer p.Close(true)
	b := &chanBody{ch: make(chan string, 4)}
	b.ch <- "hello"
	req := duplexPost(t, "/echo", b)
	req.Body = io.NopCloser(panicBody{b})
	resp, err := p.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	echo := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, echo); err != nil || string(echo) != "hello" {
		t.Fatalf("echo %q, %v", echo, err)
	}
	if b.duplexes.Load() == 0 {
		t.Fatal("the body did not go full duplex")
	}
	b.ch <- "PANIC"
	if rest, err := io.ReadAll(resp.Body); err == nil {
		t.Fatalf("the answer ended whole (%q) after its body's read panicked", rest)
	}
	waitFor(t, "OnPanic to get the body's panic", func() bool { return got.Load() == "body read" })
	if n.Load() != 1 {
		t.Errorf("OnPanic got %d panics, want 1", n.Load())
	}
}

// failBody fails its Read once ch is closed (the client reset its
// connection mid-body), as the agent's ClientBody does.
type failBody struct{ *chanBody }

func (b failBody) Read(p []byte) (int, error) {
	if b.pending == "" {
		s, ok := <-b.ch
		if !ok {
			return 0, &ClientBodyError{"connection reset by the client"}
		}
		b.pending = s
	}
	return b.chanBody.Read(p)
}

// TestPoolDuplexBodyFailsBeforeAnswer: a body that goes on beside its
// answer's wait (its client sent 3 bytes, the endpoint answers after 5)
// and whose client then fails it fails the round trip with the body's
// error (the client's doing: no retry, nothing held against the
// endpoint), not with the poisoned connection's timeout or a stale
// connection's error.
func TestPoolDuplexBodyFailsBeforeAnswer(t *testing.T) {
	addr, _ := duplexUpstream(t)
	p := duplexPool(addr)
	defer p.Close(true)
	for i := 0; i < 2; i++ { // the second on a reused connection
		if i == 1 {
			if code, body := get(t, p, "GET", ""); code != 200 || body != "ok /x" {
				t.Fatalf("GET: %d %q", code, body)
			}
		}
		b := &chanBody{ch: make(chan string, 4)}
		b.ch <- "hel"
		req := duplexPost(t, "/echo", b)
		req.Body = io.NopCloser(failBody{b})
		errc := make(chan error, 1)
		go func() {
			resp, err := p.RoundTrip(req)
			if err == nil {
				resp.Body.Close()
			}
			errc <- err
		}()
		waitFor(t, "the body to go on beside the answer's wait", func() bool { return b.duplexes.Load() == 1 })
		close(b.ch)
		var err error
		select {
		case err = <-errc:
		case <-time.After(10 * time.Second):
			t.Fatal("the round trip did not end after its body failed")
		}
		var cbe *ClientBodyError
		if !errors.As(err, &cbe) {
			t.Fatalf("round trip %d: %v (%T), want the body's *ClientBodyError", i, err, err)
		}
	}
}

// TestPoolDuplexBodyShortOfLength: a body that ends short of its
// Content-Length on the goroutine that sends its rest fails the round
// trip, as writeRequest refuses it (the endpoint would wait for the
// missing bytes, and the answer's read with it, for good).
func TestPoolDuplexBodyShortOfLength(t *testing.T) {
	addr, _ := duplexUpstream(t)
	p := duplexPool(addr)
	defer p.Close(true)
	b := &chanBody{ch: make(chan string, 4)}
	b.ch <- "hel"
	req := duplexPost(t, "/echo", b)
	req.ContentLength = 10
	errc := make(chan error, 1)
	go func() {
		resp, err := p.RoundTrip(req)
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		errc <- err
	}()
	waitFor(t, "the body to go on beside the answer's wait", func() bool { return b.duplexes.Load() == 1 })
	b.ch <- "l"
	close(b.ch) // 4 bytes of 10: the endpoint answers after 5
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "Content-Length 10") {
			t.Fatalf("round trip: %v, want the short body's error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the round trip still waits 10 s after its body ended short of its Content-Length")
	}
}
