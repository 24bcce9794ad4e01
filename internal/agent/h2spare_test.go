package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestH2CallSpareStreams: the per-request objects of an HTTP/2 request
// (the handler's request copy, lbTransport's attempt copy, its replay body,
// the gRPC response's body wrapper) stay the request's own. Concurrent
// streams of one client connection, and the streams after them, each with
// its own path, X-Id, X-Only-ID field and body (some longer than
// replayBody's first bytes), go through a route that retries 5xx once and
// mirrors every request: the first attempt of every fourth request (within
// the retry budget: a reserve of 10 and a fifth per request) gets a
// gRPC-typed 503 with a body (kept by keepResponse while the retry runs),
// the second attempt replays the body. Every attempt and
// every mirror copy must carry its own request only, every answer its own
// header, body and trailers. Under -race a write to a part of one
// request's h2Call by another's goroutine is reported.
func TestH2CallSpareStreams(t *testing.T) {
	var mu sync.Mutex
	var bad []string
	seen := map[string]int{}
	mirrored := map[string]bool{}
	fail := func(format string, args ...any) {
		mu.Lock()
		bad = append(bad, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	// check reports r's mode and id (its path's parts) after checking
	// that it carries its own fields and body only.
	check := func(who string, r *http.Request) (string, string, bool) {
		parts := strings.Split(r.URL.Path, "/")
		if len(parts) != 3 {
			return "", "", false
		}
		mode, id := parts[1], parts[2]
		if got := r.Header["X-Id"]; len(got) != 1 || got[0] != id {
			fail("%s: %s carries X-Id %q", who, r.URL.Path, got)
		}
		for k := range r.Header {
			if strings.HasPrefix(k, "X-Only-") && k != http.CanonicalHeaderKey("X-Only-"+id) {
				fail("%s: %s carries another request's field %s", who, r.URL.Path, k)
			}
		}
		if body, err := io.ReadAll(r.Body); err != nil || string(body) != spareBody(id) {
			fail("%s: %s body %q (%v), want %q", who, r.URL.Path, body, err, spareBody(id))
		}
		return mode, id, true
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	primary := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mode, id, ok := check("endpoint", r)
		if !ok {
			io.WriteString(w, "probe")
			return
		}
		mu.Lock()
		seen[id]++
		n := seen[id]
		mu.Unlock()
		w.Header().Set("Content-Type", "application/grpc")
		if mode == "retry" && n == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "first-"+id)
			return
		}
		w.Header().Set("Trailer", "Grpc-Status, X-Trailer-Id")
		w.Header().Set("X-Echo-Id", id)
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "echo-"+id)
		w.Header().Set("Grpc-Status", "0")
		w.Header().Set("X-Trailer-Id", id)
	})}
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go primary.Serve(pln)
	t.Cleanup(func() { primary.Close() })
	shadow := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, id, ok := check("mirror", r); ok {
			mu.Lock()
			mirrored[id] = true
			mu.Unlock()
		}
	})}
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go shadow.Serve(sln)
	t.Cleanup(func() { shadow.Close() })

	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: spare, namespace: demo}
spec:
  ports: [{name: web, port: 19797, protocol: http2}]
  retries: {attempts: 1, on5xx: true, methods: any}
  outlierDetection: {consecutiveErrors: -1}
---
apiVersion: fogmesh.io/v1alpha1
kind: DestinationPolicy
metadata: {name: spare, namespace: demo}
spec:
  service: spare
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Route
metadata: {name: spare, namespace: demo}
spec:
  service: spare
  rules:
  - backends: [{subset: v1}]
    mirror: {subset: v2}
`)
	w1, w2 := webWorkload("spare", "spare-v1", pln.Addr().(*net.TCPAddr).Port), webWorkload("spare", "spare-v2", sln.Addr().(*net.TCPAddr).Port)
	w1.Labels, w2.Labels = map[string]string{"version": "v1"}, map[string]string{"version": "v2"}
	a := startAgentWith(t, agentOpts{name: "sparen", site: "s1", region: "r1", vipOctet: 97, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{w1, w2}}, nil)
	waitFor(t, "endpoints", func() bool { return len(endpointsOf(a, "demo/spare")) == 2 })
	addr := "127.97.0.1:19797"
	waitListening(t, addr)

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(c)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	const rounds, streams = 3, 16
	for round := range rounds { // consecutive rounds of concurrent streams
		errs := make(chan error, streams)
		for i := range streams {
			go func() { errs <- spareCall(cc, addr, round*streams+i) }()
		}
		for range streams {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	}
	waitFor(t, "every request mirrored", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(mirrored) == rounds*streams
	})
	waitFor(t, "no request in flight", func() bool { return a.l7Inflight.Load() == 0 })
	mu.Lock()
	defer mu.Unlock()
	for id, n := range seen {
		if want := 1 + strings.Count(id, "r"); n != want {
			t.Errorf("request %s reached the endpoint %d times, want %d", id, n, want)
		}
	}
	for _, b := range bad {
		t.Error(b)
	}
}

// spareBody is request id's body: its own, some longer than the 64 bytes
// replayBody keeps in its own allocation.
func spareBody(id string) string {
	return strings.Repeat("body-"+id+".", 1+len(id)%3*6)
}

// spareCall sends TestH2CallSpareStreams' request i on cc and checks its
// answer: one in four is retried once (mode retry; its id has an r).
func spareCall(cc *http2.ClientConn, addr string, i int) error {
	mode, id := "ok", fmt.Sprintf("o%d", i)
	if i%4 == 1 {
		mode, id = "retry", fmt.Sprintf("r%d", i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+addr+"/"+mode+"/"+id, strings.NewReader(spareBody(id)))
	req.Header.Set("X-Id", id)
	req.Header.Set("X-Only-"+id, "1")
	req.Header.Set("Content-Type", "application/grpc")
	resp, err := cc.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("%s: %v", id, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != "echo-"+id || resp.Header.Get("X-Echo-Id") != id {
		return fmt.Errorf("%s: %d %q %v (%v)", id, resp.StatusCode, body, resp.Header, err)
	}
	if resp.Trailer.Get("Grpc-Status") != "0" || resp.Trailer.Get("X-Trailer-Id") != id {
		return fmt.Errorf("%s: trailers %v", id, resp.Trailer)
	}
	return nil
}
