package memnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/nettest"

	"github.com/fogmesh/fogmesh/internal/proxy"
)

// pair returns both ends of one memnet connection.
func pair(t testing.TB, n *Network) (client, server net.Conn, ln net.Listener) {
	t.Helper()
	ln, err := n.Listen(context.Background(), "tcp", "127.230.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	client, err = n.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close(); ln.Close() })
	return client, server, ln
}

// TestConnConformance runs x/net's net.Conn conformance suite (the one
// net.Pipe passes): basic I/O, ping-pong, racy reads and writes, past,
// present and future deadlines, Close during blocked calls, concurrent
// methods.
func TestConnConformance(t *testing.T) {
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		var n Network
		ln, err := n.Listen(context.Background(), "tcp", "127.230.0.2:0")
		if err != nil {
			return nil, nil, nil, err
		}
		c1, err = n.Dial(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			return nil, nil, nil, err
		}
		c2, err = ln.Accept()
		if err != nil {
			return nil, nil, nil, err
		}
		return c1, c2, func() { c1.Close(); c2.Close(); ln.Close() }, nil
	})
}

func TestListenAndDial(t *testing.T) {
	var n Network
	ln, err := n.Listen(context.Background(), "tcp", "127.230.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	if host != "127.230.0.3" || port == "0" {
		t.Fatalf("bound %s: want 127.230.0.3 and a chosen port", ln.Addr())
	}
	if _, err := n.Listen(context.Background(), "tcp", ln.Addr().String()); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second listen on %s: %v, want EADDRINUSE", ln.Addr(), err)
	}
	c, err := n.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if c.RemoteAddr().String() != ln.Addr().String() || s.LocalAddr().String() != ln.Addr().String() ||
		s.RemoteAddr().String() != c.LocalAddr().String() {
		t.Fatalf("addresses: client %s->%s, server %s->%s", c.LocalAddr(), c.RemoteAddr(), s.LocalAddr(), s.RemoteAddr())
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v", buf, err)
	}

	// A wildcard listener receives dials to any host at its port, and
	// holds the port for every host.
	w, err := n.Listen(context.Background(), "tcp", "0.0.0.0:7072")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := n.Listen(context.Background(), "tcp", "127.230.0.4:7072"); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("listen beside a wildcard: %v, want EADDRINUSE", err)
	}
	wc, err := n.Dial(context.Background(), "tcp", "127.230.0.4:7072")
	if err != nil {
		t.Fatal(err)
	}
	wc.Close()
}

func TestDialRefused(t *testing.T) {
	var n Network
	_, err := n.Dial(context.Background(), "tcp", "127.230.0.5:80")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial with no listener: %v, want ECONNREFUSED", err)
	}
	ln, err := n.Listen(context.Background(), "tcp", "127.230.0.5:80")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if _, err := n.Dial(context.Background(), "tcp", "127.230.0.5:80"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after the listener closed: %v, want ECONNREFUSED", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := n.Dial(ctx, "tcp", "127.230.0.5:80"); !errors.Is(err, context.Canceled) {
		t.Fatalf("dial with a done context: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	var n Network
	for _, tc := range []struct{ network, addr, want string }{
		{"udp", "127.230.0.6:1", `network "udp" not supported`},
		{"tcp", "127.230.0.6", "missing port"},
		{"tcp", "127.230.0.6:http", `bad port "http"`},
		{"tcp", "127.230.0.6:70000", `bad port "70000"`},
	} {
		if _, err := n.Listen(context.Background(), tc.network, tc.addr); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Listen(%s, %s): %v, want %q", tc.network, tc.addr, err, tc.want)
		}
		if _, err := n.Dial(context.Background(), tc.network, tc.addr); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Dial(%s, %s): %v, want %q", tc.network, tc.addr, err, tc.want)
		}
	}
}

// TestHalfClose: after CloseWrite the peer reads everything, then EOF, and
// can still answer; a write after CloseWrite fails.
func TestHalfClose(t *testing.T) {
	var n Network
	c, s, _ := pair(t, &n)
	if _, err := c.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("write after CloseWrite: %v, want EPIPE", err)
	}
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "request" {
		t.Fatalf("server read %q, %v; want the request then EOF", got, err)
	}
	if _, err := s.Write([]byte("response")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	got, err = io.ReadAll(c)
	if err != nil || string(got) != "response" {
		t.Fatalf("client read %q, %v", got, err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("write to a closed peer: %v, want EPIPE", err)
	}
}

// TestRelayFallsBackToCopy: proxy.Relay between memnet conns (not
// *net.TCPConn, so no splice) carries both directions and passes a
// half-close through.
func TestRelayFallsBackToCopy(t *testing.T) {
	var n Network
	client, front, _ := pair(t, &n)
	back, backend, _ := pair(t, &n)
	done := make(chan error, 1)
	go func() { _, _, err := proxy.Relay(context.Background(), front, back); done <- err }()

	payload := bytes.Repeat([]byte("0123456789abcdef"), 3*bufSize/16) // more than a buffer
	go func() {
		client.Write(payload)
		client.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.ReadAll(backend)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("backend read %d bytes, %v; want %d then EOF", len(got), err, len(payload))
	}
	if _, err := backend.Write([]byte("done")); err != nil {
		t.Fatal(err)
	}
	backend.Close()
	got, err = io.ReadAll(client)
	if err != nil || string(got) != "done" {
		t.Fatalf("client read %q, %v", got, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("relay: %v", err)
	}
}

// TestRelayIdleTimeout: proxy.WithIdleTimeout, which works by read
// deadlines, tears a silent memnet pair down with proxy.ErrIdle.
func TestRelayIdleTimeout(t *testing.T) {
	var n Network
	_, front, _ := pair(t, &n)
	back, _, _ := pair(t, &n)
	a, b := proxy.WithIdleTimeout(front, back, 20*time.Millisecond)
	if _, _, err := proxy.Relay(context.Background(), a, b); !errors.Is(err, proxy.ErrIdle) {
		t.Fatalf("relay of a silent pair: %v, want proxy.ErrIdle", err)
	}
}

// TestWriteBlocksWhenFull: a writer waits for the reader once a buffer's
// worth is unread, and a write deadline ends the wait with a timeout.
func TestWriteBlocksWhenFull(t *testing.T) {
	var n Network
	c, s, _ := pair(t, &n)
	big := make([]byte, 2*bufSize)
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	w, err := c.Write(big)
	if w != bufSize || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write into a full buffer: %d, %v; want %d and a timeout", w, err, bufSize)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("%v is not a net.Error with Timeout", err)
	}
	c.SetWriteDeadline(time.Time{})
	wrote := make(chan error, 1)
	go func() { _, err := c.Write(big[w:]); wrote <- err }()
	got, err := io.ReadFull(s, make([]byte, len(big)))
	if err != nil || got != len(big) {
		t.Fatalf("read %d, %v", got, err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
}

// TestCloseUnblocks: Close ends a blocked Accept, a blocked Read of the
// same conn (net.ErrClosed), and the peer's blocked Read (EOF).
func TestCloseUnblocks(t *testing.T) {
	var n Network
	ln, err := n.Listen(context.Background(), "tcp", "127.230.0.7:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan error, 1)
	go func() { _, err := ln.Accept(); accepted <- err }()
	ln.Close()
	if err := <-accepted; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}

	c, s, _ := pair(t, &n)
	own, peer := make(chan error, 1), make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 1)); own <- err }()
	go func() { _, err := s.Read(make([]byte, 1)); peer <- err }()
	c.Close()
	if err := <-own; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("blocked Read after own Close: %v, want net.ErrClosed", err)
	}
	if err := <-peer; err != io.EOF {
		t.Fatalf("peer's blocked Read after Close: %v, want EOF", err)
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
}

// TestListenerCloseResetsQueued: a connection dialed but never accepted is
// reset when its listener closes, so its dialer does not wait forever.
func TestListenerCloseResetsQueued(t *testing.T) {
	var n Network
	ln, err := n.Listen(context.Background(), "tcp", "127.230.0.8:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := n.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ln.Close()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read on a queued conn after the listener closed: %v, want ECONNRESET", err)
	}
}

// TestReset: Reset refuses new dials and fails the open connections at
// both ends with ECONNRESET, blocked calls included.
func TestReset(t *testing.T) {
	var n Network
	c, s, ln := pair(t, &n)
	addr := ln.Addr().String()
	if got := n.Conns(addr); got != 1 {
		t.Fatalf("Conns = %d, want 1", got)
	}
	blocked := make(chan error, 1)
	go func() { _, err := s.Read(make([]byte, 1)); blocked <- err }()
	if got := n.Reset(addr); got != 1 {
		t.Fatalf("Reset reset %d conns, want 1", got)
	}
	if err := <-blocked; !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("blocked read after Reset: %v, want ECONNRESET", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("write after Reset: %v, want ECONNRESET", err)
	}
	if _, err := n.Dial(context.Background(), "tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after Reset: %v, want ECONNREFUSED", err)
	}
	if got := n.Conns(addr); got != 0 {
		t.Fatalf("Conns after Reset = %d, want 0", got)
	}
}

// TestConcurrentEcho: many clients dial one echo server at once and each
// gets its own bytes back (run with -race).
func TestConcurrentEcho(t *testing.T) {
	var n Network
	ln, err := n.Listen(context.Background(), "tcp", "127.230.0.9:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	const clients = 16
	errs := make(chan error, clients)
	for i := range clients {
		go func() {
			c, err := n.Dial(context.Background(), "tcp", ln.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg := bytes.Repeat([]byte(fmt.Sprintf("client %02d;", i)), 10000)
			go func() {
				c.Write(msg)
				c.(interface{ CloseWrite() error }).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err == nil && !bytes.Equal(got, msg) {
				err = fmt.Errorf("client %d: got %d bytes back, want %d", i, len(got), len(msg))
			}
			errs <- err
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
