package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
)

// TestRegisterSaveFailureKeepsPrevious: re-registering or deregistering a
// workload whose save fails (a full disk, a broken state dir) answers the
// error and leaves the registration as it was: the workload stays
// registered with its previous ports, in memory as in workloads.json.
func TestRegisterSaveFailureKeepsPrevious(t *testing.T) {
	dir := t.TempDir()
	a := startAgent(t, agentOpts{name: "wl", site: "s1", region: "r1", vipOctet: 187, stateDir: dir})
	w := func(port int) Workload {
		return Workload{Name: "web-1", Service: "web", Namespace: "demo", Address: "127.0.0.1",
			Ports: []api.EndpointPort{{Name: "http", Port: port}}, Check: Check{Type: "none"}}
	}
	if err := a.Register(w(18001)); err != nil {
		t.Fatal(err)
	}
	// The state file cannot be replaced: a non-empty directory stands
	// where it was.
	wl := filepath.Join(dir, "workloads.json")
	if err := os.Remove(wl); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(wl, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := a.Register(w(18002)); err == nil {
		t.Fatal("a registration that could not be saved was accepted")
	}
	a.mu.Lock()
	ws := a.workloads["web-1"]
	a.mu.Unlock()
	if ws == nil {
		t.Fatal("a failed re-registration dropped the workload registered before")
	}
	if p := ws.w.Ports[0].Port; p != 18001 {
		t.Fatalf("registered port %d after a failed re-registration, want the previous 18001", p)
	}
	if err := a.Deregister("web-1"); err == nil {
		t.Fatal("a deregistration that could not be saved was accepted")
	}
	a.mu.Lock()
	ws = a.workloads["web-1"]
	a.mu.Unlock()
	if ws == nil || ws.w.Ports[0].Port != 18001 {
		t.Fatal("a failed deregistration dropped the workload, which a restart would bring back")
	}
}
