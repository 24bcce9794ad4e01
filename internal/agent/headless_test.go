package agent

import (
	"net"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/miekg/dns"
)

// TestHeadlessService: a headless service (api.LabelHeadless) gets no
// virtual IP listener on the agent, and real queries to the agent's DNS
// answer its cluster and mesh names with its ready endpoints' addresses
// (an unhealthy workload left out), its endpoint's hostname with that
// endpoint's address, and SRV per port and endpoint.
func TestHeadlessService(t *testing.T) {
	up, err := net.Listen("tcp", "127.37.1.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	upPort := up.Addr().(*net.TCPAddr).Port
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: db, namespace: demo, labels: {fogmesh.io/headless: "true"}}
spec: {ports: [{name: pg, port: 19737}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: plain, namespace: demo}
spec: {ports: [{name: pg, port: 19738}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Endpoint
metadata: {name: db-static, namespace: demo}
spec: {service: db, address: 127.37.1.3, hostname: db-0, ports: [{name: pg, port: 5432}]}`)
	a := startAgent(t, agentOpts{name: "hl", site: "s1", region: "r1", vipOctet: 37, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{
			{Name: "db-up", Service: "db", Namespace: "demo", Address: "127.37.1.1", Ports: []api.EndpointPort{{Name: "pg", Port: upPort}}},
			// Nothing listens on 127.37.1.2:1: its TCP check fails.
			{Name: "db-down", Service: "db", Namespace: "demo", Address: "127.37.1.2", Ports: []api.EndpointPort{{Name: "pg", Port: 1}}},
		}})
	ask := func(name string, qtype uint16) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		c := &dns.Client{Timeout: 5 * time.Second}
		r, _, err := c.Exchange(m, a.DNSAddr())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return r
	}
	addrs := func(r *dns.Msg) []string {
		var out []string
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				out = append(out, a.A.String())
			}
		}
		sort.Strings(out)
		return out
	}
	want := []string{"127.37.1.1", "127.37.1.3"}
	var got []string
	waitFor(t, "the headless service's ready endpoints in DNS", func() bool {
		got = addrs(ask("db.demo.svc.cluster.local.", dns.TypeA))
		return slices.Equal(got, want)
	})
	if got := addrs(ask("db.demo.mesh.", dns.TypeA)); !slices.Equal(got, want) {
		t.Errorf("mesh name: %q, want %q", got, want)
	}
	if got := addrs(ask("db-0.db.demo.svc.cluster.local.", dns.TypeA)); !slices.Equal(got, []string{"127.37.1.3"}) {
		t.Errorf("hostname: %q, want [127.37.1.3]", got)
	}
	var srvs []string
	for _, rr := range ask("_pg._tcp.db.demo.svc.cluster.local.", dns.TypeSRV).Answer {
		if s, ok := rr.(*dns.SRV); ok {
			srvs = append(srvs, s.Target+":"+strconv.Itoa(int(s.Port)))
		}
	}
	sort.Strings(srvs)
	// The SRV port is the service's; the pods' own ports are the
	// endpoints' business (as in Kubernetes, where they are equal).
	if want := []string{"db-0.db.demo.svc.cluster.local.:19737", "db.demo.svc.cluster.local.:19737"}; !slices.Equal(srvs, want) {
		t.Errorf("SRV %q, want %q", srvs, want)
	}

	// No VIP listener for it; the plain service keeps its VIP.
	var plainVIP string
	for _, r := range a.Routes() {
		switch r.Service {
		case "demo/db":
			if r.VIP != "" || r.VIP6 != "" {
				t.Errorf("headless service has VIP %q %q", r.VIP, r.VIP6)
			}
		case "demo/plain":
			plainVIP = r.VIP
		}
	}
	if plainVIP == "" {
		t.Fatal("the plain service has no VIP")
	}
	for ap, lt := range a.view.Load().byVIP {
		if lt.svc == "demo/db" {
			t.Errorf("VIP %s listens for the headless service", ap)
		}
	}
	a.mu.Lock()
	for ap := range a.listeners {
		if ap.Port() == 19737 {
			t.Errorf("a VIP listener %s is bound for the headless service", ap)
		}
	}
	a.mu.Unlock()
	if got := addrs(ask("plain.demo.svc.cluster.local.", dns.TypeA)); !slices.Equal(got, []string{plainVIP}) {
		t.Errorf("plain service: %q, want its VIP %s", got, plainVIP)
	}
}
