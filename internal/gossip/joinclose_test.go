package gossip

import (
	"net"
	"sync"
	"testing"
	"time"
)

// TestCloseEndsJoinToSilentPeers: memberlist's Join takes no context and
// tries each address in turn, waiting up to TCPTimeout (1 s) for each
// silent one (a peer that takes the connection and never answers): a
// Join to ten of them went on for about ten seconds after Close, and the
// agent's Close waits for its Join. Close now ends the Join's dials and
// connections: it returns at once.
func TestCloseEndsJoinToSilentPeers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.84.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 1)
	var mu sync.Mutex
	var held []net.Conn
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // silent: never read, never answered
			mu.Unlock()
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})

	g, err := New(Config{Name: "joiner", BindAddr: "127.84.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	const silent = 10
	addrs := make([]string, silent)
	for i := range addrs {
		addrs[i] = ln.Addr().String()
	}
	type result struct {
		n   int
		err error
	}
	joined := make(chan result, 1)
	go func() {
		n, err := g.Join(addrs)
		joined <- result{n, err}
	}()
	select {
	case <-accepted: // the Join waits on its first silent peer
	case <-time.After(10 * time.Second):
		t.Fatal("the Join did not reach the silent peer")
	}
	g.Close()
	closed := time.Now()
	// Before, the Join waited about 1 s more for each silent peer left
	// (about 9 s); one TCPTimeout is the most it may take now.
	select {
	case r := <-joined:
		if r.n != 0 || r.err == nil {
			t.Errorf("Join to silent peers: %d answered, err %v; want 0 and an error", r.n, r.err)
		}
		t.Logf("Join returned %v after Close", time.Since(closed))
	case <-time.After(time.Second):
		r := <-joined
		t.Fatalf("the Join to %d silent peers went on %v after Close returned (%d answered)", silent, time.Since(closed), r.n)
	}
}
