package agent

import (
	"encoding/json"
	"net"
	"net/http"
	"testing"

	"github.com/miekg/dns"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/control"
)

// Agents connected straight to the global control plane use VIP octets
// 204 (east's agent) and 205 (the global plane's agent).

// TestGlobalAgentSeesOnlyExports: an agent connected straight to the
// global control plane, in region cloud, gets of region east only what
// east exports to cloud: an unexported service of east is NXDOMAIN there
// and reachable once its export names cloud (through both agents), and
// NXDOMAIN again when the export is taken back.
func TestGlobalAgentSeesOnlyExports(t *testing.T) { testGlobalAgentExports(t, nil) }

// TestGlobalScopedAgentSeesOnlyExports: the same for a scoped agent, which
// asks for east's services on demand (a DNS query widens its scope).
func TestGlobalScopedAgentSeesOnlyExports(t *testing.T) {
	testGlobalAgentExports(t, []string{"demo/shown"})
}

func testGlobalAgentExports(t *testing.T, scope []string) {
	g := startControl(t, t.TempDir(), "")
	east := startControlWith(t, t.TempDir(), "", func(c *control.Config) {
		c.Mode, c.Region, c.Upstreams, c.VIPIndexMin, c.VIPIndexMax = control.ModeRegional, "east", []string{g.SyncAddr()}, 100, 199
	})
	apply(t, east, exportedSvcDoc("shown", 19202, `"cloud"`))
	apply(t, east, exportedSvcDoc("hidden", 19201, ""))
	echo := startEcho(t, "a", "127.0.0.1:0")
	startAgent(t, agentOpts{name: "a1", site: "east-1", region: "east", vipOctet: 204, control: []string{east.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{wlFor("shown", echo), wlFor("hidden", echo)}})
	cfg := agentConfig(agentOpts{name: "c1", site: "cloud-1", region: "cloud", vipOctet: 205, control: []string{g.SyncAddr()},
		stateDir: t.TempDir()})
	cfg.Scope = scope
	c := startAgentWith(t, agentOpts{}, func(c *Config) { *c = cfg })

	healthy := func(svc string) func() bool {
		return func() bool {
			eps := endpointsOf(c, svc)
			return len(eps) == 1 && eps[0].Healthy
		}
	}
	waitFor(t, "the global plane's agent to get east's service exported to cloud", healthy("demo/shown"))
	vip := lookupA(t, c, "shown.demo.mesh.")
	if vip == "" {
		t.Fatal("shown.demo.mesh has no address at the global plane's agent")
	}
	mustRoundTrip(t, net.JoinHostPort(vip, "19202"), "a: ping")
	// The global plane holds hidden (east sent it up), its agent must not.
	waitFor(t, "the global plane to hold east's hidden endpoint", func() bool {
		resp, err := http.Get("http://" + g.AdminAddr() + "/v1/endpoints")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var list struct {
			Items []api.Endpoint `json:"items"`
		}
		json.NewDecoder(resp.Body).Decode(&list)
		for _, e := range list.Items {
			if e.Spec.Service == "hidden" && e.Meta.Owner == "east" {
				return true
			}
		}
		return false
	})
	if r := dnsQuery(t, c, "hidden.demo.mesh.", dns.TypeA); r.Rcode != dns.RcodeNameError || hasService(c, "demo/hidden") {
		t.Fatalf("hidden.demo.mesh, not exported, at the global plane's agent: rcode %s, %v", dns.RcodeToString[r.Rcode], r.Answer)
	}

	apply(t, east, exportedSvcDoc("hidden", 19201, `"west","cloud"`))
	waitFor(t, "the global plane's agent to get hidden once exported to cloud", healthy("demo/hidden"))
	hv := lookupA(t, c, "hidden.demo.mesh.")
	if hv == "" {
		t.Fatal("hidden.demo.mesh, exported, has no address")
	}
	mustRoundTrip(t, net.JoinHostPort(hv, "19201"), "a: ping")

	apply(t, east, exportedSvcDoc("hidden", 19201, `"west"`))
	waitFor(t, "the global plane's agent to drop hidden once the export is taken back", func() bool { return !hasService(c, "demo/hidden") })
	if r := dnsQuery(t, c, "hidden.demo.mesh.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("hidden.demo.mesh, export taken back: rcode %s", dns.RcodeToString[r.Rcode])
	}
	if !hasService(c, "demo/shown") {
		t.Fatal("the global plane's agent lost shown")
	}
}
