package h2up

import (
	"context"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// Bugs a review of session 19's own changes found: each test fails
// without its fix.

// TestWriterGivingUpLeavesNoFrameUnflushed: a writer that finds another waiting for the
// write lock leaves its frames to that one's flush (owed); if the waiter
// then gives up (its request's context ended: writeFlushCtx), nobody
// flushes them: they sit in bw until some other write comes.
func TestWriterGivingUpLeavesNoFrameUnflushed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		s, err := ln.Accept()
		if err != nil {
			return
		}
		defer s.Close()
		io.Copy(io.Discard, s) // an endpoint that reads everything
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := newConn(New(Config{}), nc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close(io.EOF)

	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))

	inA, releaseA := make(chan struct{}), make(chan struct{})
	bctx, bcancel := context.WithCancel(context.Background()) // B's request context
	defer bcancel()
	aErr := make(chan error, 1)
	go func() { // A: e.g. a request's HEADERS
		aErr <- c.write(func() error {
			close(inA)
			<-releaseA
			bcancel() // B's context ends while A writes
			return c.fr.WritePing(false, [8]byte{1})
		})
	}()
	<-inA
	bErr := make(chan error, 1)
	go func() { bErr <- c.writeFlushCtx(bctx, func() error { return nil }, true) }() // B
	for c.waiting.Load() == 0 {
		runtime.Gosched()
	}
	close(releaseA)
	if err := <-aErr; err != nil {
		t.Fatal(err)
	}
	if err := <-bErr; err != errWaitDone {
		t.Logf("B took the lock (%v): the interleaving did not happen", err)
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.wmu.Lock()
		buffered, owed := c.bw.Buffered(), c.owed
		c.wmu.Unlock()
		if buffered == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes (A's frames) left unflushed 5 s on, with no writer left (owed=%v): B gave up the flush A left to it", buffered, owed)
		}
		time.Sleep(time.Millisecond) // polling, bounded by the deadline
	}
}
