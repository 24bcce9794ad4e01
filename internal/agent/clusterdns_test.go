package agent

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestMeshAndClusterDomains: the mesh domain is configurable and the
// cluster names of the agent's services are answered beside it, with real
// queries to the agent's DNS; the names the local API lists (and describe
// prints) follow the configuration.
func TestMeshAndClusterDomains(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, svcDoc("web", 19019))
	a := startAgentWith(t, agentOpts{name: "dom", site: "s1", region: "r1", vipOctet: 19, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()},
		func(c *Config) { c.MeshDomain, c.ClusterDomain = "Fog.", "edge.example" })
	var rs RouteStatus
	waitFor(t, "service", func() bool {
		for _, r := range a.Routes() {
			if r.Service == "demo/web" {
				rs = r
				return true
			}
		}
		return false
	})
	if want := []string{"web.demo.fog", "web.demo.svc.edge.example"}; !slices.Equal(rs.Names, want) {
		t.Errorf("names %q, want %q", rs.Names, want)
	}
	ask := func(name string) *dns.Msg {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		c := &dns.Client{Timeout: 5 * time.Second}
		r, _, err := c.Exchange(m, a.DNSAddr())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return r
	}
	for _, name := range []string{"web.demo.fog.", "WEB.demo.svc.Edge.Example."} {
		r := ask(name)
		if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != rs.VIP || !r.Authoritative {
			t.Errorf("%s: %v, want A %s", name, r, rs.VIP)
		}
	}
	// The default names are not this agent's any more: forwarded, and with
	// no upstream that is SERVFAIL.
	for _, name := range []string{"web.demo.mesh.", "web.demo.svc.cluster.local."} {
		if r := ask(name); r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
			t.Errorf("%s: %v, want SERVFAIL (not in the configured domains)", name, r)
		}
	}
}

func TestDomainConfig(t *testing.T) {
	base := Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), Insecure: true}
	for _, tt := range []struct {
		set     func(*Config)
		wantErr string
	}{
		{func(c *Config) { c.MeshDomain = "cluster.local" }, "one contains the other"},
		{func(c *Config) { c.MeshDomain = "a..b" }, "zone"},
		{func(c *Config) { c.ClusterDomain = "mesh" }, "one contains the other"},
		{func(c *Config) { c.Capture.Mode = "on" }, "capture.mode"},
		{func(c *Config) { c.Capture.Addr = "[::]:15001" }, "capture.addr"},
		{func(c *Config) { c.Capture.Addr6 = "0.0.0.0:15001" }, "capture.addr6"},
	} {
		c := base
		tt.set(&c)
		if err := CheckConfig(c); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%+v: %v, want an error with %q", c, err, tt.wantErr)
		}
	}
	if err := CheckConfig(base); err != nil {
		t.Fatalf("defaults: %v", err)
	}
}
