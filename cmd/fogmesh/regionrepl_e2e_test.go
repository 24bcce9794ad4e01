package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// servicesJSON lists a control plane's services as `fogmesh get -o json`
// prints them: key "ns/name" -> owner ("" for the global plane).
func servicesJSON(t *testing.T, server string) map[string]string {
	t.Helper()
	out, code := run(t, "get", "services", "-server", server, "-o", "json")
	if code != 0 {
		return nil
	}
	var items []struct {
		Meta struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
			Owner     string `json:"owner"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal([]byte(out), &items); err != nil {
		t.Fatalf("get services: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, it := range items {
		m[it.Meta.Namespace+"/"+it.Meta.Name] = it.Meta.Owner
	}
	return m
}

// TestRegionalControlPlanes runs `fogmesh control -mode regional` as real
// processes under a global one: an exported service applied in east shows
// in west, an unexported one does not; the global process is killed, east
// and west take changes to their own services meanwhile (and refuse one to
// the global plane's), and after a restart on the same address all three
// converge. East is given a dead upstream first: it fails over.
func TestRegionalControlPlanes(t *testing.T) {
	gState := t.TempDir()
	gp, ga := startAddrs(t, "control", "-insecure", "-state-dir", gState, "-admin-addr", any0, "-sync-addr", any0, "-heartbeat-interval", "300ms")
	gServer, gSync := "http://"+ga["admin"], ga["sync"]
	waitHTTP(t, gServer+"/healthz")
	_, ea := startAddrs(t, "control", "-insecure", "-mode", "regional", "-region", "east", "-upstream", closedAddr(t)+","+gSync,
		"-vip-indexes", "100-199", "-state-dir", t.TempDir(), "-admin-addr", any0, "-sync-addr", any0)
	_, wa := startAddrs(t, "control", "-insecure", "-mode", "regional", "-region", "west", "-upstream", gSync,
		"-vip-indexes", "200-299", "-state-dir", t.TempDir(), "-admin-addr", any0, "-sync-addr", any0)
	east, west := "http://"+ea["admin"], "http://"+wa["admin"]
	waitHTTP(t, east+"/healthz")
	waitHTTP(t, west+"/healthz")

	dir := t.TempDir()
	applyFile := func(server, name, doc string) (string, int) {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(doc), 0o644)
		return run(t, "apply", "-server", server, "-f", p)
	}
	svc := func(name, port, export string) string {
		return "apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: " + name + ", namespace: shop}\nspec:\n  ports: [{port: " + port + "}]\n" + export
	}
	for _, a := range []struct{ server, name, doc string }{
		{east, "web.yaml", svc("web", "80", "  export: [west]\n")},
		{east, "private.yaml", svc("private", "81", "")},
		{gServer, "api.yaml", svc("api", "82", "")},
	} {
		if out, code := applyFile(a.server, a.name, a.doc); code != 0 {
			t.Fatalf("apply %s: %d %s", a.name, code, out)
		}
	}
	converge := func(what, server string, want map[string]string, absent ...string) {
		t.Helper()
		testenv.WaitFor(t, 20*time.Second, what, func() bool {
			got := servicesJSON(t, server)
			for k, owner := range want {
				if o, ok := got[k]; !ok || o != owner {
					return false
				}
			}
			for _, k := range absent {
				if _, ok := got[k]; ok {
					return false
				}
			}
			return true
		})
	}
	converge("west to get east's exported service and the global one", west,
		map[string]string{"shop/web": "east", "shop/api": ""}, "shop/private")
	converge("the global plane to hold east's services", gServer,
		map[string]string{"shop/web": "east", "shop/private": "east"})

	// The global plane dies; the regions keep taking their own changes.
	gp.kill9(t)
	if out, code := applyFile(east, "web2.yaml", svc("web", "8080", "  export: [\"*\"]\n")+"---\n"+svc("late", "83", "  export: [west]\n")); code != 0 {
		t.Fatalf("apply in east while cut off: %d %s", code, out)
	}
	if out, code := applyFile(west, "shop.yaml", svc("cart", "84", "")); code != 0 {
		t.Fatalf("apply in west while cut off: %d %s", code, out)
	}
	if out, code := applyFile(east, "api2.yaml", svc("api", "99", "")); code == 0 || !strings.Contains(out, "global control plane") {
		t.Fatalf("east changed the global plane's service: %d %s", code, out)
	}

	// The regions dial gSync: it stays; the admin port is a new one.
	_, ga = restartAddrs(t, gSync, "control", "-insecure", "-state-dir", gState, "-admin-addr", any0, "-sync-addr", gSync, "-heartbeat-interval", "300ms")
	gServer = "http://" + ga["admin"]
	converge("the global plane to get both regions' changes", gServer,
		map[string]string{"shop/web": "east", "shop/late": "east", "shop/cart": "west", "shop/api": ""})
	converge("west to get east's change made while apart", west,
		map[string]string{"shop/late": "east", "shop/cart": "west"}, "shop/private")
	out, _ := run(t, "get", "services", "-server", west, "-o", "json")
	if !strings.Contains(out, "8080") {
		t.Fatalf("west has east's old web: %s", out)
	}

	// East's own audit chain, with the records of the changes made while
	// apart, is at the global plane and verifies there.
	lastSeq := func(server string) uint64 {
		resp, err := http.Get(server + "/v1/audit/control-east")
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		var ar struct {
			Chains []struct {
				LastSeq uint64 `json:"lastSeq"`
			} `json:"chains"`
		}
		if json.NewDecoder(resp.Body).Decode(&ar) != nil || len(ar.Chains) != 1 {
			return 0
		}
		return ar.Chains[0].LastSeq
	}
	testenv.WaitFor(t, 20*time.Second, "east's audit chain at the global plane", func() bool {
		seq := lastSeq(east)
		return seq >= 3 && lastSeq(gServer) == seq
	})
	if out, code := run(t, "audit", "verify", "--node", "control-east", "-server", gServer); code != 0 {
		t.Fatalf("audit verify of east's chain at the global plane: %d %s", code, out)
	}

	// Bad flags: a clear error.
	if out, code := run(t, "control", "-insecure", "-mode", "regional", "-region", "east", "-state-dir", t.TempDir()); code == 0 || !strings.Contains(out, "upstream") {
		t.Fatalf("regional without upstream: %d %s", code, out)
	}
	if out, code := run(t, "control", "-insecure", "-vip-indexes", "9-2", "-state-dir", t.TempDir()); code != 2 || !strings.Contains(out, "vip-indexes") {
		t.Fatalf("bad vip-indexes: %d %s", code, out)
	}
}
