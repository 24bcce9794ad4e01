package agent

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// TestH1HeadAfterFusedResponseKeepsItsDeadlines: the read that wrote the
// last response (h1Wire.Read) waits under fuseRecheck's short deadline;
// the head it brings the first bytes of reads on under the head's own.
// A head whose rest comes after fuseRecheck (the client's own pause) is
// served; one whose rest never comes is closed at httpproxy.HeaderTimeout,
// well before the idle timeout (defaultL7Idle), as any head is.
func TestH1HeadAfterFusedResponseKeepsItsDeadlines(t *testing.T) {
	addr := agentInFront(t, inFront{node: "n", octet: 96, svc: "split", vipPort: 19696, port: startRawBackend(t)}).addr
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(httpproxy.HeaderTimeout + 20*time.Second))
	for range 5 { // back to back: the responses are held and fused
		rawExchange(t, c, "split.demo")
	}
	io.WriteString(c, "GET / HTTP/1.1\r\n")
	pause := time.NewTimer(3 * fuseRecheck) // the client's own pause, not a wait for the agent
	<-pause.C
	io.WriteString(c, "Host: split.demo\r\n\r\n")
	var buf [4096]byte
	n := 0
	for n < 6 || string(buf[n-6:n]) != "\r\n\r\nok" {
		m, err := c.Read(buf[n:])
		if err != nil {
			t.Fatalf("split head: %v (after %q)", err, buf[:n])
		}
		n += m
	}
	for range 5 {
		rawExchange(t, c, "split.demo")
	}
	start := time.Now()
	io.WriteString(c, "GET / HTTP/1.1\r\n") // and no more
	if m, err := c.Read(buf[:]); err == nil {
		t.Fatalf("an answer to half a head: %q", buf[:m])
	}
	if took := time.Since(start); took > httpproxy.HeaderTimeout+5*time.Second || took < httpproxy.HeaderTimeout-time.Second {
		t.Fatalf("half a head closed after %v; want the head timeout, %v", took, httpproxy.HeaderTimeout)
	}
}
