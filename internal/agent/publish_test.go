package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// spinUntil calls cond as fast as it can (yielding between calls) until it
// is true, for at most 10 s: it catches a state that lasts microseconds,
// such as a VIP published before its listener is bound.
func spinUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); runtime.Gosched() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// dialOnce connects to addr once, with no retry: a refused connection fails
// the test.
func dialOnce(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatalf("dial %s the moment it was published: %v", addr, err)
	}
	c.Close()
}

// TestVIPListensBeforeItIsPublished: services added while the agent runs;
// the test watches the DNS resolver (LookupService) and the routes as fast
// as it can and connects the moment the VIP shows: the listener must
// already accept.
func TestVIPListensBeforeItIsPublished(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	a := startAgent(t, agentOpts{name: "pub", site: "s1", region: "r1", vipOctet: 166, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir()})
	waitFor(t, "connected", func() bool { return a.connected.Load() })
	for i := 0; i < 16; i++ {
		name, port := fmt.Sprintf("late%d", i), 19300+i
		apply(t, cp, svcDoc(name, port))
		var vip netip.Addr
		if i%2 == 0 {
			spinUntil(t, name+" in DNS", func() bool {
				r, ok := a.LookupService("demo", name)
				vip = r.V4
				return ok
			})
		} else {
			spinUntil(t, name+" in the routes", func() bool {
				for _, r := range a.Routes() {
					if r.Service == "demo/"+name {
						vip = netip.MustParseAddr(r.VIP)
						return true
					}
				}
				return false
			})
		}
		dialOnce(t, netip.AddrPortFrom(vip, uint16(port)).String())
	}
}

// TestVIPNotPublishedBeforeRun: an agent restarted from its cache knows its
// services as soon as New returns, but shows none (DNS, routes) until Run
// has bound their listeners; then the first connection succeeds.
func TestVIPNotPublishedBeforeRun(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, svcDoc("cached", 19320))
	e := startEcho(t, "x", "127.0.0.1:0")
	dir := t.TempDir()
	o := agentOpts{name: "cache", site: "s1", region: "r1", vipOctet: 167, control: []string{cp.SyncAddr()},
		stateDir: dir, workloads: []Workload{wlFor("cached", e)}}
	first := startAgent(t, o)
	waitFor(t, "the service in the view", func() bool { _, ok := first.LookupService("demo", "cached"); return ok })
	first.Close()

	o.control = nil // offline: from the cache only
	a, err := New(agentConfig(o))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := a.LookupService("demo", "cached"); ok {
		t.Error("DNS answers for demo/cached before Run bound its VIP listener")
	}
	if r := a.Routes(); len(r) != 0 {
		t.Errorf("routes before Run bound any VIP listener: %+v", r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	var vip netip.Addr
	spinUntil(t, "demo/cached in DNS", func() bool {
		r, ok := a.LookupService("demo", "cached")
		vip = r.V4
		return ok
	})
	got, err := roundTrip(netip.AddrPortFrom(vip, 19320).String())
	if err != nil || got != "x: ping" {
		t.Fatalf("first connection after Run: %q, %v", got, err)
	}
}
