package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// ejectPanicHandler is a log handler that panics on the outlier
// detection's ejection line: a bug in the round trip after an attempt's
// answer came (reportOutcomeAt logs it there), before the answer is
// returned.
type ejectPanicHandler struct{}

func (ejectPanicHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h ejectPanicHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "ejected") {
		panic("test: a bug after the answer came")
	}
	return nil
}
func (h ejectPanicHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h ejectPanicHandler) WithGroup(string) slog.Handler      { return h }

// TestPanicAfterAttemptClosesUpstream: a panic in the round trip after
// an attempt's answer came and before it is returned (here the ejection's
// log line) gives up that answer: its upstream connection is closed, not
// left open and out of the pool for good (and, with a request body still
// sent beside it, the goroutine sending it). The request is recorded as
// a panic in its attempt, as before.
func TestPanicAfterAttemptClosesUpstream(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	closed := make(chan struct{}, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if line == "\r\n" {
						break
					}
				}
				io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
				if _, err := br.ReadByte(); err != nil {
					closed <- struct{}{} // the agent closed it
				}
			}()
		}
	}()
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: prs, namespace: demo}
spec:
  ports: [{name: web, port: 19963, protocol: http}]
  outlierDetection: {consecutiveErrors: 1}
`)
	a := startAgentWith(t, agentOpts{name: "prs", site: "s1", region: "r1", vipOctet: 146, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("prs", "prs-1", ln.Addr().(*net.TCPAddr).Port)}},
		func(c *Config) { c.Logger = slog.New(ejectPanicHandler{}) })
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(a, "demo/prs")) == 1 })
	const vip = "127.146.0.1:19963"
	waitListening(t, vip)
	before := a.m.panics.Get()
	c, err := net.Dial("tcp", vip)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: prs\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
		t.Fatalf("an answer to the request that panicked: %s", resp.Status)
	}
	// Counted by recoverConn once the connection's goroutine let go of it.
	waitFor(t, "the panic counted", func() bool { return a.m.panics.Get() > before })
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream connection of the answer the panic cut is still open 10 s later")
	}
	holdsNothing(t, a)
	if n := a.m.panics.Get() - before; n != 1 {
		t.Errorf("fogmesh_agent_panics_total rose by %d, want 1", n)
	}
}
