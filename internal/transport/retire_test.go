package transport

import (
	"testing"
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
