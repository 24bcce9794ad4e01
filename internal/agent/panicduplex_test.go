package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// panicRawConn is a socket (its file descriptor read through RawIO, as
// the fast path reads a plain client connection) whose first read on the
// pool's goroutine that sends a request body's rest (sendRest) panics: a
// bug while a full duplex body streams upstream.
type panicRawConn struct {
	*net.TCPConn
	fired *atomic.Bool
	armed *atomic.Bool // nil: armed from the start
}

func (c panicRawConn) SyscallConn() (syscall.RawConn, error) {
	rc, err := c.TCPConn.SyscallConn()
	if err != nil {
		return nil, err
	}
	return panicRawRead{rc, c.fired, c.armed}, nil
}

type panicRawRead struct {
	syscall.RawConn
	fired, armed *atomic.Bool
}

func (r panicRawRead) Read(f func(uintptr) bool) error {
	if !r.fired.Load() && (r.armed == nil || r.armed.Load()) && strings.Contains(string(debug.Stack()), "(*poolConn).sendRest") && r.fired.CompareAndSwap(false, true) {
		panic("test: a bug while reading a request body")
	}
	return r.RawConn.Read(f)
}

// TestPanicInDuplexBodyPlainSocket: TestPanicInAttemptReleasesEndpoint
// on a plain socket, the body's read panicking on sendRest (full duplex)
// before the endpoint answers: the request is recorded as a panic in its
// attempt (500, "panic: <value>", once), the endpoint and the request's
// slots released, the panic logged and counted once. (It was counted by
// the pool's OnPanic and the request recorded with the round trip's
// failure, not as a panic.)
func TestPanicInDuplexBodyPlainSocket(t *testing.T) {
	a, logPath, recv := panicObsAgent(t)
	c, sc := loopbackPair(t)
	fired := new(atomic.Bool)
	before := a.m.panics.Get()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer a.recoverConn(sc)
		a.handleConn(context.Background(), netip.MustParseAddrPort("127.75.0.1:19751"), panicRawConn{sc.(*net.TCPConn), fired, nil})
	}()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	const size = 1 << 20
	go func() {
		fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: po.demo\r\nContent-Length: %d\r\n\r\n", size)
		c.Write(make([]byte, size)) // fails once the agent closed the connection
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection still served")
	}
	if !fired.Load() {
		t.Fatal("no read of the body on sendRest (it did not go full duplex)")
	}
	checkPanicked(t, logPath, recv, "/upload", "test: a bug while reading a request body")
	holdsNothing(t, a)
	a.statsByEP.Range(func(k, v any) bool {
		if n := v.(*epStats).Active.Load(); n != 0 {
			t.Errorf("endpoint %v: %d active requests after the panic, want 0", k, n)
		}
		return true
	})
	if n := a.m.panics.Get() - before; n != 1 {
		t.Errorf("fogmesh_agent_panics_total rose by %d, want 1", n)
	}
}

// TestPanicInDuplexBodyAfterHead: a body's read panicking on sendRest
// after the answer's head went out (an echo streaming beside its chunked
// body) is recorded as a panic with the status the client saw (200,
// "panic: <value>", once), as a panic on forward's goroutine after the
// head is (l7panic.go), not as the answer's failed read (an i/o timeout
// of the connection the panic poisoned); logged and counted once (the
// pool's OnPanic), the request's slots released.
func TestPanicInDuplexBodyAfterHead(t *testing.T) {
	a, logPath, recv := panicObsAgentAt(t, 146, 19960, 19961)
	c, sc := loopbackPair(t)
	fired, armed := new(atomic.Bool), new(atomic.Bool)
	before := a.m.panics.Get()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer a.recoverConn(sc)
		a.handleConn(context.Background(), netip.MustParseAddrPort("127.146.0.1:19960"), panicRawConn{sc.(*net.TCPConn), fired, armed})
	}()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	fmt.Fprintf(c, "POST /duplex HTTP/1.1\r\nHost: po.demo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	echo := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, echo); err != nil || string(echo) != "hello" || resp.StatusCode != 200 {
		t.Fatalf("%d, echo %q, %v", resp.StatusCode, echo, err)
	}
	armed.Store(true) // the head is out: the body's next read on sendRest panics
	fmt.Fprintf(c, "5\r\nworld\r\n")
	if rest, err := io.ReadAll(resp.Body); err == nil {
		t.Errorf("the answer ended whole (%q) after its body's read panicked", rest)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection still served")
	}
	if !fired.Load() {
		t.Fatal("no read of the body on sendRest after the head")
	}
	checkPanickedStatus(t, logPath, recv, "/duplex", "test: a bug while reading a request body", 200)
	holdsNothing(t, a)
	if n := a.m.panics.Get() - before; n != 1 {
		t.Errorf("fogmesh_agent_panics_total rose by %d, want 1", n)
	}
}
