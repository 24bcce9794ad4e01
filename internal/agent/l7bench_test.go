package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// startRawBackend serves "ok" to every HTTP/1.1 request it reads (headers
// only: the benchmark sends no bodies) with as little work as possible, so
// a profile of the benchmark shows the agent, not the backend.
func startRawBackend(t testing.TB) int {
	return serveRawBackend(t, func(c net.Conn, resp []byte) { // rawBackendConn
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				return
			}
			if len(bytes.TrimRight(line, "\r\n")) == 0 { // end of the header
				if _, err := c.Write(resp); err != nil {
					return
				}
			}
		}
	})
}

// readResp200 reads one response from br to its end: an error unless it is a
// 200.
func readResp200(br *bufio.Reader) error {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// serveRawBackend accepts connections on a loopback port (returned) until
// the test ends and runs serve on each, with the answer it is to send to
// each request ("ok"); the connection is closed when serve returns.
func serveRawBackend(t testing.TB, serve func(c net.Conn, resp []byte)) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
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
				serve(c, resp)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// BenchmarkL7HTTP1 proxies keep-alive HTTP/1.1 GETs through one agent to a
// node-local endpoint over 16 client connections (like wrk -c16), end to
// end on loopback; ns/op is wall time per request with the client, the
// agent and the backend in one process, and cpu-ns/op the CPU time (user
// and system, all threads) per request, steadier than ns/op on a machine
// shared with other work. Profile the agent's share with -cpuprofile and
// look below Agent.handleConn.
func BenchmarkL7HTTP1(b *testing.B) { benchL7HTTP1(b, 243, nil) }

// BenchmarkL7HTTP1Observe is BenchmarkL7HTTP1 with traces (sampled at 100 %
// and 1 %, exported to a collector that discards them) and with an access
// log of every request: their cost per request (issue 16).
func BenchmarkL7HTTP1Observe(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	sink := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) })}
	go sink.Serve(ln)
	defer sink.Close()
	collector := "http://" + ln.Addr().String()
	for _, tc := range []struct {
		name  string
		tweak func(*Config)
	}{
		{"off", nil},
		{"trace100", func(c *Config) { c.Tracing = TracingConfig{Endpoint: collector, SampleRatio: ratio(1)} }},
		{"trace1", func(c *Config) { c.Tracing = TracingConfig{Endpoint: collector, SampleRatio: ratio(0.01)} }},
		{"accesslog", func(c *Config) { c.AccessLog = AccessLogConfig{Path: filepath.Join(b.TempDir(), "access.log")} }},
	} {
		b.Run(tc.name, func(b *testing.B) { benchL7HTTP1(b, 24, tc.tweak) })
	}
}

func benchL7HTTP1(b *testing.B, octet int, tweak func(*Config)) {
	cp := startControl(b, b.TempDir(), "")
	apply(b, cp, httpSvcDoc("bench", 19200, "http"))
	port := startRawBackend(b)
	startAgentWith(b, agentOpts{name: "n", site: "s1", region: "r1", vipOctet: octet, control: []string{cp.SyncAddr()},
		stateDir: b.TempDir(), workloads: []Workload{webWorkload("bench", "bench-1", port)}}, tweak)
	addr := fmt.Sprintf("127.%d.0.1:19200", octet)
	waitGet200(b, nil, "http://"+addr+"/")
	const conns = 16
	req := []byte("GET / HTTP/1.1\r\nHost: bench.demo\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	b.ReportAllocs()
	runH1Clients(b, addr, conns, func(c net.Conn) error {
		_, err := c.Write(req)
		return err
	})
}

// runH1Clients runs b.N keep-alive HTTP/1.1 exchanges over conns client
// connections to addr: send writes one request, then its answer must be a
// 200. It reports cpu-ns/op (processCPU) and fails b on any error.
func runH1Clients(b *testing.B, addr string, conns int, send func(c net.Conn) error) {
	var left atomic.Int64
	left.Store(int64(b.N))
	errs := make(chan error, conns)
	b.ResetTimer()
	cpu0 := processCPU(b)
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			br := bufio.NewReader(c)
			for left.Add(-1) >= 0 {
				if err := send(c); err != nil {
					errs <- err
					return
				}
				if err := readResp200(br); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// processCPU is the CPU time (user and system) the process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
