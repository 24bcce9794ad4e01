package relay

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// heldConn holds its first RemoteAddr call (Serve's, right after it took
// the connection) until release is closed, and counts its Close calls.
type heldConn struct {
	net.Conn
	once    sync.Once
	entered chan struct{}
	release chan struct{}
	closes  atomic.Int32
}

func (c *heldConn) RemoteAddr() net.Addr {
	c.once.Do(func() {
		close(c.entered)
		<-c.release
	})
	return c.Conn.RemoteAddr()
}

func (c *heldConn) Close() error {
	c.closes.Add(1)
	return c.Conn.Close()
}

type heldListener struct {
	net.Listener
	conn chan *heldConn
}

func (l *heldListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	hc := &heldConn{Conn: c, entered: make(chan struct{}), release: make(chan struct{})}
	l.conn <- hc
	return hc, nil
}

// TestServerCloseWaitsForAcceptedConn: Close, coming while Serve is between
// taking a connection and starting its goroutine, waits for that goroutine
// (it was counted under the lock Close takes); before, Serve counted it
// after that lock, so the goroutine started after Close's wait had
// returned (or raced it: WaitGroup.Add at zero concurrent with Wait) and
// outlived Close.
func TestServerCloseWaitsForAcceptedConn(t *testing.T) {
	ca := newCA(t)
	srv, err := New(Config{Source: source(t, ca, "relay", "r1")})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.83.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &heldListener{Listener: inner, conn: make(chan *heldConn, 1)}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	d, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var hc *heldConn
	select {
	case hc = <-ln.conn:
	case <-time.After(10 * time.Second):
		t.Fatal("no connection accepted")
	}
	select {
	case <-hc.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve never looked at the connection")
	}

	// Close while Serve is held: the connection is tracked, its goroutine
	// not yet started.
	closed := make(chan int32)
	go func() {
		srv.Close()
		closed <- hc.closes.Load() // as Close returns
	}()
	var atReturn int32
	select {
	case atReturn = <-closed: // returned with the connection mid-accept
		close(hc.release)
	case <-time.After(500 * time.Millisecond): // Close waits for it, as it should
		close(hc.release)
		select {
		case atReturn = <-closed:
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not return once Serve went on")
		}
	}
	// Close closed the connection once; the connection's goroutine, which
	// must have ended before Close returned, closes it again as it ends.
	if atReturn != 2 {
		t.Errorf("Close returned with the connection closed %d times, want 2: its goroutine ran after Close", atReturn)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
}

// TestServeAfterClose: Serve after Close returns at once, closes its
// listener and accepts nothing.
func TestServeAfterClose(t *testing.T) {
	ca := newCA(t)
	srv, err := New(Config{Source: source(t, ca, "relay", "r1")})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
	ln, err := net.Listen("tcp", "127.83.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve after Close did not return")
	}
	if _, err := ln.Accept(); err == nil {
		t.Error("Serve after Close left its listener open")
	}
}
