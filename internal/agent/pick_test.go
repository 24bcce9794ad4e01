package agent

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/balance"
)

func testView(t *testing.T, balancer string) (*Agent, *serviceView) {
	t.Helper()
	self := &api.Node{Meta: api.Meta{Name: "me"}, Spec: api.NodeSpec{Site: "s1", Region: "r1"}}
	res := newResources()
	svc := &api.Service{Meta: api.Meta{Name: "svc", Namespace: "ns"}, Spec: api.ServiceSpec{Balancer: balancer,
		Ports: []api.ServicePort{{Name: "p", Port: 80}}}, Status: api.ServiceStatus{VIPIndex: 1}}
	res.put(svc)
	for _, n := range []struct{ name, site, region string }{{"a", "s1", "r1"}, {"b", "s1", "r1"}, {"c", "s2", "r1"}, {"d", "s9", "r9"}} {
		res.put(&api.Node{Meta: api.Meta{Name: n.name}, Spec: api.NodeSpec{Site: n.site, Region: n.region, MeshAddress: "127.0.0.1:1"},
			Status: api.NodeStatus{Ready: true}})
		res.put(&api.Endpoint{Meta: api.Meta{Name: "e-" + n.name, Namespace: "ns"}, Spec: api.EndpointSpec{Service: "svc", Node: n.name,
			Address: "127.0.0.1", Ports: []api.EndpointPort{{Name: "p", Port: 1}}}, Status: api.EndpointStatus{Healthy: true}})
	}
	v := buildView(self, res, nil, testPrefix4, testPrefix6, api.DefaultTrustDomain)
	a := &Agent{cfg: Config{EjectFor: Duration(time.Minute)}, balancers: balance.NewSet(balance.SharedRand{})}
	return a, v.services["ns/svc"]
}

func TestSessionPolicies(t *testing.T) {
	for _, c := range []struct{ policy, want string }{{"stay", "d"}, {"nearest", "ab"}} {
		a, sv := testView(t, "round-robin")
		a.sessionsChanged = make(chan struct{}, 1)
		set := metrics.NewSet()
		a.m.sessionBinds, a.m.sessionEvictions, a.m.sessionsDropped = set.NewCounter("x"), set.NewCounter("y"), set.NewCounter("z")
		svc := *sv.svc
		svc.Spec.Session = &api.SessionAffinity{Header: "x-s", Policy: c.policy}
		sv.svc = &svc
		sv.sessions = map[string]string{"k": "e-d"} // bound to the far endpoint
		got := a.applySession(sv, "k", a.pick(sv, "p"))
		if !strings.Contains(c.want, got[0].ep.Spec.Node) {
			t.Errorf("policy %s: first %s, want %s", c.policy, got[0].ep.Spec.Node, c.want)
		}
		if c.policy == "nearest" && a.pendingSessions.order.Len() != 1 {
			t.Errorf("nearest did not report the rebinding")
		}
	}
}

func TestDetect(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"GET / HTTP/1.1\r\n", "http"},
		{"OPTIONS * HTTP/1.1\r\n", "http"},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http2"},
		{"\x10\x0e\x00\x04MQTT", "mqtt"},
		{"ping\n", "tcp"},
		{"GETX", "tcp"},
		{"", "tcp"}, // nothing within 500 ms: a server-speaks-first protocol
	} {
		client, server := net.Pipe()
		go func() {
			if c.in != "" {
				client.Write([]byte(c.in))
			}
		}()
		start := time.Now()
		got, peeked := detect(server)
		if got != c.want || !strings.HasPrefix(c.in, string(peeked)) {
			t.Errorf("%q: got %s (peeked %q), want %s", c.in, got, peeked, c.want)
		}
		if c.in != "" && time.Since(start) > 400*time.Millisecond {
			t.Errorf("%q: took %v to decide", c.in, time.Since(start))
		}
		client.Close()
		server.Close()
	}
}

// BenchmarkAdmit is the traffic-class admission on every L7 request.
func BenchmarkAdmit(b *testing.B) {
	a, sv := testView(&testing.T{}, "round-robin")
	a.cfg.MaxRequests = 1 << 30
	svc := *sv.svc
	svc.Spec.Classes = []api.TrafficClass{{Name: "urllc", Priority: 3}, {Name: "embb", Priority: 2}, {Name: "mmtc", Priority: 1}}
	sv.svc = &svc
	class := &svc.Spec.Classes[2]
	b.ReportAllocs()
	for b.Loop() {
		if a.admit(sv, class) {
			a.l7Inflight.Add(-1)
		}
	}
}

// TestDistanceFromMeasuredRTT: with no coordinates, the edge-aware distance
// to a remote endpoint is the RTT measured to its agent (1 ms = 100 km),
// and a local endpoint's is 0.
func TestDistanceFromMeasuredRTT(t *testing.T) {
	e := startEcho(t, "far", "127.0.0.1:0")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, svcDoc("rtt", 19031))
	startAgent(t, agentOpts{name: "srv", site: "s1", region: "r1", vipOctet: 214, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{wlFor("rtt", e)}})
	c := startAgent(t, agentOpts{name: "cli", site: "s1", region: "r1", vipOctet: 215, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), meshPing: 50 * time.Millisecond})
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(c, "demo/rtt")) == 1 })
	waitFor(t, "listener", func() bool { _, err := roundTrip("127.215.0.1:19031"); return err == nil })
	ev := c.view.Load().services["demo/rtt"].endpoints[0]
	waitFor(t, "an RTT to srv", func() bool { _, ok := c.peers.RTT(ev.ep.Spec.Node); return ok })
	rtt, _ := c.peers.RTT(ev.ep.Spec.Node)
	if d := c.distance(ev); d <= 0 || d != float64(rtt)/float64(time.Millisecond) {
		t.Fatalf("distance %v, RTT %v: want the RTT in ms", d, rtt)
	}
	if d := c.distance(&endpointView{local: true, mesh: ev.mesh}); d != 0 {
		t.Fatalf("local endpoint distance %v", d)
	}
	t.Logf("RTT to srv's agent %v: distance %.3f (×100 km)", rtt, c.distance(ev))
}

// TestPickOneEndpoint: a destination with one endpoint (pickSubset skips
// the balancer for it) gets that endpoint while it is usable, and none
// once it is unhealthy or its node is dead, as balance.Pick decides.
func TestPickOneEndpoint(t *testing.T) {
	a, sv := testView(t, "round-robin")
	sv.endpoints = sv.endpoints[:1]
	ev := sv.endpoints[0]
	if got := a.pick(sv, "p"); len(got) != 1 || got[0] != ev {
		t.Fatalf("usable: %v, want [%s]", got, ev.key)
	}
	if got := a.pick(sv, "other"); len(got) != 0 {
		t.Errorf("a port it does not serve: %v", got)
	}
	a.gossipDead.Store(ev.ep.Spec.Node, true)
	if got := a.pick(sv, "p"); len(got) != 0 {
		t.Errorf("node dead: %v, want none", got)
	}
	a.gossipDead.Delete(ev.ep.Spec.Node)
	ev.healthy = false
	if got := a.pick(sv, "p"); len(got) != 0 {
		t.Errorf("unhealthy: %v, want none", got)
	}
}
