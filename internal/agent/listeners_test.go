package agent

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// TestNewVIPServedOnlyOnceItsViewIsPublished: a service applied to a
// running agent gets its VIP listener bound before the view that knows
// the VIP is published (so a client that resolves the name at once finds
// it listening). A connection that came in between was served with the
// view before, which did not know the VIP: it was closed unread, and the
// client got a reset (TestH1Conformance's first request failed so, now and
// then, under load). The hook connects in exactly that window.
func TestNewVIPServedOnlyOnceItsViewIsPublished(t *testing.T) {
	port, _ := startHTTP(t, "late-1")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("early", 19775, "http"))
	a := startAgent(t, agentOpts{name: "v", site: "s1", region: "r1", vipOctet: 219, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("late", "late-1", port)}})
	waitFor(t, "the agent's view of early", func() bool { return a.view.Load().services["demo/early"] != nil })

	var (
		mu       sync.Mutex
		conn     net.Conn
		inWindow error // what the client saw while the view was not yet published
		hooked   = make(chan struct{})
		once     sync.Once
	)
	hook := func(h *Agent, v *view) {
		if h != a {
			return
		}
		var ap netip.AddrPort
		for k, tgt := range v.byVIP {
			if tgt.svc == "demo/late" {
				ap = k
			}
		}
		if !ap.IsValid() || a.view.Load().services["demo/late"] != nil {
			return // not the view that brings late's VIP
		}
		once.Do(func() {
			defer close(hooked)
			c, err := net.Dial("tcp", ap.String())
			if err != nil {
				mu.Lock()
				inWindow = err
				mu.Unlock()
				return
			}
			c.Write([]byte("GET / HTTP/1.1\r\nHost: late\r\nConnection: close\r\n\r\n"))
			// Served now, it would be closed: EOF or a reset within
			// moments. Not served, the read runs out of time.
			c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			_, err = c.Read(make([]byte, 1))
			mu.Lock()
			conn = c
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				inWindow = fmt.Errorf("served by the view before: %v", err) // err nil: answered
			}
			mu.Unlock()
		})
	}
	testHookListening.Store(&hook)
	t.Cleanup(func() { testHookListening.Store(nil) })
	apply(t, cp, httpSvcDoc("late", 19775, "http"))
	select {
	case <-hooked:
	case <-time.After(10 * time.Second):
		t.Fatal("the view bringing late's VIP was never built")
	}
	mu.Lock()
	c, err := conn, inWindow
	mu.Unlock()
	if c == nil || err != nil {
		t.Fatalf("a connection made before the view was published: %v (want it queued until then)", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the queued connection, once the view was published: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("the queued connection: %s, want 200", resp.Status)
	}
}
