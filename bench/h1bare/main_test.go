package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestModels: both models forward keep-alive GETs from several clients
// and answer each with its own response; a request with a body closes the
// connection.
func TestModels(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "path=", r.URL.Path)
	}))
	defer backend.Close()
	target := strings.TrimPrefix(backend.URL, "http://")
	for _, model := range []string{"go", "epoll"} {
		t.Run(model, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go proxy(ln, target, model, 2)
			tr := &http.Transport{MaxIdleConnsPerHost: 4}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			errs := make(chan error, 4)
			for g := range 4 {
				go func() {
					for i := range 50 {
						path := fmt.Sprintf("/g%d/r%d", g, i)
						resp, err := client.Get("http://" + ln.Addr().String() + path)
						if err != nil {
							errs <- err
							return
						}
						b, err := io.ReadAll(resp.Body)
						resp.Body.Close()
						if err != nil || string(b) != "path="+path {
							errs <- fmt.Errorf("%s: %q %v", path, b, err)
							return
						}
					}
					errs <- nil
				}()
			}
			for range 4 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			if _, err := client.Post("http://"+ln.Addr().String()+"/", "text/plain", strings.NewReader("body")); err == nil {
				t.Fatal("a request with a body was forwarded")
			}
		})
	}
}

// BenchmarkGoModel is the agent's BenchmarkL7HTTP1 (internal/agent) with
// the go model in the agent's place: the same 16 client connections, the
// same request and the same raw backend, all in one process, so that
// bench/handoffs.sh (PKG=./bench/h1bare/ BENCH='^BenchmarkGoModel$') counts
// the same parties' wake-ups per request for both (issue 14).
func BenchmarkGoModel(b *testing.B) {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer backend.Close()
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return
			}
			go func() { // rawBackendConn
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadSlice('\n')
					if err != nil {
						return
					}
					if len(bytes.TrimRight(line, "\r\n")) == 0 {
						if _, err := c.Write(resp); err != nil {
							return
						}
					}
				}
			}()
		}
	}()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go proxy(ln, backend.Addr().String(), "go", 1)
	const conns = 16
	req := []byte("GET / HTTP/1.1\r\nHost: bench.demo\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	var left atomic.Int64
	left.Store(int64(b.N))
	errs := make(chan error, conns)
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			br := bufio.NewReader(c)
			for left.Add(-1) >= 0 {
				if _, err := c.Write(req); err != nil {
					errs <- err
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("status %d", resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// TestKnobs: with -spin, -touch and -fwdheaders the go model still forwards
// each request and its response, and the backend sees the agent's
// forwarding header fields after the client's own.
func TestKnobs(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s|%s|%s|%s", r.URL.Path, r.Header.Get("X-Test"), r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Fogmesh-Source-Id"))
	}))
	defer backend.Close()
	spinIters, touchBuf, fwdHeaders = calibrateSpin(2*time.Microsecond), make([]byte, 4096), true
	defer func() { spinIters, touchBuf, fwdHeaders = 0, nil, false }()
	if spinIters <= 0 {
		t.Fatalf("calibrateSpin(2µs) = %d iterations", spinIters)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go proxy(ln, strings.TrimPrefix(backend.URL, "http://"), "go", 1)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	for i := range 3 {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/r%d", ln.Addr(), i), nil)
		req.Header.Set("X-Test", "yes")
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := fmt.Sprintf("/r%d|yes|127.0.0.1|spiffe://fogmesh.local/ns/bench/sa/webl7", i)
		if err != nil || string(b) != want {
			t.Fatalf("got %q (%v), want %q", b, err, want)
		}
	}
}
