package transport

import (
	"testing"
	"time"
)

// retirable is what a pool asks a stream before it reuses it.
type retirable interface{ Retired() bool }

// TestRetiredStreamsSayRetired: a stream of a session Retire took out of
// use says so (a pool holding it for another request should drop it and
// dial a stream on the better path), while it goes on working; a stream
// of the fresh session does not.
func TestRetiredStreamsSayRetired(t *testing.T) {
	ln := listen(t, "127.0.0.1:0")
	srv := startServer(t, ln, mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)}, nil)
	c := NewClient(ClientConfig{SourceNode: "node-a"})
	t.Cleanup(func() { c.Close() })
	old, err := c.Dial(t.Context(), srv.addr, header("echo"))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	r, ok := old.(retirable)
	if !ok {
		t.Fatalf("a mesh stream (%T) cannot say whether its session was retired", old)
	}
	if r.Retired() {
		t.Fatal("a stream of the live session says retired")
	}
	if !c.Retire(srv.addr) {
		t.Fatal("no session retired")
	}
	if !r.Retired() {
		t.Fatal("a stream of the retired session does not say so")
	}
	roundTrip(t, old, "still works")
	fresh, err := c.Dial(t.Context(), srv.addr, header("echo"))
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if fresh.(retirable).Retired() {
		t.Fatal("a stream of the fresh session says retired")
	}
}

// afterRetirer is what an HTTP/2 connection over a stream asks to learn
// that its session was retired.
type afterRetirer interface {
	AfterRetire(f func()) (stop func() bool)
}

// TestAfterRetire: a stream's AfterRetire callback runs once its session
// is retired; a stopped one does not, nor one of the fresh session.
func TestAfterRetire(t *testing.T) {
	ln := listen(t, "127.0.0.1:0")
	srv := startServer(t, ln, mapDialer{"echo": serveWorkload(t, "127.0.0.1:0", echo)}, nil)
	c := NewClient(ClientConfig{SourceNode: "node-a"})
	t.Cleanup(func() { c.Close() })
	dial := func() afterRetirer {
		t.Helper()
		s, err := c.Dial(t.Context(), srv.addr, header("echo"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		r, ok := s.(afterRetirer)
		if !ok {
			t.Fatalf("a mesh stream (%T) has no AfterRetire", s)
		}
		return r
	}
	old, oldStopped := dial(), dial()
	fired := make(chan struct{})
	old.AfterRetire(func() { close(fired) })
	stop := oldStopped.AfterRetire(func() { t.Error("a stopped AfterRetire ran") })
	if !stop() {
		t.Fatal("stop before the retirement did not stop")
	}
	if !c.Retire(srv.addr) {
		t.Fatal("no session retired")
	}
	select {
	case <-fired:
	case <-time.After(10 * time.Second):
		t.Fatal("AfterRetire did not run after the retirement")
	}
	fresh := dial()
	freshFired := make(chan struct{}, 1)
	stopFresh := fresh.AfterRetire(func() { freshFired <- struct{}{} })
	// Another retirement of a session (the old one is gone, so retire the
	// fresh one's peer only after checking it did not fire on its own).
	select {
	case <-freshFired:
		t.Fatal("a stream of the fresh session ran its AfterRetire")
	default:
	}
	if !stopFresh() {
		t.Fatal("stop of a fresh stream's AfterRetire did not stop it")
	}
}
