package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// TestH2CUpgradeNotTunnelled: a client asking to upgrade to h2c through an
// http port gets a plain HTTP/1.1 exchange: the agent does not pass the
// Upgrade on. A workload that switches on the Upgrade header alone (as
// Hypercorn does) would otherwise be talked to in HTTP/2 straight from the
// client, every request past the agent's routing, path normalisation,
// authorization and identity headers.
func TestH2CUpgradeNotTunnelled(t *testing.T) {
	var mu sync.Mutex
	var seen []string // the Upgrade headers the workload received
	be := serveH1(t, func(c net.Conn, _ *bufio.Reader, req *http.Request) bool {
		io.Copy(io.Discard, req.Body)
		up := req.Header.Get("Upgrade")
		mu.Lock()
		seen = append(seen, up)
		mu.Unlock()
		if up != "" { // switch on the header alone
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+up+"\r\n\r\nTUNNEL")
			return false
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
		return true
	})
	vip := agentInFront(t, inFront{node: "h2cup", octet: 246, svc: "h2cup", vipPort: 19140, port: be.Port,
		noRequest: true}).addr
	for _, up := range []string{"h2c", "H2C", "websocket, h2c", "HTTP/2.0"} {
		c, err := net.Dial("tcp", vip)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: h2cup\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: %s\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", up)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("Upgrade: %s: %v", up, err)
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
		resp.Body.Close()
		c.Close()
		if resp.StatusCode != 200 || string(b) != "plain" {
			t.Errorf("Upgrade: %s: got %d %q; want the plain HTTP/1.1 answer, no tunnel", up, resp.StatusCode, b)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, up := range seen {
		if up != "" {
			t.Errorf("the workload was asked to upgrade to %q", up)
		}
	}
	if len(seen) != 4 {
		t.Errorf("the workload saw %d requests, want 4", len(seen))
	}
}
