package gateway

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// trackNet dials over loopback and records every connection it hands the
// gateway, to tell whether one is still open once Close returned. With
// hold, a dial completes only once the gateway's context is done (Close
// began): the dial that succeeds just as Close comes.
type trackNet struct {
	hold    bool
	entered chan struct{} // a dial began (hold only; buffered)

	mu    sync.Mutex
	conns []*seenConn
}

type seenConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *seenConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (n *trackNet) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if n.hold {
		n.entered <- struct{}{}
		<-ctx.Done()
	}
	c, err := (&net.Dialer{Timeout: 5 * time.Second}).Dial(network, addr)
	if err != nil {
		return nil, err
	}
	sc := &seenConn{Conn: c, closed: make(chan struct{})}
	n.mu.Lock()
	n.conns = append(n.conns, sc)
	n.mu.Unlock()
	return sc, nil
}

func (n *trackNet) Listen(ctx context.Context, network, addr string) (net.Listener, error) {
	return (&net.ListenConfig{}).Listen(ctx, network, addr)
}

func (n *trackNet) dialed() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.conns)
}

// open counts the dialed connections not closed yet.
func (n *trackNet) open() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	k := 0
	for _, c := range n.conns {
		select {
		case <-c.closed:
		default:
			k++
		}
	}
	return k
}

// connectRaw sends a CONNECT to gw and leaves the connection to the caller.
func connectRaw(gw, target string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", gw, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// TestGatewayCloseWaitsForDialingHandler: a CONNECT whose dial succeeds
// just as Close comes is waited for by Close; its upstream connection is
// closed when Close returns. Before Close counted handlers under mu with
// a closed check, Close returned while the handler was still dialing, and
// the handler then Added its tunnel to the WaitGroup after Close's Wait
// (a tunnel outliving Close; the race detector's WaitGroup misuse report
// when another tunnel made Wait block).
func TestGatewayCloseWaitsForDialingHandler(t *testing.T) {
	allowed := echo(t)
	for i := range 20 {
		tn := &trackNet{hold: true, entered: make(chan struct{}, 1)}
		s, err := New(Config{Allow: []string{allowed}, Network: tn})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- s.Serve(ln) }()
		c, err := connectRaw(ln.Addr().String(), allowed)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-tn.entered:
		case <-time.After(5 * time.Second):
			t.Fatal("the gateway never dialed")
		}
		s.Close()
		if k, all := tn.open(), tn.dialed(); k != 0 || all != 1 {
			t.Fatalf("run %d: Close returned with %d of %d dialed connections open (want the dial awaited and closed)", i, k, all)
		}
		if err := <-served; err != nil {
			t.Fatalf("Serve: %v", err)
		}
		c.Close()
	}
}

// TestGatewayServeCloseConcurrent runs Serve, CONNECTs and Close at once,
// many times (meant for -race): Close never returns with a tunnel open,
// and Serve returns nil.
func TestGatewayServeCloseConcurrent(t *testing.T) {
	allowed := echo(t)
	for i := range 50 {
		tn := &trackNet{}
		s, err := New(Config{Allow: []string{allowed}, Network: tn})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gw := ln.Addr().String()
		served := make(chan error, 1)
		go func() { served <- s.Serve(ln) }()
		var clients sync.WaitGroup
		for range 4 {
			clients.Add(1)
			go func() {
				defer clients.Done()
				c, err := connectRaw(gw, allowed)
				if err != nil {
					return
				}
				defer c.Close()
				io.Copy(io.Discard, c) // until the gateway ends it
			}()
		}
		if i%2 == 1 { // let a tunnel open first
			testenv.WaitFor(t, 5*time.Second, "a tunnel to open", func() bool { return tn.open() > 0 })
		}
		s.Close()
		if k := tn.open(); k != 0 {
			t.Fatalf("run %d: Close returned with %d tunnels open", i, k)
		}
		if err := <-served; err != nil {
			t.Fatalf("Serve: %v", err)
		}
		clients.Wait()
	}
}
