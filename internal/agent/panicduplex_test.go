package agent

import (
	"context"
	"fmt"
	"net"
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
}

func (c panicRawConn) SyscallConn() (syscall.RawConn, error) {
	rc, err := c.TCPConn.SyscallConn()
	if err != nil {
		return nil, err
	}
	return panicRawRead{rc, c.fired}, nil
}

type panicRawRead struct {
	syscall.RawConn
	fired *atomic.Bool
}

func (r panicRawRead) Read(f func(uintptr) bool) error {
	if !r.fired.Load() && strings.Contains(string(debug.Stack()), "(*poolConn).sendRest") && r.fired.CompareAndSwap(false, true) {
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
		a.handleConn(context.Background(), netip.MustParseAddrPort("127.75.0.1:19751"), panicRawConn{sc.(*net.TCPConn), fired})
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
