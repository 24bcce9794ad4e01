package paths

// Which failed dials count against a path: a caller that gave up or a
// slow workload says nothing of it; a dial that hangs does.

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// TestCancelledDialKeepsPaths: a Dial whose caller gave up (its context
// ended) says nothing about the path: a punched path and its open streams
// stay, and a direct path stays direct (not skipped for RetryAfter).
func TestCancelledDialKeepsPaths(t *testing.T) {
	l := newLab(t)
	punching := func(c *Config) { c.UDPAddr = "127.0.0.1:0" }
	a := l.node("site-a", "a", punching)
	b := l.node("site-b", "b", punching)
	c := l.node("site-c", "c", nil)
	waitRelay(t, true, a, b)
	waitRelay(t, false, c)
	pb := b.peer()
	pb.Addr = closedAddr(t)
	openEcho(t, a.m, pb).Close()
	waitFor(t, "a punched path", func() bool { p, _ := pathTo(a.m, "b"); return p.Kind == Punched })
	s := openEcho(t, a.m, pb)
	defer s.Close()
	if s.RemoteAddr().Network() != "udp" {
		t.Fatal("not punched")
	}
	sc := openEcho(t, a.m, c.peer())
	defer sc.Close()
	if p, _ := pathTo(a.m, "c"); p.Kind != Direct {
		t.Fatalf("path to c %+v", p)
	}

	gone, cancel := context.WithCancel(t.Context())
	cancel()
	for _, p := range []Peer{pb, c.peer()} {
		if _, err := a.m.Dial(gone, p, header("echo")); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled dial to %s: %v", p.Name, err)
		}
	}
	if err := s.try("after a cancelled dial"); err != nil {
		t.Fatalf("a cancelled dial broke the punched path's streams: %v", err)
	}
	sc.echo(t, "after a cancelled dial")
	if p, _ := pathTo(a.m, "b"); p.Kind != Punched {
		t.Fatalf("path to b after a cancelled dial: %+v", p)
	}
	if p, _ := pathTo(a.m, "c"); p.Kind != Direct {
		t.Fatalf("path to c after a cancelled dial: %+v", p)
	}
	// A first dial, cancelled, to a peer never dialed: its direct
	// attempt failed for the caller, not for the path.
	d := l.node("site-d", "d", nil)
	waitRelay(t, false, d)
	if _, err := a.m.Dial(gone, d.peer(), header("echo")); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled dial to d: %v", err)
	}
	before := relayDials(a.m)
	for _, p := range []Peer{c.peer(), d.peer()} {
		openEcho(t, a.m, p).Close()
		if ps, _ := pathTo(a.m, p.Name); ps.Kind != Direct || relayDials(a.m) != before {
			t.Fatalf("path to %s after a cancelled dial: %+v, %d relayed sessions (was %d)", p.Name, ps, relayDials(a.m), before)
		}
	}
}

// blackHole is a loopback address that accepts TCP connections and never
// answers (a TLS handshake there hangs).
func blackHole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range conns {
					c.Close()
				}
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// TestDeadlineMarksDirectSlow: a direct attempt that hangs until the
// caller's deadline (a connect timeout shorter than the head start and
// the mesh dial timeout) counts against the direct path: the next Dial
// goes through the relay at once instead of hanging again.
func TestDeadlineMarksDirectSlow(t *testing.T) {
	l := newLab(t)
	a := l.node("site-a", "a", func(c *Config) { c.DialTimeout = 20 * time.Second })
	b := l.node("site-b", "b", nil)
	waitRelay(t, false, a, b)
	pb := b.peer()
	pb.Addr = blackHole(t)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := a.m.Dial(ctx, pb, header("echo")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial through the black hole: %v", err)
	}
	ctx, cancel = context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := a.m.Dial(ctx, pb, header("echo"))
	if err != nil {
		t.Fatalf("second dial: %v", err)
	}
	c.Close()
	if p, _ := pathTo(a.m, "b"); p.Kind != Relayed {
		t.Fatalf("path %+v, want relayed", p)
	}
}

// TestSlowWorkloadKeepsPaths: a stream whose caller's deadline passes
// while the peer is still connecting it to a slow workload fails alone:
// the path is live, so its other streams go on and it stays the path.
func TestSlowWorkloadKeepsPaths(t *testing.T) {
	l := newLab(t)
	punching := func(c *Config) { c.UDPAddr = "127.0.0.1:0" }
	a := l.node("site-a", "a", punching)
	b := l.node("site-b", "b", punching)
	waitRelay(t, true, a, b)
	pb := b.peer()
	pb.Addr = closedAddr(t)
	openEcho(t, a.m, pb).Close()
	waitFor(t, "a punched path", func() bool { p, _ := pathTo(a.m, "b"); return p.Kind == Punched })
	s := openEcho(t, a.m, pb)
	defer s.Close()
	if s.RemoteAddr().Network() != "udp" {
		t.Fatal("not punched")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := a.m.Dial(ctx, pb, header("slow")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow workload: %v", err)
	}
	if err := s.try("after a slow workload"); err != nil {
		t.Fatalf("a slow workload broke the punched path's streams: %v", err)
	}
	if p, _ := pathTo(a.m, "b"); p.Kind != Punched {
		t.Fatalf("path after a slow workload: %+v", p)
	}

	// Once the peer is gone, the same deadline drops the dead path.
	b.close()
	if err := streamEnded(s); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, err := a.m.Dial(ctx, pb, header("echo")); err == nil {
		t.Fatal("dialed a closed node")
	}
	a.m.mu.Lock()
	pa := a.m.peers["b"].punched
	a.m.mu.Unlock()
	if pa != nil {
		t.Fatal("the punched path to a closed node was kept")
	}
}

// TestSlowWorkloadKeepsDirect: a caller's deadline that passes while the
// peer connects a slow workload, over a live direct session, leaves the
// path direct (no relay for RetryAfter).
func TestSlowWorkloadKeepsDirect(t *testing.T) {
	l := newLab(t)
	a := l.node("site-a", "a", nil)
	b := l.node("site-b", "b", nil)
	waitRelay(t, false, a, b)
	s := openEcho(t, a.m, b.peer())
	defer s.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := a.m.Dial(ctx, b.peer(), header("slow")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow workload: %v", err)
	}
	s.echo(t, "after a slow workload")
	// And when the slow workload is the first stream to a peer: the
	// direct session came up, the deadline is the workload's.
	c := l.node("site-c", "c", nil)
	waitRelay(t, false, c)
	ctx, cancel = context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if _, err := a.m.Dial(ctx, c.peer(), header("slow")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow workload first: %v", err)
	}
	for _, p := range []Peer{b.peer(), c.peer()} {
		openEcho(t, a.m, p).Close()
		if ps, _ := pathTo(a.m, p.Name); ps.Kind != Direct || relayDials(a.m) != 0 {
			t.Fatalf("path to %s after a slow workload: %+v, %d relayed sessions", p.Name, ps, relayDials(a.m))
		}
	}
}
