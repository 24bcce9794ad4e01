package httpproxy

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestPoolRevFusedPairing: requests in a row on a pool whose connections
// fuse (kept fused-read deadlines) get each its own answer, whatever the
// endpoint does between them: answer at once, within or past fuseRecheck
// and twice it, its body late, close after the answer, or shut its side
// and read on (the half-closed endpoint the recheck is for); none waits
// long.
func TestPoolRevFusedPairing(t *testing.T) {
	u := startUpstream(t, func(c net.Conn, req *http.Request) bool {
		p := req.URL.Path
		mode := p[strings.LastIndexByte(p, '/')+1:]
		head := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(p))
		switch mode {
		case "late":
			time.Sleep(fuseRecheck + fuseRecheck/2) // the endpoint's own pause
		case "later":
			time.Sleep(2*fuseRecheck + fuseRecheck/2)
		case "body":
			io.WriteString(c, head)
			time.Sleep(fuseRecheck + fuseRecheck/2)
			io.WriteString(c, p)
			return true
		}
		io.WriteString(c, head+p)
		switch mode {
		case "close":
			return false
		case "shut":
			c.(*net.TCPConn).CloseWrite() // reads on, answers nothing more
		}
		return true
	})
	p := u.pool(PoolConfig{})
	defer p.Close(true)
	modes := []string{"now", "now", "now", "now", "late", "later", "body", "close", "shut"}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 200 {
		path := fmt.Sprintf("/r%d/%s", i, modes[rng.IntN(len(modes))])
		req, _ := http.NewRequest("GET", "http://svc"+path, nil)
		start := time.Now()
		resp, err := p.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != path {
			t.Fatalf("%s: %q %v", path, b, err)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Fatalf("%s took %v", path, took)
		}
	}
}
