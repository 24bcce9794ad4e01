package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// binEnv hands the fogmesh binary built outside to the run in the
// network namespace.
const binEnv = "KUBELOAD_TEST_BIN"

// TestKubeloadSmall runs the benchmark at CI size against a real
// kube-apiserver: 20 Services, 60 endpoints and their Pods, a secure
// control plane and 2 real agents; 10 EndpointSlice changes must each be
// routed by both agents, and the capturing agent must answer the
// ClusterIP as well as the virtual IP. Correctness only: the timings are
// the benchmark's business.
func TestKubeloadSmall(t *testing.T) {
	if os.Getenv(netnsEnv) != "1" {
		testenv.NeedRoot(t)
		unshare := testenv.NeedTool(t, "unshare")
		testenv.NeedTool(t, "ip")
		bin := filepath.Join(t.TempDir(), "fogmesh")
		if out, err := exec.Command("go", "build", "-o", bin, "github.com/fogmesh/fogmesh/cmd/fogmesh").CombinedOutput(); err != nil {
			t.Fatalf("build fogmesh: %v\n%s", err, out)
		}
		cmd := exec.Command(unshare, "--net", "--", "sh", "-c", netnsScript, os.Args[0], "-test.run", "^TestKubeloadSmall$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), netnsEnv+"=1", binEnv+"="+bin)
		out, err := cmd.CombinedOutput()
		t.Logf("in its own network namespace:\n%s", out)
		if err != nil {
			t.Fatalf("the test failed in its network namespace: %v", err)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := run(ctx, config{Bin: os.Getenv(binEnv), Dir: t.TempDir(), Services: 20, Endpoints: 60, Agents: 2, Pods: true,
		Changes: 10, Rate: 20, ProbeEvery: 5 * time.Millisecond, ChangeTimeout: 30 * time.Second, CaptureRounds: 1, CaptureReqs: 20})
	printResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if res.Missed != 0 {
		t.Errorf("%d (change, agent) pairs never routed by the change", res.Missed)
	}
	if res.AllP50 <= 0 || len(res.AgentP50) != 2 {
		t.Errorf("no change latencies: %+v", res)
	}
	if res.CaptureServices != 21 || len(res.Capture) != 4 { // and default/kubernetes:443
		t.Errorf("capture: %d ClusterIP:ports captured, %d paths measured; want 21 and 4", res.CaptureServices, len(res.Capture))
	}
	if res.ControlRSS <= 0 || res.ControlRSSLoaded <= 0 {
		t.Errorf("no control-plane RSS: %+v", res)
	}
}
