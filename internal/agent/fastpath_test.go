package agent

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestFastPathSameNodeTCP: with fastPath required, a local client's
// connection to a tcp port whose endpoint is on this node is linked in the
// kernel: its exchanges keep working, most bytes pass the agent by, the
// idle timeout still ends an idle connection and still spares a busy one
// (the kernel's per-socket idle times see the bytes the agent does not),
// and the status and metrics say so.
func TestFastPathSameNodeTCP(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("fast path: needs root to load BPF programs (CI runs as root)")
	}
	e := startEcho(t, "e1", "127.0.0.1:0")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"fast","namespace":"demo"},
	"spec":{"ports":[{"name":"tcp","port":19150}],"timeouts":{"idle":"400ms"}}}`)
	a := startAgentWith(t, agentOpts{name: "fp", site: "s1", region: "r1", vipOctet: 39, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{wlFor("fast", e)}},
		func(c *Config) { c.FastPath = FastPathConfig{Mode: FastPathRequired} })
	if st := a.FastPathStatus(); !st.Active || st.Cgroup == "" {
		t.Fatalf("status %+v, want active with a cgroup", st)
	} else if works, err := a.fast.fp.ReadableCountWorks(); err != nil {
		t.Fatal(err)
	} else if strings.Contains(st.Note, "FIONREAD") == works {
		t.Fatalf("status note %q, but FIONREAD on a tracked socket works: %v", st.Note, works)
	}
	addr := "127.39.0.1:19150"
	waitFor(t, "listener", func() bool { _, err := roundTrip(addr); return err == nil })

	sent := idleAndBusy(t, addr, " "+strings.Repeat("x", 50_000))

	metric := func(name string) int {
		var buf strings.Builder
		a.cfg.Metrics.WritePrometheus(&buf)
		for _, l := range strings.Split(buf.String(), "\n") {
			if v, ok := strings.CutPrefix(l, name+" "); ok {
				var n int
				fmt.Sscan(v, &n)
				return n
			}
		}
		return 0
	}
	kernelConns := `fogmesh_agent_fastpath_connections_total{path="kernel"}`
	testenv.WaitFor(t, 5*time.Second, "the three connections counted on the kernel path", func() bool {
		return metric(kernelConns) == 3 // the probe, idle and busy
	})
	up := metric(`fogmesh_agent_fastpath_bytes_total{direction="client_to_endpoint"}`)
	down := metric(`fogmesh_agent_fastpath_bytes_total{direction="endpoint_to_client"}`)
	t.Logf("kernel carried %d bytes up and %d down of %d each way on the busy connection", up, down, sent)
	if up < sent/2 || down < sent/2 {
		t.Fatalf("kernel carried %d up, %d down; the busy connection alone sent %d each way", up, down, sent)
	}
	if n := metric(`fogmesh_agent_fastpath_connections_total{path="agent"}`); n != 0 {
		t.Fatalf("%d connections fell back to the agent's relay", n)
	}
	if n := metric(`fogmesh_agent_fastpath_gave_up_total`); n != 0 {
		t.Fatalf("%d kernel pairs of a request-response exchange gave up the kernel path", n)
	}
	if metric(`fogmesh_agent_idle_timeouts_total{service="demo/fast"}`) != 1 {
		t.Fatal("the idle close was not counted")
	}
}

// TestFastPathAutoPort: on a port whose protocol is detected, a connection
// found to be plain TCP takes the kernel path (the bytes read for detection
// are replayed and counted as forwarded).
func TestFastPathAutoPort(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("fast path: needs root to load BPF programs (CI runs as root)")
	}
	e := startEcho(t, "e1", "127.0.0.1:0")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"auto","namespace":"demo"},
	"spec":{"ports":[{"name":"tcp","port":19151,"protocol":"auto"}]}}`)
	a := startAgentWith(t, agentOpts{name: "fpa", site: "s1", region: "r1", vipOctet: 41, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{wlFor("auto", e)}},
		func(c *Config) { c.FastPath = FastPathConfig{Mode: FastPathRequired} })
	addr := "127.41.0.1:19151"
	waitFor(t, "listener", func() bool { _, err := roundTrip(addr); return err == nil })
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := range 20 {
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(c, "line %d\n", i)
		if line, err := br.ReadString('\n'); err != nil || line != fmt.Sprintf("e1: line %d\n", i) {
			t.Fatalf("exchange %d: %q %v", i, line, err)
		}
	}
	c.Close()
	var buf strings.Builder
	testenv.WaitFor(t, 5*time.Second, "the plain TCP connections on the kernel path", func() bool {
		buf.Reset()
		a.cfg.Metrics.WritePrometheus(&buf)
		return strings.Contains(buf.String(), `fogmesh_agent_fastpath_connections_total{path="kernel"} 2`) // the probe and c
	})
	if !strings.Contains(buf.String(), `fogmesh_agent_fastpath_connections_total{path="agent"} 0`) {
		t.Fatalf("a connection fell back to the agent's relay:\n%s", buf.String())
	}
	// The kernel took over after the replayed bytes: most lines went past the agent.
	var up int
	for _, l := range strings.Split(buf.String(), "\n") {
		if v, ok := strings.CutPrefix(l, `fogmesh_agent_fastpath_bytes_total{direction="client_to_endpoint"} `); ok {
			fmt.Sscan(v, &up)
		}
	}
	if up < 100 {
		t.Fatalf("the kernel carried %d bytes from the client; the 20 lines are about 160", up)
	}
}
