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

// startEchoPathBackend serves HTTP/1.1 on a loopback port and answers each
// request with its path as the body, in order, whatever the segments.
func startEchoPathBackend(t testing.TB) int {
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
		var conns sync.WaitGroup
		defer conns.Wait()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					p := req.URL.Path
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(p), p)
				}
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestH1RevPipelinedOrder: a client that mixes back-to-back requests (its
// responses held and fused) with pipelined bursts written in one segment
// or in several gets every response, in order, for its own request:
// through the unfused count (pipelinedUnfused) and back.
func TestH1RevPipelinedOrder(t *testing.T) {
	addr := agentInFront(t, inFront{node: "n", octet: 61, svc: "order", vipPort: 19701, port: startEchoPathBackend(t)}).addr
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	br := bufio.NewReader(c)
	rng := rand.New(rand.NewPCG(1, 2))
	id := 0
	expect := func(n int) {
		t.Helper()
		for i := range n {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("response %d: %v", id-n+i, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := fmt.Sprintf("/r%d", id-n+i); string(b) != want {
				t.Fatalf("response for %s: %q", want, b)
			}
		}
	}
	for id < 1500 {
		k := 1
		if rng.IntN(3) == 0 {
			k = 1 + rng.IntN(6)
		}
		var reqs []string
		for range k {
			reqs = append(reqs, fmt.Sprintf("GET /r%d HTTP/1.1\r\nHost: order.demo\r\n\r\n", id))
			id++
		}
		if rng.IntN(2) == 0 {
			io.WriteString(c, strings.Join(reqs, ""))
		} else {
			for _, r := range reqs {
				io.WriteString(c, r)
			}
		}
		expect(k)
	}
}

// TestH1RevIdleAfterFusedResponses: a connection idle after responses
// held and fused (back to back, then a pipelined burst) is closed at its
// service's timeouts.idle, not later.
func TestH1RevIdleAfterFusedResponses(t *testing.T) {
	doc := `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"idlef","namespace":"demo"},
	"spec":{"ports":[{"name":"web","port":19702,"protocol":"http"}],"timeouts":{"idle":"400ms"}}}`
	addr := agentInFront(t, inFront{node: "n", octet: 61, svc: "idlef", vipPort: 19702, doc: doc, port: startRawBackend(t)}).addr
	for _, burst := range []int{1, 3} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		for range 50 {
			io.WriteString(c, strings.Repeat("GET / HTTP/1.1\r\nHost: idlef.demo\r\n\r\n", burst))
			for range burst {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
		start := time.Now()
		if _, err := br.ReadByte(); err == nil {
			t.Fatal("bytes after the last response")
		}
		if took := time.Since(start); took > 3*time.Second || took < 200*time.Millisecond {
			t.Errorf("burst %d: idle connection closed after %v; want about 400ms", burst, took)
		}
		c.Close()
	}
}

// TestH1RevClientPlaceReleased: with maxRequestsPerClient 1, a fast-path
// request whose client goes away while the endpoint holds it (the head
// watch cancels it), one answered 429, one answered with an upstream
// error, and pipelined ones all give their place back: the client is
// served again, and once its connections close the limiter keeps nothing.
func TestH1RevClientPlaceReleased(t *testing.T) {
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	b := startCounting(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hang":
			select {
			case <-hang:
			case <-r.Context().Done():
			}
		case "/reset":
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
			return
		}
		io.WriteString(w, "ok")
	}))
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("place", 19703, "http"))
	a := startAgentWith(t, agentOpts{name: "place", site: "s1", region: "r1", vipOctet: 61, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("place", "place-1", b.port)}}, func(c *Config) { c.MaxRequestsPerClient = 1 })
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(a, "demo/place")) == 1 })
	addr := vipOf(t, a, "demo/place") + ":19703"
	waitListening(t, addr)
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		return c, bufio.NewReader(c)
	}
	status := func(c net.Conn, br *bufio.Reader, path string) int {
		t.Helper()
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: place.demo\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	// A request held by the endpoint, right after a prompt one on the same
	// connection (its head watch's timer, set by the first, is carried
	// over: headWatchState); a second connection gets 429.
	c1, br1 := dial()
	if code := status(c1, br1, "/ok"); code != 200 {
		t.Fatalf("first request: %d", code)
	}
	io.WriteString(c1, "GET /hang HTTP/1.1\r\nHost: place.demo\r\n\r\n")
	waitFor(t, "the held request upstream", func() bool { _, busy := b.counts(); return busy == 1 })
	c2, br2 := dial()
	if code := status(c2, br2, "/ok"); code != http.StatusTooManyRequests {
		t.Fatalf("second request with the only place held: %d; want 429", code)
	}
	c1.Close() // gone while its head is awaited: the head watch cancels it
	waitFor(t, "the place given back", func() bool { return status(c2, br2, "/ok") == 200 })
	waitFor(t, "the held request cancelled upstream", func() bool { _, busy := b.counts(); return busy == 0 })
	if code := status(c2, br2, "/reset"); code/100 != 5 {
		t.Fatalf("an endpoint that resets: %d; want 5xx", code)
	}
	// Pipelined: each answered in turn at the one place.
	io.WriteString(c2, strings.Repeat("GET /ok HTTP/1.1\r\nHost: place.demo\r\n\r\n", 5))
	for i := range 5 {
		resp, err := http.ReadResponse(br2, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("pipelined %d: %v %v", i, resp, err)
		}
		io.Copy(io.Discard, resp.Body)
	}
	c2.Close()
	waitFor(t, "the limiter empty", func() bool {
		a.l7.clients.mu.Lock()
		defer a.l7.clients.mu.Unlock()
		return len(a.l7.clients.n) == 0
	})
}
