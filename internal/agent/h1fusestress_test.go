package agent

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// startUnrulyBackend is an HTTP/1.1 endpoint that answers each request
// with its target as the body, and now and then closes the connection
// right after a response without saying so, shuts only its side and reads
// on, or answers late (past the fused reads' rechecks).
func startUnrulyBackend(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for seed := uint64(1); ; seed++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { // unrulyBackendConn
				defer wg.Done()
				defer c.Close()
				rnd := rand.New(rand.NewPCG(seed, 7))
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					switch rnd.IntN(20) {
					case 0:
						time.Sleep(25 * time.Millisecond)
					case 1:
						time.Sleep(6 * time.Millisecond)
					}
					body := req.URL.Path
					if _, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body); err != nil {
						return
					}
					switch rnd.IntN(12) {
					case 0:
						return // closed at once, unannounced
					case 1:
						c.(*net.TCPConn).CloseWrite() // shut, reading on
						c.SetReadDeadline(time.Now().Add(time.Second))
						io.Copy(io.Discard, c)
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestH1FuseStress: many keep-alive clients at once through the fast
// path, one after another (curl-like), pipelining a burst in one segment,
// pipelining one request ahead in segments of their own, and half-closing after their last request, to an endpoint
// that closes, half-closes and answers late at random: every response
// comes, in order, and every connection ends when its client's does.
func TestH1FuseStress(t *testing.T) {
	f := agentInFront(t, inFront{node: "n", octet: 94, svc: "unruly", vipPort: 19492, port: startUnrulyBackend(t), noRequest: true})
	const clients, perClient = 16, 40
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := stressClient(f.addr, i, perClient); err != nil {
				errs <- fmt.Errorf("client %d (mode %d): %w", i, i%4, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitFor(t, "the agent's client connections to end", func() bool { return f.agent.active.Load() == 0 })
}

func stressClient(addr string, id, n int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	target := func(k int) string { return fmt.Sprintf("/c%d-r%d", id, k) }
	// Bodyless and idempotent: sent again when the endpoint closed the
	// connection unannounced (a request with a body would fail, as with
	// http.Transport).
	request := func(k int) string { return "GET " + target(k) + " HTTP/1.1\r\nHost: unruly.demo\r\n\r\n" }
	read := func(k int) error {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return fmt.Errorf("response %d: %w", k, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 || string(b) != target(k) {
			return fmt.Errorf("response %d: %d %q %v", k, resp.StatusCode, b, err)
		}
		return nil
	}
	switch id % 4 {
	case 0, 3: // one after another; 3 half-closes after its last request
		for k := range n {
			if _, err := io.WriteString(c, request(k)); err != nil {
				return err
			}
			if k == n-1 && id%4 == 3 {
				c.(*net.TCPConn).CloseWrite()
			}
			if err := read(k); err != nil {
				return err
			}
		}
	case 1: // bursts of three in one segment
		for k := 0; k < n; k += 3 {
			var b strings.Builder
			for j := k; j < min(k+3, n); j++ {
				b.WriteString(request(j))
			}
			if _, err := io.WriteString(c, b.String()); err != nil {
				return err
			}
			for j := k; j < min(k+3, n); j++ {
				if err := read(j); err != nil {
					return err
				}
			}
		}
	case 2: // one ahead, in segments of their own
		if _, err := io.WriteString(c, request(0)); err != nil {
			return err
		}
		for k := range n {
			if k+1 < n {
				if _, err := io.WriteString(c, request(k+1)); err != nil {
					return err
				}
			}
			if err := read(k); err != nil {
				return err
			}
		}
	}
	if id%4 == 3 {
		if b, err := br.ReadByte(); err != io.EOF {
			return fmt.Errorf("after the last response: %q %v; want the end", b, err)
		}
	}
	return nil
}
