package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestH1RecycleHolders: what may still hold a fast-path request or its
// response after forward returned, when the client connection reuses its
// header map, lean request and lean response for the next request
// (httpproxy.HeaderBuf.Recycle, RecycleResponse): a mirror's copy, sent on
// its own goroutine; a retried attempt's response kept in memory
// (keepResponse) and one abandoned while its body stalls, read on in the
// background after the client has had its answer; the access log's record.
// Two connections pipeline their requests (all written before any answer
// is read) through a route that mirrors every request and retries 5xx once:
//
//   - /ok/ID: answered at once;
//   - /stall/ID: the first attempt's 503 sends half its body and stalls, so
//     the retry gives up waiting for it (keepResponse's per-try wait) and
//     closes it in the background; the second attempt answers;
//   - /kept/ID: the first attempt's 503 is read whole and kept, every later
//     one is reset: the client gets the kept 503.
//
// Every request reaches the endpoint and the mirror with its own X-Id and
// X-Only-ID only, every answer is its own, every access-log line pairs its
// path with its own user agent, and under -race a late reader of a
// recycled map, request or response on another goroutine is reported
// (Recycle's clear and zeroing are writes).
func TestH1RecycleHolders(t *testing.T) {
	var mu sync.Mutex
	var bad []string
	seen := map[string]int{}      // endpoint attempts per id
	mirrored := map[string]bool{} // ids the mirror got
	fail := func(format string, args ...any) {
		mu.Lock()
		bad = append(bad, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	// check reports whether r carries its own id (its path's last part)
	// and no other request's field.
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
		if r.Header.Get("X-Hop") != "" {
			fail("%s: %s: hop-by-hop field passed on", who, r.URL.Path)
		}
		return mode, id, true
	}
	primary := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mode, id, ok := check("endpoint", r)
		if !ok {
			io.WriteString(w, "probe")
			return
		}
		mu.Lock()
		seen[id]++
		n := seen[id]
		mu.Unlock()
		switch {
		case mode == "stall" && n == 1:
			// Half the body, then nothing until the agent gives up on it
			// (keepResponse closes it, and so the connection).
			w.Header().Set("Content-Length", "10")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "stall")
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		case mode == "kept" && n == 1:
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "kept-"+id)
		case mode == "kept":
			c, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				c.Close() // no answer: the kept one is
			}
		default:
			io.WriteString(w, id)
		}
	})}
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go primary.Serve(pln)
	t.Cleanup(func() { primary.Close() })
	shadow := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
metadata: {name: hold, namespace: demo}
spec:
  ports: [{name: web, port: 19789, protocol: http}]
  retries: {attempts: 1, on5xx: true, perTryTimeout: 400ms}
  outlierDetection: {consecutiveErrors: -1}
---
apiVersion: fogmesh.io/v1alpha1
kind: DestinationPolicy
metadata: {name: hold, namespace: demo}
spec:
  service: hold
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Route
metadata: {name: hold, namespace: demo}
spec:
  service: hold
  rules:
  - backends: [{subset: v1}]
    mirror: {subset: v2}
`)
	w1, w2 := webWorkload("hold", "hold-v1", pln.Addr().(*net.TCPAddr).Port), webWorkload("hold", "hold-v2", sln.Addr().(*net.TCPAddr).Port)
	w1.Labels, w2.Labels = map[string]string{"version": "v1"}, map[string]string{"version": "v2"}
	logPath := filepath.Join(t.TempDir(), "access.log")
	a := startAgentWith(t, agentOpts{name: "holdn", site: "s1", region: "r1", vipOctet: 89, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{w1, w2}}, func(c *Config) { c.AccessLog = AccessLogConfig{Path: logPath} })
	waitFor(t, "endpoints", func() bool { return len(endpointsOf(a, "demo/hold")) == 2 })
	addr := "127.89.0.1:19789"
	waitGet200(t, &http.Client{Timeout: 5 * time.Second}, "http://"+addr+"/")

	const conns, reqs = 2, 24
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- holdPipeline(addr, c, reqs)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	waitFor(t, "every request mirrored", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(mirrored) == conns*reqs
	})
	waitFor(t, "no request in flight", func() bool { return a.l7Inflight.Load() == 0 })
	var lines []map[string]any
	waitFor(t, "an access-log line per request", func() bool {
		lines = lines[:0]
		for _, l := range readLog(t, logPath) {
			if p, _ := l["path"].(string); strings.Count(p, "/") == 2 {
				lines = append(lines, l)
			}
		}
		return len(lines) == conns*reqs
	})
	for _, l := range lines {
		p, _ := l["path"].(string)
		if ua := l["user_agent"]; ua != "ua-"+p[strings.LastIndexByte(p, '/')+1:] {
			t.Errorf("access-log line of %s has user agent %v", p, ua)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, b := range bad {
		t.Error(b)
	}
}

// holdPipeline writes TestH1RecycleHolders' requests on one connection at
// once and checks their answers, in order.
func holdPipeline(addr string, conn, reqs int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	var all strings.Builder
	type answer struct {
		code int
		body string
	}
	want := make([]answer, reqs)
	for i := range reqs {
		id := fmt.Sprintf("c%dr%d", conn, i)
		mode := "ok"
		want[i] = answer{200, id}
		switch i % 6 {
		case 1:
			mode = "stall"
		case 4:
			mode, want[i] = "kept", answer{503, "kept-" + id}
		}
		fields := []string{"X-Id: " + id, "X-Only-" + id + ": y", "User-Agent: ua-" + id}
		if i%2 == 0 {
			fields = append(fields, "Connection: X-Hop", "X-Hop: 1")
		}
		for k := range i % 20 { // past the kept map's size on some
			fields = append(fields, fmt.Sprintf("X-Pad-%d: p", k))
		}
		fmt.Fprintf(&all, "GET /%s/%s HTTP/1.1\r\nHost: hold.demo\r\n%s\r\n\r\n", mode, id, strings.Join(fields, "\r\n"))
	}
	werr := make(chan error, 1)
	go func() {
		_, err := io.WriteString(c, all.String())
		werr <- err
	}()
	br := bufio.NewReader(c)
	for i := range reqs {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return fmt.Errorf("connection %d, response %d: %v", conn, i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want[i].code || string(body) != want[i].body {
			return fmt.Errorf("connection %d, response %d: %d %q, want %d %q", conn, i, resp.StatusCode, body, want[i].code, want[i].body)
		}
	}
	return <-werr
}
