package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestGossipFlapDoesNotEject: gossip declares a serving node dead while
// requests are in flight to it, then alive again (a false suspicion: on a
// loaded machine a node not scheduled for half a second is declared dead
// and refutes it). The cancelled attempts fail over, and the node serves
// again as soon as gossip says it lives: the cancellations are the gossip
// verdict, not the endpoint's failures, so they must not eject it for the
// outlier detection's 10 s (they did: TestSilentNodeDeathGossip in
// cmd/fogmesh then saw the node never serve within 15 s). VIP octets 70–72.
func TestGossipFlapDoesNotEject(t *testing.T) {
	// Liveness here is gossip's alone: the control plane's 800 ms node
	// timeout of startControl marked b not ready in a loaded package run.
	cp := startControlWith(t, t.TempDir(), "", func(c *control.Config) { c.NodeTimeout = time.Minute })
	apply(t, cp, httpSvcDoc("flap", 19470, "http"))
	gossipOn := func(c *Config) { c.GossipAddr = "127.0.0.1:0" }
	slowB := startDelayed(t, "flap-b", 400*time.Millisecond)
	fastC := startDelayed(t, "flap-c", 0)
	startAgentWith(t, agentOpts{name: "b", site: "s1", region: "r1", vipOctet: 71, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("flap", "flap-b", slowB)}}, gossipOn)
	startAgentWith(t, agentOpts{name: "c", site: "s1", region: "r1", vipOctet: 72, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("flap", "flap-c", fastC)}}, gossipOn)
	a := startAgentWith(t, agentOpts{name: "a", site: "s1", region: "r1", vipOctet: 70, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()}, gossipOn)
	waitFor(t, "a to route to both endpoints", func() bool {
		eps := endpointsOf(a, "demo/flap")
		return len(eps) == 2 && eps[0].Healthy && eps[1].Healthy
	})
	testenv.WaitFor(t, 20*time.Second, "a's gossip to see b and c", func() bool { return len(a.gossip.Members()) == 3 })
	url := "http://" + net.JoinHostPort(lookupA(t, a, "flap.demo.mesh."), "19470") + "/"
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	t.Cleanup(c.CloseIdleConnections)
	get := func() (string, error) {
		resp, err := c.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	waitFor(t, "the VIP to answer", func() bool { _, err := get(); return err == nil })

	// Twelve at once, round robin: six in flight to b (400 ms each).
	inFlightToB := func() int {
		a.watchMu.Lock()
		defer a.watchMu.Unlock()
		return len(a.nodeWatches["b"])
	}
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if body, err := get(); err != nil || body != "flap-b" && body != "flap-c" {
				errs <- fmt.Errorf("%q, %v", body, err)
			}
		}()
	}
	testenv.WaitFor(t, 10*time.Second, "5 requests in flight to b", func() bool { return inFlightToB() >= 5 })
	a.onGossip("b", false) // the false suspicion
	a.onGossip("b", true)  // refuted
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a request failed across the flap (it should fail over): %v", err)
	}
	// b's own report of its endpoint can lag: in about 1 run in 12 (at
	// 239bda7 too) a saw flap-b unhealthy from b's report right after the
	// flap, for less than a second. That is b's health state, not a's
	// verdict; wait for it (a's ejection, the bug this test guards, lasts
	// 10 s and would still keep b from serving below).
	testenv.WaitFor(t, 5*time.Second, "b's endpoint reported healthy", func() bool {
		for _, ep := range endpointsOf(a, "demo/flap") {
			if ep.Name == "flap-b" {
				return ep.Healthy
			}
		}
		return false
	})
	// b serves again at once: round robin gives it every other request.
	fromB := 0
	for range 6 {
		if body, err := get(); err != nil {
			t.Fatal(err)
		} else if body == "flap-b" {
			fromB++
		}
	}
	if fromB == 0 {
		t.Fatalf("b served none of 6 requests after gossip said it lives again; a's endpoints: %+v", endpointsOf(a, "demo/flap"))
	}
}

// TestWatchOfADeadNode: an attempt whose node gossip declared dead before
// its watch was registered (picked just before the verdict) is cancelled
// at once, as one in flight at the verdict is; on a frozen node it would
// otherwise wait for its timeout. A live node's watch stays open, and a
// node that refuted its death is watched as live again.
func TestWatchOfADeadNode(t *testing.T) {
	a, err := New(Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
		DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", VIPRange: "127.51.0.0/16", Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	a.onGossip("frozen", false)
	ctx, release := a.watchNode(context.Background(), "frozen")
	defer release()
	if ctx.Err() == nil || context.Cause(ctx) != errNodeDead {
		t.Fatalf("a watch of a node declared dead before it: cause %v, want errNodeDead", context.Cause(ctx))
	}
	live, releaseLive := a.watchNode(context.Background(), "awake")
	defer releaseLive()
	a.onGossip("frozen", true) // refuted
	again, releaseAgain := a.watchNode(context.Background(), "frozen")
	defer releaseAgain()
	if live.Err() != nil || again.Err() != nil {
		t.Fatalf("watches of live nodes cancelled: %v, %v", context.Cause(live), context.Cause(again))
	}
}

// TestDialCancelledByDeathEjectsNothing: a dial to a node gossip declares
// dead while it waits (a frozen peer: its mesh port accepts and never
// answers) fails with errNodeDead, and that failure ejects nothing. It
// failed as the context's "operation was canceled", which the HTTP pool
// handed to an attempt gossip had not cancelled (its watch came after the
// refutation): the attempt took it for b's connect failure and ejected b
// for EjectFor, and TestGossipFlapDoesNotEject saw b serve nothing.
func TestDialCancelledByDeathEjectsNothing(t *testing.T) {
	a, err := New(Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
		DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", VIPRange: "127.56.0.0/16", Insecure: true,
		EjectFor: Duration(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	silent := frozenPeer(t)
	svc := &api.Service{Meta: api.Meta{Namespace: "demo", Name: "frozen"}}
	sv := &serviceView{svc: svc}
	ev := &endpointView{key: "demo/frozen-1", ep: &api.Endpoint{Meta: api.Meta{Namespace: "demo", Name: "frozen-1"},
		Spec: api.EndpointSpec{Service: "frozen", Node: "frozen"}}, mesh: silent, healthy: true}
	errc := make(chan error, 1)
	go func() {
		c, err := a.dialStream(context.Background(), sv, ev, "tcp", false)
		if c != nil {
			c.Close()
		}
		errc <- err
	}()
	testenv.WaitFor(t, 5*time.Second, "the dial to watch its node", func() bool {
		a.watchMu.Lock()
		defer a.watchMu.Unlock()
		return len(a.nodeWatches["frozen"]) > 0
	})
	a.onGossip("frozen", false)
	a.onGossip("frozen", true) // refuted at once
	err = <-errc
	if !errors.Is(err, errNodeDead) {
		t.Fatalf("a dial gossip cancelled failed with %v, want errNodeDead", err)
	}
	a.dialFailed(sv, ev, err)
	if a.isEjectedAnywhere(ev.key) {
		t.Fatal("a dial gossip cancelled ejected its endpoint")
	}
}

// frozenPeer is a mesh address that accepts connections and never
// answers on them, as a frozen node's agent does.
func frozenPeer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}
