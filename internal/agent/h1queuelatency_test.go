package agent

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestH1LatencyLeavesBreakerQueueOut: a wait in the circuit breaker's
// queue is no endpoint's latency. A bodyless fast-path request's first
// attempt starts at the head watch's clock reading (reqShare.head) only
// when no step before it may wait (mayQueue): request B, queued behind A
// (maxRequests 1) for queueFor, is counted from its slot on, so the
// request duration histogram holds A's duration (at most what A's client
// waited) and B's prompt answer, not B's queue wait too.
func TestH1LatencyLeavesBreakerQueueOut(t *testing.T) {
	const queueFor = 300 * time.Millisecond
	held, release := make(chan struct{}, 1), make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		held <- struct{}{}
		<-release
		io.WriteString(w, "held")
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	doc := `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: cbq, namespace: demo}
spec:
  ports: [{name: web, port: 19977, protocol: http}]
  circuitBreaker: {maxRequests: 1, maxPendingRequests: 1}
`
	f := agentInFront(t, inFront{node: "cbq", octet: 253, svc: "cbq", vipPort: 19977, port: ln.Addr().(*net.TCPAddr).Port, doc: doc, noRequest: true})
	sum0, n0 := durationSeries(t, f.agent, "demo/cbq")

	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(20 * time.Second))
		return c, bufio.NewReader(c)
	}
	get := func(br *bufio.Reader, want string) {
		t.Helper()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != want {
			t.Fatalf("body %q, want %q", b, want)
		}
	}
	a, abr := dial()
	startA := time.Now()
	io.WriteString(a, "GET /hold HTTP/1.1\r\nHost: cbq\r\n\r\n") // a lean head: the fast path's own parse
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("A did not reach the endpoint")
	}
	b, bbr := dial()
	io.WriteString(b, "GET / HTTP/1.1\r\nHost: cbq\r\n\r\n")
	testenv.WaitFor(t, 10*time.Second, "B queued in the circuit breaker", func() bool {
		queued := false
		f.agent.l7.limiters.Range(func(_, v any) bool {
			l := v.(*reqLimiter)
			l.mu.Lock()
			queued = queued || len(l.waiters) > 0
			l.mu.Unlock()
			return true
		})
		return queued
	})
	<-time.After(queueFor) // B's wait in the queue: what must not count
	close(release)
	get(abr, "held")
	waitedA := time.Since(startA)
	get(bbr, "ok")
	sum, count := durationSeries(t, f.agent, "demo/cbq")
	if count-n0 != 2 {
		t.Fatalf("%d requests counted, want 2", count-n0)
	}
	if d := time.Duration((sum - sum0) * float64(time.Second)); d >= waitedA+queueFor/2 {
		t.Fatalf("request durations add up to %v: A's client waited %v, B was queued %v of it (counted as B's latency?)", d, waitedA, queueFor)
	}
}
