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

// inViewWindow runs fn once, with the VIP:port of service svc (namespace
// demo), in the window where a's listener for it is bound and the view
// that knows it is not yet published (testHookListening), under the
// agent's mu: fn must not take it. It returns a channel closed once fn
// returned.
func inViewWindow(t *testing.T, a *Agent, svc string, fn func(ap netip.AddrPort)) <-chan struct{} {
	t.Helper()
	ran := make(chan struct{})
	var once sync.Once
	hook := func(h *Agent, v *view) {
		if h != a {
			return
		}
		var ap netip.AddrPort
		for k, tgt := range v.byVIP {
			if tgt.svc == "demo/"+svc && k.Addr().Is4() {
				ap = k
			}
		}
		if !ap.IsValid() || a.view.Load().services["demo/"+svc] != nil {
			return // not the view that brings svc's VIP
		}
		once.Do(func() {
			defer close(ran)
			fn(ap)
		})
	}
	testHookListening.Store(&hook)
	t.Cleanup(func() { testHookListening.Store(nil) })
	return ran
}

// agentBeforeLate is an agent of node "v" (VIPs 127.219/16) that knows
// service "early" and has the workload w of a service not yet applied.
func agentBeforeLate(t *testing.T, w Workload) (*Agent, func(doc string)) {
	t.Helper()
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("early", 19775, "http"))
	a := startAgent(t, agentOpts{name: "v", site: "s1", region: "r1", vipOctet: 219, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{w}})
	waitFor(t, "the agent's view of early", func() bool { return a.view.Load().services["demo/early"] != nil })
	return a, func(doc string) { apply(t, cp, doc) }
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s never came", what)
	}
}

// TestNewVIPServedOnlyOnceItsViewIsPublished: a service applied to a
// running agent gets its VIP listener bound before the view that knows
// the VIP is published (so a client that resolves the name at once finds
// it listening). A connection that came in between was served with the
// view before, which did not know the VIP: it was closed unread, and the
// client got a reset (TestH1Conformance's first request failed so, now and
// then, under load). The hook connects in exactly that window.
func TestNewVIPServedOnlyOnceItsViewIsPublished(t *testing.T) {
	port, _ := startHTTP(t, "late-1")
	a, applyDoc := agentBeforeLate(t, webWorkload("late", "late-1", port))
	var (
		conn     net.Conn
		inWindow error // what the client saw while the view was not yet published
	)
	ran := inViewWindow(t, a, "late", func(ap netip.AddrPort) {
		c, err := net.Dial("tcp", ap.String())
		if err != nil {
			inWindow = err
			return
		}
		conn = c
		c.Write([]byte("GET / HTTP/1.1\r\nHost: late\r\nConnection: close\r\n\r\n"))
		// Served now, it would be closed: EOF or a reset within moments.
		// Not served, the read runs out of time.
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err = c.Read(make([]byte, 1))
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			inWindow = fmt.Errorf("served by the view before: %v", err) // err nil: answered
		}
	})
	applyDoc(httpSvcDoc("late", 19775, "http"))
	waitClosed(t, ran, "the view bringing late's VIP")
	if conn != nil {
		defer conn.Close()
	}
	if inWindow != nil {
		t.Fatalf("a connection made before the view was published: %v (want it queued until then)", inWindow)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("the queued connection, once the view was published: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("the queued connection: %s, want 200", resp.Status)
	}
}

// TestNewUDPPortServedOnlyOnceItsViewIsPublished: the same for a udp
// port. A datagram read in that window opened its flow on the view
// before, which failed ("no_endpoint") and dropped the client's
// datagrams for a second (udpRetryAfter): the first one was lost.
func TestNewUDPPortServedOnlyOnceItsViewIsPublished(t *testing.T) {
	echo := startUDPEcho(t, "lateudp-1")
	a, applyDoc := agentBeforeLate(t, udpWorkload("lateudp", "lateudp-1", echo.port()))
	noEndpoint := a.udpm().src.results["no_endpoint"] // the hook holds a.mu: no metricVal (gauges take it)
	var u *udpClient
	ran := inViewWindow(t, a, "lateudp", func(ap netip.AddrPort) {
		u = newUDPClient(t, "", ap.String())
		if _, err := u.c.WriteToUDPAddrPort([]byte("first"), u.vip); err != nil {
			t.Errorf("send: %v", err)
			return
		}
		// Read now, the flow fails within moments; not read, it never
		// does (a bounded look, not a wait for something that must come).
		for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); {
			if noEndpoint.Get() > 0 {
				return
			}
			time.Sleep(5 * time.Millisecond) // poll interval
		}
	})
	applyDoc(udpSvcDoc("lateudp", 19775, ""))
	waitClosed(t, ran, "the view bringing lateudp's VIP")
	if t.Failed() {
		return
	}
	buf := make([]byte, 1<<10)
	u.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, _, err := u.c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no answer to the datagram sent before the view was published: %v (flows failed on no endpoint: %v)", err, noEndpoint.Get())
	}
	if got := string(buf[:n]); got != "lateudp-1: first" {
		t.Fatalf("answer %q, want %q", got, "lateudp-1: first")
	}
}
