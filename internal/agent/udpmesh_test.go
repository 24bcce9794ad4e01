package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/transport"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// UDP flows across the mesh (udpmesh.go): two and three agents, the
// destination's authorization, secure mode, the destination's bounds.

// TestUDPAcrossMesh: a client on node a reaches workloads on b and c
// through a's VIP and one mesh stream per flow; b (same site) is
// preferred. A datagram over b's maxDatagram is dropped at b, counted. The
// flow ends on both agents when idle. When b's agent dies, the flow moves
// to c (next tier) and new flows go there.
func TestUDPAcrossMesh(t *testing.T) {
	eb, ec := startUDPEcho(t, "b"), startUDPEcho(t, "c")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, udpSvcDoc("rtp", 19635, `,"timeouts":{"idle":"1s"}`))
	ctl := []string{cp.SyncAddr()}
	b := startAgentWith(t, agentOpts{name: "b", site: "s1", region: "r1", vipOctet: 164, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{udpWorkload("rtp", "b", eb.port())}}, func(c *Config) { c.UDP.MaxDatagram = 1000 })
	startAgent(t, agentOpts{name: "c", site: "s2", region: "r1", vipOctet: 165, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{udpWorkload("rtp", "c", ec.port())}})
	a := startAgent(t, agentOpts{name: "a", site: "s1", region: "r1", vipOctet: 163, control: ctl, stateDir: t.TempDir()})
	waitFor(t, "a to learn b's and c's endpoints", func() bool {
		tiers := map[string]string{}
		for _, e := range endpointsOf(a, "demo/rtp") {
			if e.Healthy {
				tiers[e.Node] = e.Tier
			}
		}
		return tiers["b"] == "site" && tiers["c"] == "region"
	})
	cl := newUDPClient(t, "", "127.163.0.1:19635")
	cl.mustAsk("hello", "b: hello")
	for i := range 5 {
		if got := cl.ask([]byte(fmt.Sprint(i)), 3*time.Second); got != fmt.Sprint("b: ", i) {
			t.Fatalf("datagram %d: %q", i, got)
		}
	}
	if n := metricVal(b, dstActive); n != 1 {
		t.Fatalf("b relays %v flows, want 1", n)
	}
	if got := cl.ask(bytes.Repeat([]byte("x"), 1001), 200*time.Millisecond); got != "" {
		t.Fatalf("a datagram over b's maxDatagram was answered (%d bytes)", len(got))
	}
	waitFor(t, "b to count the oversize drop", func() bool {
		return metricVal(b, `fogmesh_udp_drops_total{side="destination",reason="oversize"}`) == 1
	})
	if got := cl.ask([]byte("still"), 3*time.Second); got != "b: still" {
		t.Fatalf("the flow after an oversize datagram: %q", got)
	}
	for _, p := range []string{"0", "1", "2", "3", "4", "still"} {
		if n := eb.received(p); n != 1 {
			t.Fatalf("b's workload got %q %d times, want once", p, n)
		}
	}
	// b counts a datagram after its write to the workload returns, so the
	// echo can come back before the last one is counted.
	waitFor(t, "b to count 7 datagrams to its workload", func() bool {
		return metricVal(b, `fogmesh_udp_datagrams_total{side="destination",dir="up"}`) >= 7
	})
	waitFor(t, "the flow to end on both agents", func() bool {
		return metricVal(a, srcActive) == 0 && metricVal(b, dstActive) == 0
	})

	cl.mustAsk("again", "b: again")
	b.Close() // b's node dies with the flow open
	cl.mustAsk("moved", "c: moved")
	newUDPClient(t, "", "127.163.0.1:19635").mustAsk("new", "c: new")
}

// TestUDPAuthorizedAtDestination: the destination agent authorizes a udp
// flow as a TCP stream, once per flow by source identity: the frontend's
// flow reaches the workload, an unknown client's is denied at b and its
// datagrams are dropped at a.
func TestUDPAuthorizedAtDestination(t *testing.T) {
	e := startUDPEcho(t, "b")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: coap, namespace: demo}
spec: {ports: [{name: udp, port: 19636, protocol: udp}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: coap-frontend, namespace: demo}
spec: {service: coap, rules: [{from: [{principals: ["`+frontendID+`"]}]}]}`)
	ctl := []string{cp.SyncAddr()}
	b := startAgent(t, agentOpts{name: "b", site: "s1", region: "r1", vipOctet: 164, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{udpWorkload("coap", "b", e.port())}})
	a := startAgent(t, agentOpts{name: "a", site: "s1", region: "r1", vipOctet: 163, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{identityWorkload("frontend", frontendIP), identityWorkload("intruder", intruderIP)}})
	waitFor(t, "a to learn b's endpoint", func() bool { return len(endpointsOf(a, "demo/coap")) == 1 })
	vip := "127.163.0.1:19636"
	newUDPClient(t, frontendIP, vip).mustAsk("ok", "b: ok")
	intruder := newUDPClient(t, intruderIP, vip)
	if got := intruder.ask([]byte("let me in"), 300*time.Millisecond); got != "" {
		t.Fatalf("the intruder's flow was answered %q", got)
	}
	waitFor(t, "the denial to be counted at a", func() bool {
		return metricVal(a, `fogmesh_udp_flows_total{side="source",result="denied"}`) == 1
	})
	if n := metricVal(b, `fogmesh_udp_flows_total{side="destination",result="ok"}`); n != 1 {
		t.Fatalf("b opened %v flows, want only the frontend's", n)
	}
	if n := e.received("let me in"); n != 0 {
		t.Fatalf("the workload got the intruder's datagram %d times", n)
	}
}

// TestUDPAcrossSecureMesh: in secure mode a udp flow crosses the mTLS mesh
// port like a TCP connection, and the destination authorizes it by the
// source identity the source node vouches for.
func TestUDPAcrossSecureMesh(t *testing.T) {
	cpDir := t.TempDir()
	cp := startControlWith(t, cpDir, "", func(c *control.Config) { c.Insecure = false })
	applySecure(t, cp, cpDir, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: coap, namespace: demo}
spec: {ports: [{name: udp, port: 19637, protocol: udp}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: frontend, namespace: demo}
spec: {ports: [{name: x, port: 19638}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: intruder, namespace: demo}
spec: {ports: [{name: x, port: 19639}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: coap-frontend, namespace: demo}
spec: {service: coap, rules: [{from: [{principals: ["`+frontendID+`"]}]}]}`)
	secure := func(c *Config) {
		tok, err := cp.CreateToken(identity.TokenJoin, "s1", "", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		c.Insecure, c.JoinToken, c.WorkloadAPISocket = false, tok, "off"
	}
	e := startUDPEcho(t, "b")
	ctl := []string{cp.SyncAddr()}
	b := startAgentWith(t, agentOpts{name: "b", site: "s1", region: "r1", vipOctet: 164, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{udpWorkload("coap", "b", e.port())}}, secure)
	a := startAgentWith(t, agentOpts{name: "a", site: "s1", region: "r1", vipOctet: 163, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{identityWorkload("frontend", frontendIP), identityWorkload("intruder", intruderIP)}}, secure)
	if a.ident == nil || b.ident == nil {
		t.Fatal("an agent runs without a node identity")
	}
	waitFor(t, "a to learn b's endpoint and b a's frontend", func() bool {
		eps := endpointsOf(a, "demo/coap")
		return len(eps) == 1 && eps[0].Healthy && len(endpointsOf(b, "demo/frontend")) == 1
	})
	r, _ := a.LookupService("demo", "coap")
	vip := netip.AddrPortFrom(r.V4, 19637).String()
	newUDPClient(t, frontendIP, vip).mustAsk("secure", "b: secure")
	if n := metricVal(b, dstActive); n != 1 {
		t.Fatalf("b relays %v flows, want 1", n)
	}
	if got := newUDPClient(t, intruderIP, vip).ask([]byte("let me in"), 300*time.Millisecond); got != "" {
		t.Fatalf("the intruder's flow was answered %q", got)
	}
	waitFor(t, "the denial to be counted at a", func() bool {
		return metricVal(a, `fogmesh_udp_flows_total{side="source",result="denied"}`) == 1
	})
}

// TestUDPStreamBeforeServiceIsKnown: a peer can hold this node's endpoint
// before this agent holds the service (the control plane passes the
// endpoint on while this agent applies its first configuration). A udp
// stream to a workload of the service registered here is served then, as
// a TCP stream is; one to an endpoint that is not this node's workload of
// the service is still refused.
func TestUDPStreamBeforeServiceIsKnown(t *testing.T) {
	e := startUDPEcho(t, "e")
	a, err := New(Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
		DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", VIPRange: "127.50.0.0/16", Insecure: true,
		Workloads: []Workload{udpWorkload("coap", "e", e.port())}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if hasService(a, "demo/coap") {
		t.Fatal("the agent holds demo/coap without a control plane: the test shows nothing")
	}
	ctx := context.Background()
	for _, h := range []transport.Header{
		{Namespace: "demo", Service: "coap", Endpoint: "coap-x", Port: "udp", Source: "peer", UDP: true},  // no such workload
		{Namespace: "demo", Service: "other", Endpoint: "coap-e", Port: "udp", Source: "peer", UDP: true}, // another service's
		{Namespace: "demo", Service: "coap", Endpoint: "coap-e", Port: "rtp", Source: "peer", UDP: true},  // no such port
	} {
		if c, err := a.DialLocal(ctx, h); !errors.Is(err, transport.ErrUnknownDestination) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("%+v: %v, want it refused", h, err)
		}
	}
	c, err := a.DialLocal(ctx, transport.Header{Namespace: "demo", Service: "coap", Endpoint: "coap-e", Port: "udp", Source: "peer", UDP: true})
	if err != nil {
		t.Fatalf("a udp stream to this node's workload before the service arrived: %v", err)
	}
	defer c.Close()
	if _, ok := c.(*udpLocal); !ok {
		t.Fatalf("served as %T, want a udp flow", c)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("early")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "e: early" {
		t.Fatalf("the workload's answer: %q, %v", buf[:n], err)
	}
	// Secure mode authorizes what it forwards: without the service its
	// policies are unknown, so the same stream waits for the service
	// (scopeWait) and is refused, counted.
	a.ident = &nodeIdentity{td: spiffeid.RequireTrustDomainFromString("fogmesh.local")}
	defer func() { a.ident = nil }()
	start := time.Now()
	c2, err := a.DialLocal(ctx, transport.Header{Namespace: "demo", Service: "coap", Endpoint: "coap-e", Port: "udp", Source: "peer", UDP: true})
	if !errors.Is(err, transport.ErrUnknownDestination) {
		if c2 != nil {
			c2.Close()
		}
		t.Fatalf("secure mode, service not held: %v, want it refused", err)
	}
	if took := time.Since(start); took < scopeWait {
		t.Fatalf("refused after %v, before waiting %v for the service", took, scopeWait)
	}
	if got := a.m.streamsUnknownService.Get(); got != 1 {
		t.Fatalf("fogmesh_agent_streams_unknown_service_total = %d, want 1", got)
	}
	// A name no workload here has is refused at once: it neither waits
	// nor widens a scoped agent's subscription.
	start = time.Now()
	if c3, err := a.DialLocal(ctx, transport.Header{Namespace: "demo", Service: "made-up", Endpoint: "coap-e", Port: "udp", Source: "peer", UDP: true}); !errors.Is(err, transport.ErrUnknownDestination) {
		if c3 != nil {
			c3.Close()
		}
		t.Fatalf("secure mode, a service with no workload here: %v, want it refused", err)
	}
	if took := time.Since(start); took >= scopeWait {
		t.Fatalf("a made-up service waited %v", took)
	}
}

// TestUDPDestinationIdle: the endpoint's agent ends a udp mesh stream
// that carried nothing for twice the service's idle timeout (a source
// that vanished without closing it), counted.
func TestUDPDestinationIdle(t *testing.T) {
	a, err := New(Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
		DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", VIPRange: "127.165.0.0/16", Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	e := startUDPEcho(t, "e")
	uc, err := net.DialUDP("udp", nil, e.c.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	svc := &api.Service{Meta: api.Meta{Name: "coap", Namespace: "demo"}}
	svc.Spec.Timeouts.Idle = api.Duration(100 * time.Millisecond)
	u := &udpLocal{UDPConn: uc, sv: &serviceView{svc: svc}, ev: &endpointView{key: "demo/coap-e", local: true}}
	stream, peer := net.Pipe()
	defer peer.Close()
	done := make(chan struct{})
	start := time.Now()
	go func() { a.relayUDP(context.Background(), transport.Header{}, stream, u); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the idle udp mesh stream was not ended")
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Fatalf("ended after %v, before twice the idle timeout", took)
	}
	if n := metricVal(a, `fogmesh_udp_idle_timeouts_total{side="destination"}`); n != 1 {
		t.Fatalf("destination idle timeouts %v, want 1", n)
	}
}

// TestUDPStreamMustMatchPort: the destination refuses a udp stream to a
// port that is not udp, and a plain stream to a udp port: neither side
// would understand the other's bytes.
func TestUDPStreamMustMatchPort(t *testing.T) {
	e := startUDPEcho(t, "e")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, "["+udpSvcDoc("coap", 19641, "")+","+svcDoc("db", 19642)+"]")
	a := startAgent(t, agentOpts{name: "solo", site: "s1", region: "r1", vipOctet: 165, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{udpWorkload("coap", "e", e.port()), {Name: "db-x", Service: "db", Namespace: "demo",
			Ports: []api.EndpointPort{{Name: "tcp", Port: e.port()}}, Check: Check{Type: "none"}}}})
	waitFor(t, "both services", func() bool { return hasService(a, "demo/coap") && hasService(a, "demo/db") })
	ctx := context.Background()
	for _, h := range []transport.Header{
		{Namespace: "demo", Service: "coap", Endpoint: "coap-e", Port: "udp", Source: "peer"},
		{Namespace: "demo", Service: "db", Endpoint: "db-x", Port: "tcp", Source: "peer", UDP: true},
	} {
		if c, err := a.DialLocal(ctx, h); !errors.Is(err, transport.ErrUnknownDestination) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("%+v: %v, want it refused", h, err)
		}
	}
	c, err := a.DialLocal(ctx, transport.Header{Namespace: "demo", Service: "coap", Endpoint: "coap-e", Port: "udp", Source: "peer", UDP: true})
	if err != nil {
		t.Fatalf("a udp stream to the udp port: %v", err)
	}
	c.Close()
}
