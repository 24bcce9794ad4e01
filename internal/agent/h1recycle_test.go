package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestH1RecycledHeaderPipelined: the fast path reuses a request's header
// map for the next request on its connection (httpproxy.HeaderBuf.Recycle).
// Over several connections at once, each pipelining its requests (all
// written before any answer is read), every request reaches the endpoint
// with its own fields only: none of the request before it on its
// connection (every other one carries no X-Id at all, and some more
// fields than a map is kept for), and each answer comes back in order.
// Each answer has its own fields and body only (its lean response is the
// connection's last one, reused: HeaderBuf.RecycleResponse). Under -race a
// late reader of a recycled map on another goroutine is reported
// (Recycle's clear is a write). Each response's body wrapper is
// the connection's too (h1ClientConn.done): every request's hold on its
// slots is released, once (the agent's in-flight count is back to 0, and
// the client, which sends more requests than its limit of requests in
// flight, is never refused).
func TestH1RecycledHeaderPipelined(t *testing.T) {
	be := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Id")
		if vv := r.Header["X-Id"]; len(vv) > 1 {
			http.Error(w, fmt.Sprintf("X-Id %q", vv), http.StatusBadRequest)
			return
		}
		for k := range r.Header {
			if strings.HasPrefix(k, "X-Only-") && k != http.CanonicalHeaderKey("X-Only-"+id) {
				http.Error(w, "stale field "+k, http.StatusBadRequest)
				return
			}
		}
		if r.Header.Get("X-Hop") != "" {
			http.Error(w, "hop-by-hop field passed on", http.StatusBadRequest)
			return
		}
		if id == "" {
			id = "none:" + r.URL.Path
		} else {
			w.Header().Set("X-Only-"+id, "y")
		}
		io.WriteString(w, id)
	})}
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go be.Serve(bln)
	t.Cleanup(func() { be.Close() })
	f := agentInFront(t, inFront{node: "rc", octet: 73, svc: "recycle", vipPort: 19773, port: bln.Addr().(*net.TCPAddr).Port})
	addr := f.addr

	const conns, reqs = 4, 80 // more than defaultMaxPerClient in all
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- recyclePipeline(addr, c, reqs)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	waitFor(t, "no request in flight", func() bool { return f.agent.l7Inflight.Load() == 0 })
}

// recyclePipeline writes reqs requests on one connection at once and
// checks their answers.
func recyclePipeline(addr string, conn, reqs int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	var all strings.Builder
	want := make([]string, reqs)
	for i := range reqs {
		path := fmt.Sprintf("/%d/%d", conn, i)
		if i%2 == 1 { // no X-Id, nothing of the last request's
			want[i] = "none:" + path
			fmt.Fprintf(&all, "GET %s HTTP/1.1\r\nHost: recycle.demo\r\nAccept: */*\r\n\r\n", path)
			continue
		}
		id := fmt.Sprintf("c%dr%d", conn, i)
		want[i] = id
		fields := []string{"X-Id: " + id, "X-Only-" + id + ": y", "Connection: X-Hop", "X-Hop: 1"}
		for k := range i % 24 { // past maxSpareFields on some
			fields = append(fields, fmt.Sprintf("X-Pad-%d: p", k))
		}
		if i%4 == 2 {
			fields[0], fields[len(fields)-1] = fields[len(fields)-1], fields[0]
		}
		fmt.Fprintf(&all, "GET %s HTTP/1.1\r\nHost: recycle.demo\r\n%s\r\n\r\n", path, strings.Join(fields, "\r\n"))
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
		if resp.StatusCode != http.StatusOK || string(body) != want[i] {
			return fmt.Errorf("connection %d, response %d: %d %q, want 200 %q", conn, i, resp.StatusCode, body, want[i])
		}
		for k := range resp.Header {
			if strings.HasPrefix(k, "X-Only-") && k != http.CanonicalHeaderKey("X-Only-"+want[i]) {
				return fmt.Errorf("connection %d, response %d: another's field %s", conn, i, k)
			}
		}
	}
	return <-werr
}
