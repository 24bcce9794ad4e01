package agent

import (
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
)

// gateBackend answers its name over HTTP/1.1 and h2c once its gate is
// open, and records what the test checks: requests in flight (now and at
// most), the client connections that carried requests, and those closed.
type gateBackend struct {
	name string
	port int
	gate chan struct{}

	mu          sync.Mutex
	inflight    int
	maxInflight int
	conns       map[string]bool // remote addresses that carried requests
	closed      map[string]bool // remote addresses closed
}

func startGateBackend(t *testing.T, name string) *gateBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &gateBackend{name: name, port: ln.Addr().(*net.TCPAddr).Port, gate: make(chan struct{}),
		conns: map[string]bool{}, closed: map[string]bool{}}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.inflight++
		b.maxInflight = max(b.maxInflight, b.inflight)
		b.conns[r.RemoteAddr] = true
		b.mu.Unlock()
		select {
		case <-b.gate:
		case <-r.Context().Done():
		}
		b.mu.Lock()
		b.inflight--
		b.mu.Unlock()
		io.WriteString(w, name)
	}), ConnState: func(c net.Conn, st http.ConnState) {
		if st == http.StateClosed || st == http.StateHijacked {
			b.mu.Lock()
			b.closed[c.RemoteAddr().String()] = true
			b.mu.Unlock()
		}
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { b.open(); srv.Close() })
	return b
}

// open lets every request through, now and from now on.
func (b *gateBackend) open() {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-b.gate:
	default:
		close(b.gate)
	}
}

func (b *gateBackend) stats() (inflight, maxInflight, conns int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.inflight, b.maxInflight, len(b.conns)
}

// burst is n concurrent requests whose answers are counted as they come.
type burst struct {
	mu       sync.Mutex
	codes    map[int]int
	overflow int // 503 with X-Fogmesh-Overflow
	bodies   map[string]int
	wg       sync.WaitGroup
}

func fireBurst(t *testing.T, c *http.Client, url string, hdr http.Header, n int) *burst {
	b := &burst{codes: map[int]int{}, bodies: map[string]int{}}
	for i := 0; i < n; i++ {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			req, _ := http.NewRequest("GET", url, nil)
			for k, v := range hdr {
				req.Header[k] = v
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			b.mu.Lock()
			defer b.mu.Unlock()
			b.codes[resp.StatusCode]++
			if resp.StatusCode == 503 && resp.Header.Get("X-Fogmesh-Overflow") == "true" {
				b.overflow++
			}
			if resp.StatusCode == 200 {
				b.bodies[string(body)]++
			}
		}()
	}
	return b
}

func (b *burst) overflows() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.overflow
}

func (b *burst) done() (codes map[int]int, bodies map[string]int) {
	b.wg.Wait()
	return b.codes, b.bodies
}
