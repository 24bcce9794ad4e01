package agent

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestH1LatencyFromSharedClock: the fast path's latency figures start at
// lbTransport's clock reading (the pool's too) and end at the pool's as
// the response head came (no reading of their own): for an endpoint that takes
// slowFor to answer, the request duration histogram and the endpoint's
// latency (EWMA) count at least that, and no more than the client waited.
func TestH1LatencyFromSharedClock(t *testing.T) {
	const slowFor = 30 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(slowFor) // a slow endpoint
		io.WriteString(w, "slow")
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	f := agentInFront(t, inFront{node: "clk", octet: 66, svc: "clk", vipPort: 28501, port: ln.Addr().(*net.TCPAddr).Port})
	sum0, n0 := durationSeries(t, f.agent, "demo/clk")

	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	const n = 3
	var waited time.Duration
	for range n {
		start := time.Now()
		io.WriteString(conn, "GET /slow HTTP/1.1\r\nHost: clk\r\n\r\n") // a lean head: the fast path's own parse
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		waited += time.Since(start)
		if string(b) != "slow" {
			t.Fatalf("body %q", b)
		}
	}
	sum, count := durationSeries(t, f.agent, "demo/clk")
	if count-n0 != n {
		t.Fatalf("%d requests counted, want %d", count-n0, n)
	}
	if d := time.Duration((sum - sum0) * float64(time.Second)); d < n*slowFor || d > waited {
		t.Fatalf("request durations add up to %v: want from %v to what the client waited, %v", d, n*slowFor, waited)
	}
	ev := endpointsOf(f.agent, "demo/clk")
	if len(ev) != 1 {
		t.Fatalf("%d endpoints", len(ev))
	}
	// The peak EWMA, decayed over milliseconds by a 5 s time constant.
	if ms := ev[0].LatencyMillis; ms < 0.9*float64(slowFor.Milliseconds()) || ms > float64(waited.Milliseconds())+1 {
		t.Fatalf("endpoint latency %v ms: want at least %v", ms, slowFor)
	}
}

// durationSeries returns the sum and count of svc's request duration
// histograms.
func durationSeries(t *testing.T, a *Agent, svc string) (sum float64, count int) {
	t.Helper()
	var buf strings.Builder
	a.cfg.Metrics.WritePrometheus(&buf)
	for _, line := range strings.Split(buf.String(), "\n") {
		if !strings.Contains(line, `service="`+svc+`"`) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		switch {
		case strings.HasPrefix(line, "fogmesh_http_request_duration_seconds_sum{"):
			v, err := strconv.ParseFloat(line[i+1:], 64)
			if err != nil {
				t.Fatal(err)
			}
			sum += v
		case strings.HasPrefix(line, "fogmesh_http_request_duration_seconds_count{"):
			v, err := strconv.Atoi(line[i+1:])
			if err != nil {
				t.Fatal(err)
			}
			count += v
		}
	}
	return sum, count
}

// TestH1LatencyLeavesFaultDelayOut: a fault's delay is no endpoint's
// latency. A bodyless fast-path request's first attempt starts at the
// head watch's clock reading (reqShare.head) only when no step before it
// may wait; with a delay fault on every request, the request duration
// histogram counts the endpoint's prompt answers, not the delays the
// client waited.
func TestH1LatencyLeavesFaultDelayOut(t *testing.T) {
	const delay = 60 * time.Millisecond
	doc := `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: fdl, namespace: demo}
spec:
  ports: [{name: web, port: 19940, protocol: http}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Route
metadata: {name: fdl, namespace: demo}
spec:
  service: fdl
  rules:
  - backends: [{}]
    fault: {delay: {fixedDelay: 60ms, percent: 100}}
`
	f := agentInFront(t, inFront{node: "fdl", octet: 107, svc: "fdl", vipPort: 19940, port: startRawBackend(t), doc: doc})
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	get := func() time.Duration {
		t.Helper()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: fdl\r\n\r\n") // a lean head: the fast path's own parse
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		return time.Since(start)
	}
	waitFor(t, "the route's delay", func() bool { return get() >= delay })
	sum0, n0 := durationSeries(t, f.agent, "demo/fdl")
	const n = 3
	for range n {
		if d := get(); d < delay {
			t.Fatalf("a request took %v, under the fault's delay %v", d, delay)
		}
	}
	sum, count := durationSeries(t, f.agent, "demo/fdl")
	if count-n0 != n {
		t.Fatalf("%d requests counted, want %d", count-n0, n)
	}
	if d := time.Duration((sum - sum0) * float64(time.Second)); d >= n*delay/2 {
		t.Fatalf("request durations add up to %v for %d requests each delayed %v by the fault: the delays were counted", d, n, delay)
	}
}
