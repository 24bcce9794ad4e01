package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// upstreamCounts reads a regional plane's /v1/regions: the snapshots and
// deltas it applied from upstream since it started, and whether it is
// linked.
func upstreamCounts(server string) (snapshots, deltas int, connected bool) {
	resp, err := http.Get(server + "/v1/regions")
	if err != nil {
		return -1, -1, false
	}
	defer resp.Body.Close()
	var rr struct {
		Upstream *struct {
			Connected bool `json:"connected"`
			Snapshots int  `json:"snapshots"`
			Deltas    int  `json:"deltas"`
		} `json:"upstream"`
	}
	if json.NewDecoder(resp.Body).Decode(&rr) != nil || rr.Upstream == nil {
		return -1, -1, false
	}
	return rr.Upstream.Snapshots, rr.Upstream.Deltas, rr.Upstream.Connected
}

// TestRegionRestartedWhileCutOffProcesses: the global process is killed,
// then the east process (kill -9); east, started again while the global
// plane is still down, serves the global plane's service it held; once
// the global plane is back, east resumes with a delta (no snapshot) that
// brings the service added meanwhile.
func TestRegionRestartedWhileCutOffProcesses(t *testing.T) {
	gState, eState := t.TempDir(), t.TempDir()
	gp, ga := startAddrs(t, "control", "-insecure", "-state-dir", gState, "-admin-addr", any0, "-sync-addr", any0, "-heartbeat-interval", "300ms")
	gServer, gSync := "http://"+ga["admin"], ga["sync"]
	waitHTTP(t, gServer+"/healthz")
	eastArgs := []string{"control", "-insecure", "-mode", "regional", "-region", "east", "-upstream", gSync,
		"-vip-indexes", "100-199", "-state-dir", eState, "-admin-addr", any0, "-sync-addr", any0}
	ep, ea := startAddrs(t, eastArgs...)
	east := "http://" + ea["admin"]
	waitHTTP(t, east+"/healthz")

	dir := t.TempDir()
	apply := func(server, name, doc string) {
		t.Helper()
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(doc), 0o644)
		if out, code := run(t, "apply", "-server", server, "-f", p); code != 0 {
			t.Fatalf("apply %s: %d %s", name, code, out)
		}
	}
	svc := func(name, port string) string {
		return "apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: " + name + ", namespace: shop}\nspec:\n  ports: [{port: " + port + "}]\n"
	}
	holds := func(server, key string) bool {
		owner, ok := servicesJSON(t, server)[key]
		return ok && owner == ""
	}
	apply(gServer, "api.yaml", svc("api", "82"))
	testenv.WaitFor(t, 20*time.Second, "east to hold the global service", func() bool { return holds(east, "shop/api") })
	testenv.WaitFor(t, 20*time.Second, "east to keep its upstream copy", func() bool {
		_, err := os.Stat(filepath.Join(eState, "upstream-copy.json"))
		return err == nil
	})

	gp.kill9(t)
	ep.kill9(t)
	_, ea = startAddrs(t, eastArgs...)
	east = "http://" + ea["admin"]
	waitHTTP(t, east+"/healthz")
	if !holds(east, "shop/api") {
		t.Fatalf("east, restarted while cut off, lost the global service: %v", servicesJSON(t, east))
	}

	_, ga = startAddrs(t, "control", "-insecure", "-state-dir", gState, "-admin-addr", any0, "-sync-addr", gSync, "-heartbeat-interval", "300ms")
	gServer = "http://" + ga["admin"]
	waitHTTP(t, gServer+"/healthz")
	apply(gServer, "later.yaml", svc("later", "83"))
	testenv.WaitFor(t, 20*time.Second, "east to get the service added after its restart", func() bool { return holds(east, "shop/later") })
	if snaps, deltas, _ := upstreamCounts(east); snaps != 0 || deltas == 0 {
		t.Fatalf("restarted east applied %d snapshots and %d deltas from upstream, want deltas only", snaps, deltas)
	}
}
