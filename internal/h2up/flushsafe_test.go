package h2up_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/h2up"
)

// instantBody is a request body whose reads never wait (h2up sends what
// the windows take of it with the HEADERS).
type instantBody struct{ *bytes.Reader }

func (instantBody) ReadReady() bool { return true }
func (instantBody) Close() error    { return nil }

// TestFlushPendingEndpointNotReading: StartLater's flush runs on the
// agent's HTTP/2 server's read loop; an endpoint that stopped reading
// (its receive buffer small, the agent's send buffer too) must not hold
// it: once the socket may be full, FlushPending hands the write to a
// goroutine of its own. The test sends requests until one cannot take
// the connection's writer (a flush blocked in a write to the full
// socket holds it); every FlushPending before that must have returned.
// Without the socket check one blocks in the write and the test fails.
func TestFlushPendingEndpointNotReading(t *testing.T) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ready := make(chan struct{})
	var srv net.Conn
	srvDone := make(chan struct{})
	defer func() {
		if srv != nil {
			srv.Close() // the blocked flush's write fails: its goroutine ends
		}
		<-srvDone
	}()
	accepted := make(chan net.Conn, 1)
	go func() {
		defer close(srvDone)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		accepted <- c
		fr, err := serverFramer(c)
		if err != nil {
			return
		}
		// The window first: once the client acknowledged the SETTINGS it
		// applied both.
		fr.WriteWindowUpdate(0, 1<<31-1-65535)
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if s, ok := f.(*http2.SettingsFrame); ok && s.IsAck() {
				close(ready)
				return // and reads no more
			}
		}
	}()
	pool := h2up.New(h2up.Config{Dial: func(ctx context.Context) (net.Conn, error) {
		c, err := dialTo(ln.Addr().String())(ctx)
		if err == nil {
			c.(*net.TCPConn).SetWriteBuffer(8 << 10)
		}
		return c, err
	}})
	defer pool.Close()
	noop := h2up.CompletionFunc(func(*http.Response, error, *h2up.ReadLoop) {})
	payload := bytes.Repeat([]byte("x"), 4<<10)
	send := func(ctx context.Context) (h2up.Flusher, error) {
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://x/", instantBody{bytes.NewReader(payload)})
		req.ContentLength = int64(len(payload))
		return pool.StartLater(req, noop)
	}
	// The first request dials; the endpoint's windows are applied before
	// the ones that fill the socket.
	fl, err := send(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fl.FlushPending()
	select {
	case srv = <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("not accepted")
	}
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("the client did not acknowledge the endpoint's SETTINGS")
	}
	sent := 0
	for i := 0; ; i++ {
		if i == 10000 {
			t.Fatalf("%d bytes sent to an endpoint that does not read, and no write blocked", sent)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fl, err := send(ctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			t.Logf("the writer blocked after %d requests, %d bytes", i, sent)
			return // a flush handed to a goroutine blocks there, holding the writer
		}
		if err != nil {
			t.Fatal(err)
		}
		sent += len(payload)
		flushed := make(chan struct{})
		go func() {
			fl.FlushPending()
			close(flushed)
		}()
		select {
		case <-flushed:
		case <-time.After(5 * time.Second):
			t.Fatalf("FlushPending waited on an endpoint that stopped reading (%d bytes sent)", sent)
		}
		// A flush handed to a goroutine takes the writer before the next
		// request is buffered: frames piling up past the buffer would be
		// written by the request's own write (not what this tests).
		deadline := time.Now().Add(10 * time.Second)
		for h2up.WriteBuffered(pool) > 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
}

// panicWriteConn is a connection whose writes panic (a bug in a wrapper
// of the pool's Dial), counting its closes.
type panicWriteConn struct {
	net.Conn
	closes *atomic.Int32
}

func (panicWriteConn) Write([]byte) (int, error) { panic("write") }
func (c panicWriteConn) Close() error {
	c.closes.Add(1)
	return c.Conn.Close()
}

// TestDialSetupPanicClosesSocket: a panic while a dialed connection is
// set up (its preface's write here) goes on to the request's caller, and
// the socket dialed is closed, not left open for good.
func TestDialSetupPanicClosesSocket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var closes atomic.Int32
	pool := h2up.New(h2up.Config{Dial: func(ctx context.Context) (net.Conn, error) {
		c, err := dialTo(ln.Addr().String())(ctx)
		if err != nil {
			return nil, err
		}
		return panicWriteConn{c, &closes}, nil
	}})
	defer pool.Close()
	var p any
	func() {
		defer func() { p = recover() }()
		req, _ := http.NewRequest("GET", "http://x/", nil)
		pool.RoundTrip(req)
	}()
	if p != "write" {
		t.Fatalf("panic %v, want the setup's", p)
	}
	if closes.Load() != 1 {
		t.Fatalf("the dialed socket closed %d times, want once", closes.Load())
	}
}

// TestWaitingBeforeDial: Config.Waiting is called with the request's
// context before a request waits for a connection: its own dial, or
// another request's.
func TestWaitingBeforeDial(t *testing.T) {
	type key struct{}
	release := make(chan struct{})
	var mu sync.Mutex
	var seen []any
	waited := make(chan struct{}, 2)
	pool := h2up.New(h2up.Config{
		Dial: func(ctx context.Context) (net.Conn, error) {
			<-release
			return nil, errors.New("no endpoint")
		},
		Waiting: func(ctx context.Context) {
			mu.Lock()
			seen = append(seen, ctx.Value(key{}))
			mu.Unlock()
			select {
			case waited <- struct{}{}:
			default: // after the test's part: the failed dial's retries
			}
		},
	})
	defer pool.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(release)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(context.WithValue(context.Background(), key{}, i), "GET", "http://x/", nil)
			pool.RoundTrip(req)
		}()
		select {
		case <-waited: // while the dial has not ended
		case <-time.After(10 * time.Second):
			t.Fatalf("request %d waits for a connection without Waiting", i)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || seen[0] != 0 || seen[1] != 1 {
		t.Fatalf("Waiting saw %v, want each request's context once", seen)
	}
}
