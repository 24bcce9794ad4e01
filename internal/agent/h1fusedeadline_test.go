package agent

import (
	"bufio"
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

// TestH1FusedDeadlineMovedRarely: a busy connection's held responses do
// not each set the client's read deadline (a runtime timer's move): the
// fused read's is kept while it is at least fuseRecheck away, and set
// again once it is nearer, or once another deadline was set (moved: a
// body's, a watch's, a head's), or for a response not held.
func TestH1FusedDeadlineMovedRarely(t *testing.T) {
	w := readWire(t)
	br := bufio.NewReader(w)
	now := monoTime()
	w.next(br, now, now.Add(time.Minute))
	sets, last := 0, w.dl
	step := func() {
		now = now.Add(fuseRecheck / 10)
		w.held = []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
		if !w.next(br, now, now.Add(time.Minute)) || w.held == nil {
			t.Fatal("response not held")
		}
		w.held = nil // as if the fused read wrote it
		if !w.dl.Equal(last) {
			sets++
			last = w.dl
		}
		if d := w.dl.Sub(now); d < fuseRecheck || d > 2*fuseRecheck || !w.kept {
			t.Fatalf("fused read's deadline %v away (kept %v); want fuseRecheck to twice that", d, w.kept)
		}
	}
	for range 40 { // 4 fuseRecheck of requests
		step()
	}
	if sets > 5 {
		t.Errorf("%d deadline sets for 40 responses over %v; want one per fuseRecheck or so", sets, 4*fuseRecheck)
	}
	sets = 0
	w.moved() // a body's, a watch's or a head's deadline
	step()
	if sets != 1 {
		t.Error("a deadline set by another was kept as the fused read's")
	}
}
