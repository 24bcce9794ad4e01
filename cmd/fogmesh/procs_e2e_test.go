package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestAgentPacesGOMAXPROCS: an agent started with FOGMESH_PROCS=auto
// runs on one P while quiet (the README's claim), counts the change on
// /metrics and still stops cleanly on SIGTERM; one started without it
// keeps the runtime's GOMAXPROCS and counts nothing.
func TestAgentPacesGOMAXPROCS(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 || os.Getenv("GOMAXPROCS") != "" {
		// The agents' default GOMAXPROCS is this process's when the
		// environment does not set it (cores, or the cgroup's limit).
		t.Skip("one P here, or GOMAXPROCS set for the tests: nothing to compare")
	}
	agentAt := func(octet string, env ...string) (*proc, string) {
		t.Helper()
		path := filepath.Join(t.TempDir(), "addrs.json")
		cmd := exec.Command(fogmeshBin, "agent", "-insecure", "-name", "paced", "-site", "s", "-region", "r",
			"-state-dir", t.TempDir(), "-admin-addr", any0, "-dns-addr", any0, "-mesh-addr", any0,
			"-vip-range", "127."+octet+".0.0/16", "-addr-file", path)
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "GOMAXPROCS=") && !strings.HasPrefix(kv, "FOGMESH_PROCS=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, env...)
		p := startExec(t, cmd)
		url := "http://" + p.waitAddrs(t, path)["admin"]
		waitHTTP(t, url+"/healthz")
		return p, url + "/metrics"
	}

	paced, pacedMetrics := agentAt("47", "FOGMESH_PROCS=auto")
	_, plainMetrics := agentAt("48")
	if n := metric(t, nil, pacedMetrics, "fogmesh_agent_procs_changes_total"); n < 1 {
		t.Errorf("FOGMESH_PROCS=auto: fogmesh_agent_procs_changes_total %v, want at least 1 (set to one P at start)", n)
	}
	// Start-up may take more than 0.7 of a core for a tick (every P back);
	// two quiet seconds later it is one P again.
	eventually(t, 15*time.Second, "FOGMESH_PROCS=auto: go_gomaxprocs never 1 with the agent quiet", func() bool {
		return metric(t, nil, pacedMetrics, "go_gomaxprocs") == 1
	})
	if n := metric(t, nil, plainMetrics, "fogmesh_agent_procs_changes_total"); n != 0 {
		t.Errorf("default agent: fogmesh_agent_procs_changes_total %v, want none", n)
	}
	if n := metric(t, nil, plainMetrics, "go_gomaxprocs"); n != float64(runtime.GOMAXPROCS(0)) {
		t.Errorf("default agent: go_gomaxprocs %v, want the runtime's %d", n, runtime.GOMAXPROCS(0))
	}

	paced.stopsOnSIGTERM(t, "paced agent", 10*time.Second)
}
