package agent

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// controlMetric reads one metric from a control plane's /metrics.
func controlMetric(t *testing.T, cp *control.Server, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + cp.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", l, err)
			}
			return f
		}
	}
	t.Fatalf("no metric %s in /metrics", name)
	return 0
}

// TestChunkedUpdatesThroughSyncLoops runs a control plane and two agents
// over loopback. 3,000 endpoints applied at once reach the connected agent
// as a delta, and an agent that connects afterwards as a snapshot, each in
// chunks: both end with every endpoint, and no frame the control plane
// wrote exceeded the chunk budget (wire.ChunkBytes of resources plus the
// update's few header fields).
func TestChunkedUpdatesThroughSyncLoops(t *testing.T) {
	const n = 3000
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, svcDoc("big", 19093))
	ctl := []string{cp.SyncAddr()}
	early := startAgentWith(t, agentOpts{name: "early", site: "s1", region: "r1", control: ctl, stateDir: t.TempDir()},
		func(c *Config) { c.VIPRange = "127.93.0.0/17" })
	waitFor(t, "the early agent to get the service", func() bool { return hasService(early, "demo/big") })

	var doc strings.Builder
	for i := range n {
		fmt.Fprintf(&doc, "---\napiVersion: fogmesh.io/v1alpha1\nkind: Endpoint\nmetadata: {name: big-%04d, namespace: demo}\n"+
			"spec: {service: big, address: 127.0.0.1, site: s9, region: r9, ports: [{name: tcp, port: %d}]}\n", i, 20000+i)
	}
	apply(t, cp, doc.String())
	all := func(a *Agent) func() bool {
		return func() bool { return len(endpointsOf(a, "demo/big")) == n }
	}
	testenv.WaitFor(t, 30*time.Second, "the early agent to hold every endpoint (a chunked delta)", all(early))

	late := startAgentWith(t, agentOpts{name: "late", site: "s1", region: "r1", control: ctl, stateDir: t.TempDir()},
		func(c *Config) { c.VIPRange = "127.93.128.0/17" })
	testenv.WaitFor(t, 30*time.Second, "the late agent to hold every endpoint (a chunked snapshot)", all(late))

	const header = 1024 // type, storeId, nonce, version, full, chunk, chunks
	max := controlMetric(t, cp, "fogmesh_control_sync_frame_bytes_max")
	t.Logf("largest sync frame: %g bytes", max)
	if max > wire.ChunkBytes+header {
		t.Fatalf("largest sync frame %g bytes, over the chunk budget %d+%d", max, wire.ChunkBytes, header)
	}
	// An update of 3,000 endpoints is over 500 items: at least 6 chunks
	// went to each agent.
	chunks := controlMetric(t, cp, "fogmesh_control_update_chunks_sent_total")
	t.Logf("update chunks sent: %g", chunks)
	if chunks < 12 {
		t.Fatalf("%g update chunks sent, want at least 12 (6 per agent)", chunks)
	}
}
