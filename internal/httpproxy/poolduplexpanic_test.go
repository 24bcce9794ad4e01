package httpproxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// endlessBody sends "hello", then (its client slow: BodyWaits) bytes
// without end; Duplex hands the done channel of the goroutine that sends
// them (sendRest) on dones.
type endlessBody struct {
	started bool
	dones   chan (<-chan struct{})
}

func (b *endlessBody) Read(p []byte) (int, error) {
	if !b.started {
		b.started = true
		return copy(p, "hello"), nil
	}
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

func (b *endlessBody) BodyWaits() bool { return b.started }

func (b *endlessBody) Duplex(done <-chan struct{}) bool {
	b.dones <- done
	return true
}

// deafUpstream accepts connections and reads nothing from them (closed
// at the test's end).
func deafUpstream(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

// TestPoolDuplexRoundTripPanicClosesConn: a panic on the round trip's
// goroutine after the body's rest went on beside it (goDuplex; here a
// test hook, as a bug would) closes the connection, so the goroutine
// sending that rest to an endpoint that reads nothing ends (its write
// fails) and lets go of the body: the agent's joinDuplex waits for it,
// and held the client's connection (and both sockets) for good.
func TestPoolDuplexRoundTripPanicClosesConn(t *testing.T) {
	p := duplexPool(deafUpstream(t))
	defer p.Close(true)
	p.testHookWritten = func() { panic("test: a bug in the round trip") }
	b := &endlessBody{dones: make(chan (<-chan struct{}), 1)}
	ctx := WithStreamCancel(context.Background())
	SetBodyWaiter(ctx, b)
	req, err := http.NewRequestWithContext(ctx, "POST", "http://svc/upload", io.NopCloser(b))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	raised := func() (v any) {
		defer func() { v = recover() }()
		resp, err := p.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		return nil
	}()
	if raised != "test: a bug in the round trip" {
		t.Fatalf("RoundTrip raised %v, want the hook's panic", raised)
	}
	var done <-chan struct{}
	select {
	case done = <-b.dones:
	default:
		t.Fatal("the body did not go full duplex")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the goroutine sending the body's rest still runs 10 s after the round trip panicked")
	}
	p.mu.Lock()
	left := len(p.all)
	p.mu.Unlock()
	if left != 0 {
		t.Errorf("%d connections left in the pool after the panic", left)
	}
}
