package h2srv

import (
	"errors"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A panic of a connection's read loop (a bug: no input reaches one by
// design) is injected by the connection itself: panicConn's raw reads
// (the read loop's, rawread.go) run the read loop's callback only while
// not armed, and panic in it once armed, where a bug of frame processing
// would (inside rc.Read, holding the descriptor's read lock).

type panicConn struct {
	*net.TCPConn
	armed *atomic.Bool
}

func (c panicConn) SyscallConn() (syscall.RawConn, error) {
	rc, err := c.TCPConn.SyscallConn()
	return panicRaw{rc, c.armed}, err
}

type panicRaw struct {
	syscall.RawConn
	armed *atomic.Bool
}

func (r panicRaw) Read(f func(fd uintptr) bool) error {
	return r.RawConn.Read(func(fd uintptr) bool {
		if r.armed.Load() {
			panic("injected read loop panic")
		}
		return f(fd)
	})
}

// servePanicky serves s on a loopback listener whose connections are
// panicConns armed by armed; each ServeConn's return is sent on ended.
func servePanicky(t *testing.T, s *Server, armed *atomic.Bool) (addr string, ended chan struct{}) {
	t.Helper()
	return serveWrapped(t, s, func(c net.Conn) net.Conn { return panicConn{c.(*net.TCPConn), armed} })
}

// serveWrapped serves s on a loopback listener, each connection wrapped
// by wrap; each ServeConn's return is sent on ended.
func serveWrapped(t *testing.T, s *Server, wrap func(net.Conn) net.Conn) (addr string, ended chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ended = make(chan struct{}, 4)
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		s.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				s.ServeConn(wrap(c), ConnOptions{})
				ended <- struct{}{}
			}()
		}
	}()
	return ln.Addr().String(), ended
}

type loopPanic struct {
	v     any
	stack string
}

// expectLoopPanic waits for the panic recovered on the read loop
// (OnPanic) and checks that it was recovered where want runs.
func expectLoopPanic(t *testing.T, panics chan loopPanic, want string) {
	t.Helper()
	select {
	case p := <-panics:
		if p.v != "injected read loop panic" {
			t.Fatalf("OnPanic got %v", p.v)
		}
		if !strings.Contains(p.stack, want) {
			t.Fatalf("recovered outside %s:\n%s", want, p.stack)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnPanic not called")
	}
}

// expectClosed: the client's connection ends (the server closed it).
func expectClosed(t *testing.T, rc *rawClient) {
	t.Helper()
	for {
		_, err := rc.fr.ReadFrame()
		if err == nil {
			continue
		}
		if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("want the connection closed, got %v", err)
		}
		return
	}
}

// TestReadLoopPanic: a panic on serve's read loop goes to OnPanic, with
// its stack; the connection is closed and ServeConn returns, and the
// server serves the next connection.
func TestReadLoopPanic(t *testing.T) {
	var armed atomic.Bool
	panics := make(chan loopPanic, 2)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		OnPanic: func(v any) { panics <- loopPanic{v, string(debug.Stack())} }}
	addr, ended := servePanicky(t, s, &armed)
	rc := newRawClient(t, addr)
	rc.headers(1, true)
	if got := readUntilEnd(rc, 1, nil); got != "ok" {
		t.Fatalf("stream 1: %q", got)
	}
	armed.Store(true)
	rc.fr.WritePing(false, [8]byte{1})
	expectLoopPanic(t, panics, "h2srv.(*conn).serve")
	expectClosed(t, rc)
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("ServeConn did not return")
	}

	armed.Store(false)
	rc = newRawClient(t, addr)
	rc.headers(1, true)
	if got := readUntilEnd(rc, 1, nil); got != "ok" {
		t.Fatalf("next connection's stream 1: %q", got)
	}
}

// TestReadForPanic: a panic of the read loop on the goroutine that took
// it over from a handler running inline (readFor) goes to OnPanic; the
// connection is closed, the handler's stream ends (its context done), and
// ServeConn returns once the handler does.
func TestReadForPanic(t *testing.T) {
	setInlineLimit(t, time.Millisecond)
	var armed atomic.Bool
	panics := make(chan loopPanic, 2)
	handler := make(chan bool, 1) // the request's context ended
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			handler <- true
		case <-time.After(10 * time.Second):
			handler <- false
		}
	}), OnPanic: func(v any) { panics <- loopPanic{v, string(debug.Stack())} }}
	addr, ended := servePanicky(t, s, &armed)
	before := takeOvers.Load()
	rc := newRawClient(t, addr)
	rc.headers(1, true)
	for deadline := time.Now().Add(10 * time.Second); takeOvers.Load() == before; {
		if time.Now().After(deadline) {
			t.Fatal("the handler's read loop was never taken over")
		}
		time.Sleep(time.Millisecond)
	}
	armed.Store(true)
	rc.fr.WritePing(false, [8]byte{2})
	expectLoopPanic(t, panics, "h2srv.(*conn).readFor")
	expectClosed(t, rc)
	if !<-handler {
		t.Fatal("the handler's request context did not end")
	}
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("ServeConn did not return")
	}
}

// writePanicConn hides its connection's SyscallConn (the read loop reads
// by blocking reads, and every handler runs on a worker) and panics in
// Write once armed.
type writePanicConn struct {
	net.Conn
	armed *atomic.Bool
}

func (c writePanicConn) Write(p []byte) (int, error) {
	if c.armed.CompareAndSwap(true, false) {
		panic("injected write panic")
	}
	return c.Conn.Write(p)
}

// TestWorkerPanicInStreamEnd: a panic on a worker outside its handler
// (here the response's last write, in the stream's end) goes to OnPanic;
// the connection is closed, ServeConn returns and the server serves on.
func TestWorkerPanicInStreamEnd(t *testing.T) {
	var armed atomic.Bool
	panics := make(chan loopPanic, 2)
	s := &Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		OnPanic: func(v any) { panics <- loopPanic{v, string(debug.Stack())} }}
	addr, ended := serveWrapped(t, s, func(c net.Conn) net.Conn { return writePanicConn{c, &armed} })
	rc := newRawClient(t, addr)
	rc.headers(1, true)
	if got := readUntilEnd(rc, 1, nil); got != "ok" {
		t.Fatalf("stream 1: %q", got)
	}
	armed.Store(true)
	rc.headers(3, true)
	select {
	case p := <-panics:
		if p.v != "injected write panic" || !strings.Contains(p.stack, "h2srv.recoverWorker") {
			t.Fatalf("OnPanic got %v, recovered at:\n%s", p.v, p.stack)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("OnPanic not called")
	}
	expectClosed(t, rc)
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("ServeConn did not return")
	}
	rc = newRawClient(t, addr)
	rc.headers(1, true)
	if got := readUntilEnd(rc, 1, nil); got != "ok" {
		t.Fatalf("next connection's stream 1: %q", got)
	}
}
