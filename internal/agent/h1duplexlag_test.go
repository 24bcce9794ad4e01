package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// A bidirectional chunked stream through the fast path: the client sends
// a part, waits for its echo, sends the next. The endpoint's first echo
// (its answer's head with it) must reach the client as soon as it is
// written: the pool looked at the endpoint only every earlyResponseWait
// (100 ms) while the body waited for the client, so each stream's first
// echo came ~100 ms late.

// startStreamEcho is an endpoint that echoes each part of a POST body as
// it reads it (flushed), and sends on writes when it wrote each.
func startStreamEcho(t *testing.T, writes chan<- time.Time) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		rc.EnableFullDuplex()
		buf := make([]byte, 64)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				select {
				case writes <- time.Now():
				default:
				}
				w.Write(buf[:n])
				rc.Flush()
			}
			if err != nil {
				return
			}
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// TestFastDuplexFirstEchoPrompt: the lag from the endpoint's write of a
// stream's first echo to the client's read of it, the least of 4 streams,
// is well under earlyResponseWait (it was ~100 ms each: the pool's wait
// for the client's next part ran out before it looked at the endpoint).
// On a port of protocol auto too, whose client connection (the detected
// bytes replayed before it) has no socket of its own: such a body never
// went full duplex, and a client that waits for the echo waited until
// timeouts.requestBody.
func TestFastDuplexFirstEchoPrompt(t *testing.T) {
	for _, proto := range []string{"http", "auto"} {
		t.Run(proto, func(t *testing.T) { firstEchoPrompt(t, proto) })
	}
}

func firstEchoPrompt(t *testing.T, proto string) {
	writes := make(chan time.Time, 16)
	octet, vipPort := 177, 19893
	if proto == "auto" {
		octet, vipPort = 193, 19895
	}
	f := agentInFront(t, inFront{node: "fdl", octet: octet, svc: "fdl", vipPort: vipPort, proto: proto, port: startStreamEcho(t, writes), noRequest: true})
	c, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	best := time.Hour
	for i := 0; i < 4; i++ {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		for len(writes) > 0 {
			<-writes
		}
		io.WriteString(c, "POST /s HTTP/1.1\r\nHost: fdl\r\nTransfer-Encoding: chunked\r\n\r\n5\r\npart1\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		echo := make([]byte, 5)
		if _, err := io.ReadFull(resp.Body, echo); err != nil || string(echo) != "part1" {
			t.Fatalf("stream %d: first echo %q, %v", i, echo, err)
		}
		read := time.Now()
		var wrote time.Time
		select {
		case wrote = <-writes:
		case <-time.After(5 * time.Second):
			t.Fatalf("stream %d: the endpoint's write not recorded", i)
		}
		best = min(best, read.Sub(wrote))
		for j := 2; j <= 3; j++ {
			fmt.Fprintf(c, "5\r\npart%d\r\n", j)
			if _, err := io.ReadFull(resp.Body, echo); err != nil || string(echo) != fmt.Sprintf("part%d", j) {
				t.Fatalf("stream %d: echo %d %q, %v", i, j, echo, err)
			}
		}
		io.WriteString(c, "0\r\n\r\n")
		if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
			t.Fatalf("stream %d: end %q, %v", i, rest, err)
		}
	}
	t.Logf("first echo: least lag from the endpoint's write to the client's read %v", best)
	if best >= 50*time.Millisecond {
		t.Fatalf("first echo: least lag %v over 4 streams; want well under earlyResponseWait (100 ms)", best)
	}
}

// TestFastDuplexClientGone: a chunked body that went on beside its
// answer's wait (the endpoint got its first part before the rest was
// sent: the pool flushes it only then) and then ended, its client gone
// while the endpoint says nothing: the upstream connection is closed once
// the fast path sees the client gone, as for a body read on the round
// trip's own goroutine (TestH1ClientGoneBeforeResponseHead), rather than
// held for good. /hang: before any answer (the head's watch); /stream: a
// silent stream after its head (the stream's watch: the body's goroutine
// had ended when the head came).
func TestFastDuplexClientGone(t *testing.T) {
	first, got, gone := make(chan struct{}, 1), make(chan struct{}, 1), make(chan struct{}, 1)
	answer := make(chan struct{}, 1)
	addr := serveH1(t, func(c net.Conn, br *bufio.Reader, req *http.Request) bool {
		if req.Method != http.MethodPost {
			c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
			return true
		}
		b := make([]byte, 3)
		if _, err := io.ReadFull(req.Body, b); err != nil {
			return false
		}
		first <- struct{}{}
		io.Copy(io.Discard, req.Body)
		got <- struct{}{}
		if req.URL.Path == "/stream" {
			<-answer
			c.Write([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"))
		}
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := br.ReadByte(); err != nil && !isTimeout(err) {
			gone <- struct{}{} // the agent closed it
		}
		return false
	})
	f := agentInFront(t, inFront{node: "fdg", octet: 179, svc: "fdg", vipPort: 19894, port: addr.Port, noRequest: true})
	for _, path := range []string{"/hang", "/stream"} {
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		io.WriteString(c, "POST "+path+" HTTP/1.1\r\nHost: fdg\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
		for i, ch := range []chan struct{}{first, got} {
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: the body's parts did not reach the endpoint", path)
			}
			if i == 0 {
				io.WriteString(c, "0\r\n\r\n")
			}
		}
		if path == "/stream" {
			answer <- struct{}{}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if b := make([]byte, 5); func() error { _, err := io.ReadFull(resp.Body, b); return err }() != nil {
				t.Fatalf("%s: the stream's first part did not come", path)
			}
		}
		c.Close() // the client gives up
		select {
		case <-gone:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the upstream request outlived its client by 10 s", path)
		}
	}
}
