package agent

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// panicOnPath is a DecisionLogger that panics for a request to path once
// the fast path watches its client (a response head slow to come: the
// watch reads the client's connection on its own goroutine).
type panicOnPath struct{ path string }

func (p panicOnPath) LogDecision(_ context.Context, d AuthzRecord) {
	if d.Request.Path != p.path {
		return
	}
	buf := make([]byte, 1<<20)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if strings.Contains(string(buf[:runtime.Stack(buf, true)]), "(*h1ClientConn).headWatch") {
			break
		}
	}
	panic("test: a bug mid-request")
}

// TestH1PanicWhileHeadWatched: a panic mid-request (a bug; recoverConn
// keeps the agent up and closes the connection) while the fast path's
// watch of its client reads the client's connection (watchHead) must not
// hand the connection's reader back to the pool before the watch has let
// go of it: the next connection would get a reader another goroutine
// still fills (its error, or bytes of a closed connection). Under -race
// the pool's Reset and the watch's read were reported.
func TestH1PanicWhileHeadWatched(t *testing.T) {
	old := headWatchAfter
	t.Cleanup(func() { headWatchAfter = old }) // after the agent stops (registered first)
	headWatchAfter = 10 * time.Millisecond
	be := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "ok %s", r.URL.Path)
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
metadata: {name: pw, namespace: demo}
spec: {ports: [{name: web, port: 19790, protocol: http}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: pw, namespace: demo}
spec: {service: pw, rules: [{to: [{paths: ["/*"]}]}]}
`)
	a := startAgentWith(t, agentOpts{name: "pwn", site: "s1", region: "r1", vipOctet: 89, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("pw", "pw-1", bln.Addr().(*net.TCPAddr).Port)}},
		func(c *Config) { c.DecisionLogger = panicOnPath{"/panic"} })
	waitFor(t, "the policy", func() bool { return a.view.Load().authz.Len() == 1 })
	addr := "127.89.0.1:19790"
	waitGet200(t, &http.Client{Timeout: 5 * time.Second}, "http://"+addr+"/")
	base := a.m.panics.Get()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	fmt.Fprintf(c, "GET /panic HTTP/1.1\r\nHost: pw.demo\r\n\r\n")
	if _, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
		t.Fatal("an answer to the request that panicked")
	}
	waitFor(t, "the panic counted", func() bool { return a.m.panics.Get() == base+1 })
	// The agent serves on, each connection with a reader of its own.
	for i := range 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET /after/%d HTTP/1.1\r\nHost: pw.demo\r\n\r\n", i)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d after the panic: %v %v", i, resp, err)
		}
		resp.Body.Close()
		c.Close()
	}
}
