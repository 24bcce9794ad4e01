package agent

import (
	"bufio"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// An endpoint whose address is one of the agent's own virtual IP:ports, or
// (with capture on) a captured ClusterIP:port, leads back into the agent:
// each connection would be dialed again to the same address, without end,
// until the agent runs out of file descriptors. A Kubernetes user who may
// create a selectorless Service and its EndpointSlice can point it at the
// Service's own ClusterIP. Such an endpoint is refused at dial time.

// activeConns reads fogmesh_agent_active_connections from the agent.
func (n *captureNode) activeConns(t *testing.T, p *agentProc) int {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: n.ns.DialContext}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://" + p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "fogmesh_agent_active_connections "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return int(f)
		}
	}
	t.Fatal("no fogmesh_agent_active_connections in /metrics")
	return 0
}

// TestCaptureEndpointLoopsBack: a service whose endpoint is its own
// ClusterIP:port, and one whose endpoint is its own virtual IP:port: a
// call to either fails at once, leaves no connection behind, and the
// agent goes on serving.
func TestCaptureEndpointLoopsBack(t *testing.T) {
	const octet = 238
	loopSvc := func(name string, port int, index uint32, clusterIP string) *api.Service {
		s := &api.Service{APIVersion: api.APIVersion, Kind: api.KindService, Meta: api.Meta{Name: name, Namespace: "demo"},
			Spec:   api.ServiceSpec{Ports: []api.ServicePort{{Name: "tcp", Port: port, Protocol: "tcp"}}},
			Status: api.ServiceStatus{VIPIndex: index}}
		if clusterIP != "" {
			s.Spec.ClusterIPs = []string{clusterIP}
		}
		return s
	}
	vip := api.VIPFor(netip.MustParsePrefix("127.238.0.0/16"), 10).String()
	n := newCaptureNode(t, octet, CaptureRequired, func(res *resources, cfg *Config) {
		res.put(loopSvc("cloop", 80, 9, "10.96.0.30"))
		res.put(loopSvc("vloop", 81, 10, ""))
		cfg.Workloads = append(cfg.Workloads,
			Workload{Name: "cloop-1", Service: "cloop", Namespace: "demo", Address: "10.96.0.30",
				Ports: []api.EndpointPort{{Name: "tcp", Port: 80}}, Check: Check{Type: "none"}},
			Workload{Name: "vloop-1", Service: "vloop", Namespace: "demo", Address: vip,
				Ports: []api.EndpointPort{{Name: "tcp", Port: 81}}, Check: Check{Type: "none"}})
	})
	p := n.start(t)
	testenv.WaitFor(t, 10*time.Second, "the loop ClusterIP in the rules", func() bool {
		d, _ := n.captured(t)
		for _, ap := range d {
			if ap.String() == "10.96.0.30:80" {
				return true
			}
		}
		return false
	})
	for _, addr := range []string{"10.96.0.30:80", vip + ":81"} {
		start := time.Now()
		if got, err := n.call(addr); err == nil {
			t.Fatalf("call %s: answered %q through a loop", addr, got)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("call %s took %v to fail", addr, took)
		}
		testenv.WaitFor(t, 5*time.Second, "no connection left open by "+addr, func() bool { return n.activeConns(t, p) == 0 })
	}
	if got, err := n.call(captureClusterIP); err != nil || got != "workload got hello" {
		t.Fatalf("the agent after the loops: %q, %v", got, err)
	}
}
