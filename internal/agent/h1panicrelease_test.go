package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// panicWriteConn panics on a write while panicking is set: a bug in the
// writing of a response, after the fast path wrapped its body.
type panicWriteConn struct {
	net.Conn
	panicking bool
}

func (c *panicWriteConn) Write(p []byte) (int, error) {
	if c.panicking {
		panic("test: a bug while writing a response")
	}
	return c.Conn.Write(p)
}

// TestH1PanicReleasesRequest: a panic after the round trip (here while
// the response is written: its body is larger than the writer's buffer,
// so writing it writes to the connection) must not leave the request's
// slots taken when recoverConn has closed the connection: the client's
// place in the per-client limit (its next requests would be refused 429
// for good once maxRequestsPerClient had leaked) and the agent's
// requests in flight.
func TestH1PanicReleasesRequest(t *testing.T) {
	big := strings.Repeat("x", 1<<20)
	be := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, big)
	})}
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go be.Serve(bln)
	t.Cleanup(func() { be.Close() })
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: pr, namespace: demo}
spec: {ports: [{name: web, port: 19931, protocol: http}]}
`)
	const limit = 2
	a := startAgentWith(t, agentOpts{name: "prn", site: "s1", region: "r1", vipOctet: 99, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("pr", "pr-1", bln.Addr().(*net.TCPAddr).Port)}},
		func(c *Config) { c.MaxRequestsPerClient = limit })
	vip := "127.99.0.1:19931"
	hc := &http.Client{Timeout: 5 * time.Second}
	waitGet200(t, hc, "http://"+vip+"/")
	hc.CloseIdleConnections()
	ap := netip.MustParseAddrPort(vip)

	// serve hands the agent one connection from a loopback client, as its
	// accept loop does (recoverConn included), and returns the client's end
	// and a channel closed once the agent is done with it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serve := func(panicking bool) (net.Conn, chan struct{}) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer a.recoverConn(sc)
			a.handleConn(context.Background(), ap, &panicWriteConn{Conn: sc, panicking: panicking})
		}()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, done
	}
	base := a.m.panics.Get()
	for i := range limit + 1 {
		c, done := serve(true)
		fmt.Fprintf(c, "GET /panic/%d HTTP/1.1\r\nHost: pr.demo\r\n\r\n", i)
		if _, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
			t.Fatalf("request %d: an answer to the request that panicked", i)
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("request %d: the connection still served", i)
		}
		c.Close()
		if got := a.m.panics.Get(); got != base+1 {
			t.Fatalf("request %d: %v panics counted, want %v", i, got, base+1)
		}
		base++
	}
	// A leaked slot stays taken; one released a moment after the
	// connection's goroutine ended (CI saw 1 once, loaded) is no leak.
	waitFor(t, "no request in flight after the panics", func() bool { return a.l7Inflight.Load() == 0 })
	// The client is served on.
	c, done := serve(false)
	br := bufio.NewReader(c)
	for i := range limit + 1 {
		fmt.Fprintf(c, "GET /after/%d HTTP/1.1\r\nHost: pr.demo\r\n\r\n", i)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d after the panics: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil || len(b) != len(big) {
			t.Fatalf("request %d after the panics: %s, %d bytes, %v", i, resp.Status, len(b), err)
		}
	}
	c.Close()
	<-done
	waitFor(t, "no request in flight", func() bool { return a.l7Inflight.Load() == 0 })
	waitFor(t, "no client left in the limiter", func() bool {
		a.l7.clients.mu.Lock()
		defer a.l7.clients.mu.Unlock()
		return len(a.l7.clients.n) == 0
	})
}
