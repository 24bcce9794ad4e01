package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/httpproxy"
)

// TestH1HeaderReuse: the fast path reuses request and response headers
// (httpproxy.HeaderBuf, pooled) from one request to the next.
// Over one keep-alive connection, requests with different fields each
// reach the endpoint with their own fields only, each client gets its own
// response's fields only, a retried request's last response (kept while
// the next attempt is parsed) keeps its fields, and a mirrored copy, held
// by the shadow until the client has sent all its requests, carries the
// fields of the request it copies.
func TestH1HeaderReuse(t *testing.T) {
	// The endpoint echoes X-Id, and refuses a request carrying another
	// request's X-Only field; ids starting with "fail" get a 503 (retried).
	be := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Id")
		for k := range r.Header {
			if strings.HasPrefix(k, "X-Only-") && k != http.CanonicalHeaderKey("X-Only-"+id) {
				http.Error(w, "stale field "+k, http.StatusBadRequest)
				return
			}
		}
		w.Header().Set("X-Echo", id)
		w.Header().Set("X-Only-"+id, "y")
		if strings.HasPrefix(id, "fail") {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		io.WriteString(w, id)
	})}
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go be.Serve(bln)
	t.Cleanup(func() { be.Close() })

	var mu sync.Mutex
	copies := map[string]string{} // X-Id → the copy's X-Only fields
	release := make(chan struct{})
	shadow := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var only []string
		for k := range r.Header {
			if strings.HasPrefix(k, "X-Only-") {
				only = append(only, k)
			}
		}
		mu.Lock()
		copies[r.Header.Get("X-Id")] = strings.Join(only, ",")
		mu.Unlock()
		select {
		case <-release:
		case <-r.Context().Done():
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
metadata: {name: reuse, namespace: demo}
spec:
  ports: [{name: web, port: 19139, protocol: http}]
---
apiVersion: fogmesh.io/v1alpha1
kind: DestinationPolicy
metadata: {name: reuse, namespace: demo}
spec:
  service: reuse
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Route
metadata: {name: reuse, namespace: demo}
spec:
  service: reuse
  rules:
  - match: [{headers: {x-mirror: {exact: "1"}}}]
    backends: [{subset: v1}]
    mirror: {subset: v2}
  - retries: {attempts: 2, on5xx: true}
    backends: [{subset: v1}]
`)
	w1, w2 := webWorkload("reuse", "reuse-v1", bln.Addr().(*net.TCPAddr).Port), webWorkload("reuse", "reuse-v2", sln.Addr().(*net.TCPAddr).Port)
	w1.Labels, w2.Labels = map[string]string{"version": "v1"}, map[string]string{"version": "v2"}
	a := startAgent(t, agentOpts{name: "reusen", site: "s1", region: "r1", vipOctet: 213, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{w1, w2}})
	waitFor(t, "endpoints", func() bool { return len(endpointsOf(a, "demo/reuse")) == 2 })
	waitGet200(t, nil, "http://127.213.0.1:19139/")

	c, err := net.Dial("tcp", "127.213.0.1:19139")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	var mirrored []string
	for i := range 30 {
		id := fmt.Sprint(i)
		extra := ""
		switch i % 3 {
		case 1:
			id = "fail" + id
		case 2:
			extra = "X-Mirror: 1\r\n"
			mirrored = append(mirrored, id)
		}
		// Fewer or more fields than the last request, in another order.
		fields := []string{"X-Id: " + id, "X-Only-" + id + ": y", extra + strings.Repeat("X-Pad: p\r\n", i%4) + "Accept: */*"}
		if i%2 == 1 {
			fields[0], fields[2] = fields[2], fields[0]
		}
		fmt.Fprintf(c, "GET /%s HTTP/1.1\r\nHost: reuse.demo\r\n%s\r\n\r\n", id, strings.Join(fields, "\r\n"))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %s: %v", id, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := 200
		if strings.HasPrefix(id, "fail") {
			want = 503
		}
		if resp.StatusCode != want || string(body) != id || resp.Header.Get("X-Echo") != id {
			t.Fatalf("request %s: %d %q, X-Echo %q; want %d, its own", id, resp.StatusCode, body, resp.Header.Get("X-Echo"), want)
		}
		for k := range resp.Header {
			if strings.HasPrefix(k, "X-Only-") && k != http.CanonicalHeaderKey("X-Only-"+id) {
				t.Fatalf("request %s: response has another's field %s", id, k)
			}
		}
	}
	waitFor(t, "the copies", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(copies) == len(mirrored)
	})
	close(release)
	mu.Lock()
	defer mu.Unlock()
	for _, id := range mirrored {
		if got := copies[id]; got != http.CanonicalHeaderKey("X-Only-"+id) {
			t.Errorf("the copy of request %s has X-Only fields %q", id, got)
		}
	}
}

// TestKeptResponseDetached: a retried response whose body stalls is read
// on in the background after keepResponse gives up on it, so it keeps its
// header (httpproxy.DetachResponseHeader): the client connection's next
// response does not reuse it.
func TestKeptResponseDetached(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for n := 1; ; n++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			go func() {
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if line == "\r\n" { // the first answer stalls in its body, the second is whole
						fmt.Fprintf(c, "HTTP/1.1 503 No\r\nX-Id: %d\r\nContent-Length: 20\r\n\r\n", n)
						if n > 1 {
							io.WriteString(c, strings.Repeat("x", 20))
						}
					}
				}
			}()
		}
	}()
	pool := httpproxy.NewPool(httpproxy.PoolConfig{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ln.Addr().String())
	}})
	defer pool.Close(true)
	var hb httpproxy.HeaderBuf
	req, _ := http.NewRequestWithContext(httpproxy.WithResponseHeaderBuf(context.Background(), &hb), "GET", "http://x/", nil)
	stalled, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if keepResponse(stalled, 50*time.Millisecond, nil) != nil {
		t.Fatal("a stalled body was kept")
	}
	hb.Done() // the request is over; the connection's next one
	next, err := pool.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, next.Body)
	next.Body.Close()
	// next's header may still be raw (httpproxy.ResponseField reads it).
	if got, want := stalled.Header.Get("X-Id"), "1"; got != want || httpproxy.ResponseField(next, "X-Id") != "2" {
		t.Errorf("X-Id %q, then %q; want 1, then 2", got, httpproxy.ResponseField(next, "X-Id"))
	}
}
