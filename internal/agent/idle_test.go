package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestIdleTimeoutL4: with timeouts.idle 400ms, a relayed connection that
// moves no byte is closed after about that long, while one that talks every
// 100 ms for 1.5 s stays open; the close is counted.
func TestIdleTimeoutL4(t *testing.T) {
	e := startEcho(t, "e1", "127.0.0.1:0")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"idle","namespace":"demo"},
	"spec":{"ports":[{"name":"tcp","port":19120}],"timeouts":{"idle":"400ms"}}}`)
	a := startAgent(t, agentOpts{name: "idl", site: "s1", region: "r1", vipOctet: 211, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{wlFor("idle", e)}})
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(a, "demo/idle")) == 1 })
	addr := "127.211.0.1:19120"
	waitFor(t, "listener", func() bool { _, err := roundTrip(addr); return err == nil })

	idleAndBusy(t, addr, "")
	var buf strings.Builder
	a.cfg.Metrics.WritePrometheus(&buf)
	if !strings.Contains(buf.String(), `fogmesh_agent_idle_timeouts_total{service="demo/idle"} 1`) {
		t.Fatalf("idle close not counted:\n%s", buf.String())
	}
}

// TestIdleTimeoutL7Downstream: an HTTP/1.1 keep-alive connection to an
// http port with timeouts.idle 500ms is closed by the agent after it.
func TestIdleTimeoutL7Downstream(t *testing.T) {
	p, _ := startHTTP(t, "h")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"idle7","namespace":"demo"},
	"spec":{"ports":[{"name":"web","port":19121,"protocol":"http"}],"timeouts":{"idle":"500ms"}}}`)
	a := startAgent(t, agentOpts{name: "idl7", site: "s1", region: "r1", vipOctet: 212, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("idle7", "idle7-1", p)}})
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(a, "demo/idle7")) == 1 })
	waitFor(t, "listener", func() bool { _, err := http.Get("http://127.212.0.1:19121/"); return err == nil })
	c, err := net.DialTimeout("tcp", "127.212.0.1:19121", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := 0; i < 3; i++ { // requests 100 ms apart keep it open (5× margin on a loaded machine)
		c.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: idle7\r\n\r\n")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		time.Sleep(100 * time.Millisecond)
	}
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("want EOF from the idle close, got %v", err)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Fatalf("closed after %v, want about 500ms", d)
	}
}

// idleAndBusy opens two connections to addr, a tcp port with timeouts.idle
// 400ms in front of an echo server e1: one that talks once and goes idle,
// which the agent must close after about 400ms, and one that exchanges a
// line (ping N, then pad) every 100 ms for 1.5 s, which must live through
// it. It returns the bytes the busy connection sent.
func idleAndBusy(t *testing.T, addr, pad string) (sent int) {
	t.Helper()
	idle, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	busy, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	// start: before the idle connection's last bytes, so that a delay
	// of this goroutine after them cannot shorten what it measures.
	start := time.Now()
	if got, err := talk(idle); err != nil || got != "e1: ping" {
		t.Fatalf("idle conn first exchange: %q %v", got, err)
	}
	closed := make(chan time.Duration, 1)
	go func() {
		idle.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := idle.Read(make([]byte, 1))
		if n == 0 && err == io.EOF {
			closed <- time.Since(start)
		} else {
			closed <- -1
		}
	}()
	br := bufio.NewReader(busy)
	for i := range 15 { // 1.5 s: well past the idle timeout
		busy.SetDeadline(time.Now().Add(3 * time.Second))
		msg := fmt.Sprintf("ping %d", i) + pad
		fmt.Fprintf(busy, "%s\n", msg)
		line, err := br.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != "e1: "+msg {
			t.Fatalf("busy conn, exchange %d after %v: %.40q %v", i, time.Since(start), line, err)
		}
		sent += len(msg) + 1
		time.Sleep(100 * time.Millisecond) // pacing: the busy connection's gaps stay under the timeout
	}
	d := <-closed
	if d < 350*time.Millisecond || d > 1500*time.Millisecond {
		t.Fatalf("idle connection closed after %v, want about 400ms (-1: not closed by the agent)", d)
	}
	t.Logf("idle connection closed after %v; busy one served 15 exchanges over %v", d, time.Since(start))
	return sent
}
