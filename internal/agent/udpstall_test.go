package agent

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/udpframe"
)

// A remote endpoint's agent that keeps its mesh stream open but never
// reads it (hostile, or wedged with its session alive) must not pin the
// source's flow: the flow ends or moves on within its idle timeout, and at
// once when its port closes. VIP octet 237, port 19693.

// unreadStreamFlow returns a flow of a real agent's udp port and a pump on
// a mesh upstream whose far end is never read. The far end is a net.Pipe
// (a fake): a real peer agent always reads its streams, and a hostile one
// cannot be started here.
func unreadStreamFlow(t *testing.T, idle time.Duration) (*udpFlow, chan error, net.Conn) {
	e := startUDPEcho(t, "e")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, udpSvcDoc("stall", 19693, ""))
	a := startAgent(t, agentOpts{name: "solo", site: "s1", region: "r1", vipOctet: 237, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{udpWorkload("stall", "e", e.port())}})
	var sv *serviceView
	waitFor(t, "the service and its endpoint", func() bool {
		sv = a.view.Load().services["demo/stall"]
		return sv != nil && len(sv.endpoints) == 1
	})
	// As a remote endpoint's: no dial happens, the stream is given.
	remote := &endpointView{key: sv.endpoints[0].key, ep: sv.endpoints[0].ep, mesh: "127.0.0.1:1"}
	p := &udpPort{a: a, lim: UDPConfig{}.withDefaults(), flows: map[netip.AddrPort]*udpFlow{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	t.Cleanup(p.cancel)
	f := &udpFlow{p: p, client: netip.MustParseAddrPort("127.0.0.1:5"), q: make(chan []byte, p.lim.QueueDatagrams)}
	f.ctx, f.cancel = context.WithCancel(p.ctx)
	f.touch()
	near, far := net.Pipe()
	t.Cleanup(func() { near.Close(); far.Close() })
	up := &meshUpstream{s: near, r: udpframe.NewReader(near, p.lim.MaxDatagram)}
	done := make(chan error, 1)
	go func() { done <- f.pump(up, sv, remote, idle) }()
	p.mu.Lock()
	if r := f.enqueueLocked([]byte("never read")); r != "" {
		t.Fatalf("enqueue: %s", r)
	}
	p.mu.Unlock()
	return f, done, near
}

// waitPump waits up to limit for the pump to return; if it does not, it
// unblocks it (so the agent can stop) and fails.
func waitPump(t *testing.T, done chan error, near net.Conn, limit time.Duration, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(limit):
		near.Close()
		<-done
		t.Fatalf("%s: the flow's pump still blocked on an unread mesh stream after %v", what, limit)
	}
}

// TestUDPFlowUnreadStreamIdles: the send on the unread stream fails within
// the flow's idle timeout (the flow re-pins or ends), not never.
func TestUDPFlowUnreadStreamIdles(t *testing.T) {
	_, done, near := unreadStreamFlow(t, 300*time.Millisecond)
	waitPump(t, done, near, 5*time.Second, "idle 300ms")
}

// TestUDPFlowUnreadStreamPortClosed: a port that closes (service removed,
// agent stopping) ends the flow at once, though its send is blocked.
func TestUDPFlowUnreadStreamPortClosed(t *testing.T) {
	f, done, near := unreadStreamFlow(t, time.Hour)
	f.p.cancel()
	waitPump(t, done, near, 5*time.Second, "port closed")
}
