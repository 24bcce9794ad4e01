package httpproxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// endlessBody sends "hello", then (its client slow: BodyWaits) bytes
// without end; Duplex hands the done channel of the goroutine that sends
// them (sendRest) on dones.
type endlessBody struct {
	started bool
	dones   chan (<-chan struct{})
}

func (b *endlessBody) Read(p []byte) (int, error) {
	if !b.started {
		b.started = true
		return copy(p, "hello"), nil
	}
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

func (b *endlessBody) BodyWaits(SendRoomer) bool { return b.started }

func (b *endlessBody) Duplex(done <-chan struct{}) bool {
	b.dones <- done
	return true
}

// deafUpstream accepts connections and reads nothing from them (closed
// at the test's end).
func deafUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

// TestPoolDuplexRoundTripPanicClosesConn: a panic on the round trip's
// goroutine after the body's rest went on beside it (goDuplex; here a
// test hook, as a bug would) closes the connection, so the goroutine
// sending that rest to an endpoint that reads nothing ends (its write
// fails) and lets go of the body: the agent's joinDuplex waits for it,
// and held the client's connection (and both sockets) for good.
func TestPoolDuplexRoundTripPanicClosesConn(t *testing.T) {
	p := duplexPool(deafUpstream(t))
	defer p.Close(true)
	p.testHookWritten = func() { panic("test: a bug in the round trip") }
	b := &endlessBody{dones: make(chan (<-chan struct{}), 1)}
	ctx := WithStreamCancel(context.Background())
	SetBodyWaiter(ctx, b)
	req, err := http.NewRequestWithContext(ctx, "POST", "http://svc/upload", io.NopCloser(b))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	raised := func() (v any) {
		defer func() { v = recover() }()
		resp, err := p.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		return nil
	}()
	if raised != "test: a bug in the round trip" {
		t.Fatalf("RoundTrip raised %v, want the hook's panic", raised)
	}
	var done <-chan struct{}
	select {
	case done = <-b.dones:
	default:
		t.Fatal("the body did not go full duplex")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the goroutine sending the body's rest still runs 10 s after the round trip panicked")
	}
	p.mu.Lock()
	left := len(p.all)
	p.mu.Unlock()
	if left != 0 {
		t.Errorf("%d connections left in the pool after the panic", left)
	}
}

// TestPoolDuplexBodylessAnswerReuses: an endpoint that answers 204 (an
// answer that ends at its head) once it has read the whole body, while
// the goroutine that sent the body's rest is between its last flush and
// its end (held there by a test hook until RoundTrip returned; the
// endpoint answers once it is there), gives its connection back: the
// next request goes on it. (endDuplex took the goroutine still running
// for a body partly sent, and closed it.)
func TestPoolDuplexBodylessAnswerReuses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns := new(atomic.Int32)
	restSent := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			io.WriteString(w, "ok")
			return
		}
		io.Copy(io.Discard, r.Body)
		select { // answered once sendRest is past its last flush, not while it flushes
		case <-restSent:
		case <-time.After(5 * time.Second):
		}
		w.WriteHeader(http.StatusNoContent)
	}), ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}}
	go srv.Serve(ln)
	defer srv.Close()
	p := duplexPool(ln.Addr().String())
	defer p.Close(true)
	returned := make(chan struct{})
	var hooked atomic.Int32
	p.testHookRestSent = func() {
		if hooked.Add(1) == 1 {
			close(restSent)
		}
		select {
		case <-returned:
		case <-time.After(5 * time.Second): // a fix that waits for this goroutine: fail, not hang
		}
	}
	b := &chanBody{ch: make(chan string, 4)}
	b.ch <- "hello"
	go func() {
		waitFor(t, "the body to go full duplex", func() bool { return b.duplexes.Load() > 0 })
		b.ch <- " world"
		close(b.ch)
	}()
	resp, err := p.RoundTrip(duplexPost(t, "/", b))
	close(returned)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || hooked.Load() != 1 {
		t.Fatalf("%d, the hook ran %d times", resp.StatusCode, hooked.Load())
	}
	if code, body := get(t, p, "GET", ""); code != 200 {
		t.Fatalf("the next request: %d %q", code, body)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections to the endpoint, want 1 (the first reused)", n)
	}
}

// TestPoolDuplexContextEndsRest: the request's context ending (the agent:
// its client's connection ended, after a panic between the round trip
// and the answer's read that never closes the answer) poisons the
// connection while the body's rest is still sent beside an answer
// already read whole (no read of it left to poison): the goroutine
// sending it to an endpoint that reads nothing ends, where it waited on
// its write for good (and the agent's joinDuplex with it).
func TestPoolDuplexContextEndsRest(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1)
		c.Read(buf) // the request's first bytes came: answer, then read nothing more
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		<-t.Context().Done()
	}()
	p := duplexPool(ln.Addr().String())
	defer p.Close(true)
	b := &endlessBody{dones: make(chan (<-chan struct{}), 1)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctx = WithStreamCancel(ctx)
	SetBodyWaiter(ctx, b)
	req, err := http.NewRequestWithContext(ctx, "POST", "http://svc/upload", io.NopCloser(b))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	resp, err := p.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp // never read nor closed (the caller panicked)
	done := <-b.dones
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the goroutine sending the body's rest still runs 10 s after the request's context ended")
	}
}
