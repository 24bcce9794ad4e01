package agent

import (
	"bytes"
	"net"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
)

// h1WakeBudget is how many times per request the goroutines of
// TestH1FastPathHandoffs may be switched in: the fast path's connection
// goroutine twice (its fused reads: the upstream's response, the client's
// next request), the raw backend's once and the test's client once
// (session 31: the agent wakes no goroutine per request beyond its own
// connection's two, as bench/h1bare does). A goroutine, channel or timer
// between the client's read and the upstream's would add one or two.
const h1WakeBudget = 4.5

// TestH1FastPathHandoffs: requests on one kept connection through the
// fast path start no goroutine and switch goroutines in no more than
// h1WakeBudget times each, counted by the runtime (runtime/metrics: the
// goroutines created, and /sched/latencies, which records one in every
// eight of each goroutine's switches from runnable to running). The GC
// is off while it counts, after a cycle run to its end: its workers and
// sweeper are switched in too.
func TestH1FastPathHandoffs(t *testing.T) {
	addr := agentInFront(t, inFront{node: "n", octet: 76, svc: "wake", vipPort: 19276, port: startRawBackend(t)}).addr
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var buf [4096]byte
	exchange := func(req []byte) {
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		n := 0
		for !bytes.HasSuffix(buf[:n], []byte("\r\n\r\nok")) { // the backend's body
			m, err := c.Read(buf[n:])
			if err != nil {
				t.Fatalf("read: %v (after %q)", err, buf[:n])
			}
			n += m
			if n == len(buf) {
				t.Fatalf("response too long: %q", buf[:n])
			}
		}
		if !bytes.HasPrefix(buf[:n], []byte("HTTP/1.1 200 ")) {
			t.Fatalf("response %q", buf[:n])
		}
	}
	req := []byte("GET / HTTP/1.1\r\nHost: wake.demo\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n")
	for range 50 { // warm: pools, metric series, the upstream connection, the fused deadlines
		exchange(req)
	}
	// A cycle begun before stays, and its sweeper can wait thousands of
	// times through the scheduler (session 31): runtime.GC ends it, swept.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	runtime.GC()
	ms := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}, {Name: "/sched/latencies:seconds"}}
	read := func() (created, switched uint64) {
		metrics.Read(ms)
		for _, n := range ms[1].Value.Float64Histogram().Counts {
			switched += n
		}
		return ms[0].Value.Uint64(), switched
	}
	const n = 3000
	c0, s0 := read()
	for range n {
		exchange(req)
	}
	c1, s1 := read()
	perReq := float64(8*(s1-s0)) / n
	t.Logf("%d requests: %d goroutines created, about %.2f switches in per request (budget %.1f)", n, c1-c0, perReq, h1WakeBudget)
	if created := c1 - c0; created > n/100 {
		t.Errorf("%d goroutines started over %d requests: one per request or more", created, n)
	}
	if perReq > h1WakeBudget {
		t.Errorf("about %.2f goroutine switches per request; budget %.1f", perReq, h1WakeBudget)
	}
}
