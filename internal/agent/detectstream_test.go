package agent

import (
	"bufio"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/transport"
)

// loopbackPair is a connected pair of loopback TCP connections.
func loopbackPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-acc
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

type detectResult struct {
	proto             string
	peeked, fromLocal []byte
	err               error
}

// startDetect runs detectStream on a fresh client/stream and workload/local
// pair and returns the client's and the workload's ends.
func startDetect(t *testing.T, ctx context.Context) (client, workload net.Conn, res chan detectResult) {
	t.Helper()
	client, stream := loopbackPair(t)
	local, workload := loopbackPair(t)
	res = make(chan detectResult, 1)
	go func() {
		p, peeked, fromLocal, err := detectStream(ctx, stream, local, func(string, any) {})
		res <- detectResult{p, peeked, fromLocal, err}
	}()
	return client, workload, res
}

func waitDetect(t *testing.T, res chan detectResult) detectResult {
	t.Helper()
	select {
	case r := <-res:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("detectStream never decided")
		return detectResult{}
	}
}

// TestDetectStreamNoTimeout: at the destination a client that waits, or
// pauses inside the method, longer than the source's 500 ms window is
// still read as HTTP (it was relayed as TCP by its agent and must be
// served per request, not relayed with the headers it wrote).
func TestDetectStreamNoTimeout(t *testing.T) {
	for _, c := range []struct{ first, req string }{{"", "GET / HTTP/1.1\r\n"}, {"G", "GET / HTTP/1.1\r\n"}, {"PO", "POST / HTTP/1.1\r\n"}} {
		first := c.first
		client, _, res := startDetect(t, context.Background())
		if first != "" {
			client.Write([]byte(first))
		}
		time.Sleep(700 * time.Millisecond) // the slow client under test, not synchronisation
		select {
		case r := <-res:
			t.Fatalf("%q then a pause: decided %q (%q) before the client went on", first, r.proto, r.peeked)
		default:
		}
		client.Write([]byte(c.req[len(first):]))
		r := waitDetect(t, res)
		if r.err != nil || r.proto != "http" || string(r.peeked[:len(first)]) != first {
			t.Errorf("%q then a pause then the rest: %+v", first, r)
		}
	}
}

// TestDetectStreamDecides: bytes that rule HTTP out, MQTT, a client that
// ends, and a workload that speaks first decide at once.
func TestDetectStreamDecides(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"GET / HTTP/1.1\r\n", "http"},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http2"},
		{"\x10\x0e\x00\x04MQTT", "mqtt"},
		{"ping\n", "tcp"},
		{"GETX", "tcp"},
		{"P\x00", "tcp"},
	} {
		client, _, res := startDetect(t, context.Background())
		client.Write([]byte(c.in))
		if r := waitDetect(t, res); r.err != nil || r.proto != c.want || len(r.peeked) == 0 || c.in[:len(r.peeked)] != string(r.peeked) {
			t.Errorf("%q: %+v, want %s", c.in, r, c.want)
		}
	}

	// The client half-closes without a byte.
	client, _, res := startDetect(t, context.Background())
	client.(*net.TCPConn).CloseWrite()
	if r := waitDetect(t, res); r.err != nil || r.proto != "tcp" || len(r.peeked) != 0 {
		t.Errorf("client closed: %+v", r)
	}

	// A server-speaks-first protocol: the workload's banner decides, and is
	// handed back for the client; a partial method the client sent stays.
	for _, first := range []string{"", "G"} {
		client, workload, res := startDetect(t, context.Background())
		if first != "" {
			client.Write([]byte(first))
		}
		workload.Write([]byte("220 smtp ready\r\n"))
		r := waitDetect(t, res)
		if r.err != nil || r.proto != "tcp" || string(r.fromLocal) != "220 smtp ready\r\n" || !isPrefix(string(r.peeked), first) {
			t.Errorf("banner first (client sent %q): %+v", first, r)
		}
	}

	// The stream ends (ctx): an error, no decision.
	ctx, cancel := context.WithCancel(context.Background())
	_, _, res = startDetect(t, ctx)
	cancel()
	if r := waitDetect(t, res); !errors.Is(r.err, context.Canceled) {
		t.Errorf("cancelled: %+v", r)
	}
}

func isPrefix(got, of string) bool { return len(got) <= len(of) && of[:len(got)] == got }

// TestRelayStreamAutoServerFirst: a mesh stream to an auto port whose
// workload speaks first (SMTP-like) is relayed as bytes both ways, though
// the destination waits for the client's first bytes without a limit.
func TestRelayStreamAutoServerFirst(t *testing.T) {
	client, stream := loopbackPair(t)
	local, workload := loopbackPair(t)
	var a Agent
	mc := &meshConn{countedConn: &countedConn{Conn: local, done: func() {}}, mode: modeDetect}
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.RelayStream(context.Background(), transport.Header{Namespace: "demo", Service: "mail", Endpoint: "mail-a", Port: "any", Source: "b"}, stream, mc)
	}()
	deadline := time.Now().Add(10 * time.Second)
	client.SetDeadline(deadline)
	workload.SetDeadline(deadline)
	workload.Write([]byte("220 ready\r\n"))
	br := bufio.NewReader(client)
	if line, err := br.ReadString('\n'); err != nil || line != "220 ready\r\n" {
		t.Fatalf("client got banner %q, %v", line, err)
	}
	client.Write([]byte("HELO x\r\n"))
	if line, err := bufio.NewReader(workload).ReadString('\n'); err != nil || line != "HELO x\r\n" {
		t.Fatalf("workload got %q, %v", line, err)
	}
	client.Close()
	workload.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("RelayStream did not return after both ends closed")
	}
}

// detectPanicConn's Read panics (a bug of a connection's, injected).
type detectPanicConn struct{ net.Conn }

func (detectPanicConn) Read([]byte) (int, error) { panic("injected read panic") }

// TestDetectStreamReadPanic: a panic of detectStream's read of the client's
// stream, or of the workload's connection, is recovered on its goroutine
// and handed to panicked (the agent logs and counts it), and the stream
// fails instead of the agent's process ending.
func TestDetectStreamReadPanic(t *testing.T) {
	for _, side := range []string{"stream", "local"} {
		client, stream := loopbackPair(t)
		local, _ := loopbackPair(t)
		if side == "stream" {
			stream = detectPanicConn{stream}
		} else {
			local = detectPanicConn{local}
			client.Write([]byte("GET / HTTP/1.1\r\n")) // the client's read ends too
		}
		whats := make(chan string, 2)
		res := make(chan detectResult, 1)
		go func() {
			p, peeked, fromLocal, err := detectStream(context.Background(), stream, local, func(what string, p any) {
				if p != "injected read panic" {
					t.Errorf("%s: panicked got %v", side, p)
				}
				whats <- what
			})
			res <- detectResult{p, peeked, fromLocal, err}
		}()
		r := waitDetect(t, res)
		if !errors.Is(r.err, errDetectPanicked) {
			t.Fatalf("%s: detectStream = %q, %v; want errDetectPanicked", side, r.proto, r.err)
		}
		select {
		case w := <-whats:
			t.Logf("%s: %s", side, w)
		default:
			t.Fatalf("%s: the panic was not handed to panicked", side)
		}
	}
}
