package agent

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

func exportedSvcDoc(name string, port int, export string) string {
	return fmt.Sprintf(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":%q,"namespace":"demo"},
	"spec":{"ports":[{"name":"tcp","port":%d}],"export":[%s]}}`, name, port, export)
}

// lookupA asks the agent's DNS for name's A record: its VIP, or "" when
// the agent does not know the name.
func lookupA(t *testing.T, a *Agent, name string) string {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	r, err := dns.Exchange(m, a.DNSAddr())
	if err != nil {
		t.Fatalf("dns %s: %v", name, err)
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return ""
}

// TestRegionsExportThroughAgents: a global control plane and two regional
// ones (east, west), an agent under each regional one. A service of east
// exported to west is reachable by name from the west agent, through both
// agents; an unexported one is not visible there. The global plane goes
// down: both regions keep serving and take changes to their own services;
// it comes back on its address and both sides converge: west's agent
// follows east's change and the global plane holds west's new service.
func TestRegionsExportThroughAgents(t *testing.T) {
	gDir := t.TempDir()
	g := startControl(t, gDir, "")
	gAddr := g.SyncAddr()
	east := startControlWith(t, t.TempDir(), "", func(c *control.Config) {
		c.Mode, c.Region, c.Upstreams, c.VIPIndexMin, c.VIPIndexMax = control.ModeRegional, "east", []string{gAddr}, 100, 199
	})
	west := startControlWith(t, t.TempDir(), "", func(c *control.Config) {
		c.Mode, c.Region, c.Upstreams, c.VIPIndexMin, c.VIPIndexMax = control.ModeRegional, "west", []string{gAddr}, 200, 299
	})
	apply(t, east, exportedSvcDoc("echo", 19107, `"west"`))
	apply(t, east, exportedSvcDoc("secret", 19108, ""))
	echo := startEcho(t, "a", "127.0.0.1:0")
	startAgent(t, agentOpts{name: "a1", site: "east-1", region: "east", vipOctet: 111, control: []string{east.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{wlFor("echo", echo), wlFor("secret", echo)}})
	b := startAgent(t, agentOpts{name: "b1", site: "west-1", region: "west", vipOctet: 112, control: []string{west.SyncAddr()},
		stateDir: t.TempDir()})

	waitFor(t, "west's agent to learn east's exported endpoint", func() bool {
		eps := endpointsOf(b, "demo/echo")
		return len(eps) == 1 && eps[0].Healthy
	})
	vip := lookupA(t, b, "echo.demo.mesh.")
	if vip != "127.112.0.100" {
		t.Fatalf("echo.demo.mesh is %q at west's agent, want east's VIP index 100 in its range", vip)
	}
	mustRoundTrip(t, net.JoinHostPort(vip, "19107"), "a: ping")
	if got := lookupA(t, b, "secret.demo.mesh."); got != "" || hasService(b, "demo/secret") {
		t.Fatalf("west's agent sees east's unexported service (%q)", got)
	}

	// The global plane goes down; both regions serve and take changes.
	g.Close()
	testenv.WaitFor(t, 10*time.Second, "both regions to see the link down", func() bool {
		return !east.Upstream().Connected && !west.Upstream().Connected
	})
	mustRoundTrip(t, net.JoinHostPort(vip, "19107"), "a: ping")
	apply(t, east, exportedSvcDoc("echo", 19117, `"west"`))
	apply(t, west, exportedSvcDoc("shop", 19118, ""))
	waitFor(t, "west's agent to get west's new service while apart", func() bool { return hasService(b, "demo/shop") })

	// It comes back (same state, same address): both sides converge.
	g2 := startControl(t, gDir, gAddr)
	waitFor(t, "west's agent to follow east's change made while apart", func() bool {
		got, err := roundTrip(net.JoinHostPort(vip, strconv.Itoa(19117)))
		return err == nil && got == "a: ping"
	})
	waitFor(t, "the global plane to hold west's new service, owned by west", func() bool {
		resp, err := http.Get("http://" + g2.AdminAddr() + "/v1/services")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var list struct {
			Items []api.Service `json:"items"`
		}
		json.NewDecoder(resp.Body).Decode(&list)
		for _, s := range list.Items {
			if s.Meta.Key() == "demo/shop" && s.Meta.Owner == "west" {
				return true
			}
		}
		return false
	})
	if n := len(g2.RegionLinks()); n != 2 {
		t.Fatalf("%d regions linked to the restarted global plane, want 2", n)
	}
}
