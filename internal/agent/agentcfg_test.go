package agent

import (
	"fmt"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/workloadapi"
)

// TestRetryBudgetForgetsGoneServices: the per-service retry budget drops the
// account of a service that left the view, so its map stays as large as the
// mesh (a service that comes back starts from the reserve again).
func TestRetryBudgetForgetsGoneServices(t *testing.T) {
	a, err := New(Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
		DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", VIPRange: "127.247.0.0/16", Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	for i := 0; a.retries.Withdraw("demo/gone"); i++ {
		if i > 1000 {
			t.Fatal("the budget never ran out")
		}
	}
	a.mu.Lock()
	a.rebuildLocked() // demo/gone is in no view
	a.mu.Unlock()
	if !a.retries.Withdraw("demo/gone") {
		t.Fatal("the spent account of a service gone from the view was kept")
	}
}

// TestDuplicateWorkloadNamesRefused: two config workloads of one name (here
// in two namespaces) are refused with an error naming both, instead of the
// second silently replacing the first.
func TestDuplicateWorkloadNamesRefused(t *testing.T) {
	wl := func(ns string) Workload {
		return Workload{Name: "reviews-v1", Service: "reviews", Namespace: ns,
			Ports: []api.EndpointPort{{Name: "http", Port: 9080}}, Check: Check{Type: "none"}}
	}
	_, err := New(Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
		DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", VIPRange: "127.247.0.0/16", Insecure: true,
		Workloads: []Workload{wl("bookinfo1"), wl("bookinfo2")}})
	if err == nil || !strings.Contains(err.Error(), "workloads[1]") || !strings.Contains(err.Error(), "workloads[0]") {
		t.Fatalf("got %v, want an error naming workloads[1] and workloads[0]", err)
	}
}

// TestMeshStreamWindowBounds: a meshStreamWindow below yamux's minimum
// (256 KiB) or above 16 MiB is refused with an error naming the field; 0
// (the default) and a value in range are taken.
func TestMeshStreamWindowBounds(t *testing.T) {
	cfg := func(w int) Config {
		return Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
			DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", VIPRange: "127.180.0.0/16", Insecure: true,
			MeshStreamWindow: w}
	}
	for _, w := range []int{-1, 1000, 16<<20 + 1} {
		c := cfg(w)
		if err := c.validate(); err == nil || !strings.Contains(err.Error(), "meshStreamWindow") {
			t.Errorf("meshStreamWindow %d: got %v, want an error naming meshStreamWindow", w, err)
		}
	}
	for _, w := range []int{0, 256 << 10, 4 << 20} {
		c := cfg(w)
		if err := c.validate(); err != nil {
			t.Errorf("meshStreamWindow %d: %v", w, err)
		}
	}
}

// TestAttestOverflowIDsRefused: a workload whose attest selectors name the
// overflow uid or gid (65534, what the kernel reports for a caller whose
// ids the agent's user namespace does not map) is refused with an error
// naming the field, in the config file and through Register; ids that are
// no uid or gid at all are refused as well.
func TestAttestOverflowIDsRefused(t *testing.T) {
	ov := workloadapi.Overflow()
	id := func(v int) *int { return &v }
	wl := func(at *Attest) Workload {
		return Workload{Name: "reviews-v1", Service: "reviews", Ports: []api.EndpointPort{{Name: "http", Port: 9080}},
			Check: Check{Type: "none"}, Attest: at}
	}
	cfg := func(w Workload) Config {
		return Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
			DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", VIPRange: "127.247.0.0/16", Insecure: true, Workloads: []Workload{w}}
	}
	for _, c := range []struct {
		name    string
		at      *Attest
		wantErr string // "" accepted
	}{
		{"overflow uid", &Attest{UID: id(int(ov.UID))}, fmt.Sprintf("workloads[0]: attest.uid: %d is the overflow uid", ov.UID)},
		{"overflow gid", &Attest{UID: id(1000), GID: id(int(ov.GID))}, fmt.Sprintf("workloads[0]: attest.gid: %d is the overflow gid", ov.GID)},
		{"negative uid", &Attest{UID: id(-1)}, "workloads[0]: attest.uid: -1 is not a uid"},
		{"uid past 32 bits", &Attest{UID: id(1<<32 + 1000)}, "workloads[0]: attest.uid: 4294968296 is not a uid"},
		{"gid 2^32-1", &Attest{GID: id(1<<32 - 1)}, "workloads[0]: attest.gid: 4294967295 is not a gid"},
		{"plain uid and gid", &Attest{UID: id(1000), GID: id(1000)}, ""},
		{"root", &Attest{UID: id(0)}, ""},
		{"path alone", &Attest{Path: "/usr/bin/reviews"}, ""},
	} {
		err := CheckConfig(cfg(wl(c.at)))
		if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("%s: config: got %v, want %q", c.name, err, c.wantErr)
		}
	}
	a, err := New(cfg(wl(nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	w := wl(&Attest{UID: id(int(ov.UID))})
	w.Name = "registered"
	if err := a.Register(w); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("attest.uid: %d is the overflow uid", ov.UID)) {
		t.Errorf("Register: got %v, want the overflow uid refused", err)
	}
}
