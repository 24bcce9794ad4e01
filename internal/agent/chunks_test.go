package agent

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
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

// TestSyncChunkGapResubscribesInFull drives the agent's real sync loop
// with a scripted control plane: a snapshot in 2 chunks is applied once
// and acked once; a later update whose chunk 2 is missing is NACKed, none
// of it is applied, and the next stream subscribes for a full snapshot.
func TestSyncChunkGapResubscribesInFull(t *testing.T) {
	svc := func(name string, port, version int) wire.Resource {
		s := &api.Service{APIVersion: api.APIVersion, Kind: api.KindService, Meta: api.Meta{Name: name, Namespace: "demo", Version: uint64(version)},
			Spec: api.ServiceSpec{Ports: []api.ServicePort{{Name: "tcp", Port: port}}}}
		r, err := wire.NewResource(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	answers := make(chan *wire.Message, 4)
	sc := startScriptedControl(t,
		func(c net.Conn, r *wire.Reader) error {
			first := &wire.Message{Type: wire.TypeUpdate, Full: true, Version: 6, Nonce: "1", StoreID: "s1",
				Resources: []wire.Resource{svc("one", 19094, 5)}, Chunk: 1, Chunks: 2}
			if err := wire.Write(c, first); err != nil {
				return err
			}
			a, err := update(c, r, &wire.Message{Type: wire.TypeUpdate, Full: true, Version: 6, Nonce: "1", StoreID: "s1",
				Resources: []wire.Resource{svc("two", 19095, 6)}, Chunk: 2, Chunks: 2})
			if err != nil {
				return err
			}
			answers <- a
			gap := &wire.Message{Type: wire.TypeUpdate, Version: 7, Nonce: "2", StoreID: "s1",
				Resources: []wire.Resource{svc("three", 19096, 7)}, Chunk: 1, Chunks: 3}
			if err := wire.Write(c, gap); err != nil {
				return err
			}
			gap = &wire.Message{Type: wire.TypeUpdate, Version: 7, Nonce: "2", StoreID: "s1",
				Resources: []wire.Resource{svc("four", 19097, 7)}, Chunk: 3, Chunks: 3}
			if a, err = update(c, r, gap); err != nil {
				return err
			}
			answers <- a
			return nil
		},
		func(c net.Conn, r *wire.Reader) error {
			_, err := readType(r, "never") // hold the stream until the test ends
			return err
		},
	)
	a := startAgentWith(t, agentOpts{name: "n1", site: "s1", region: "r1", control: []string{sc.ln.Addr().String()}, stateDir: t.TempDir()},
		func(c *Config) { c.VIPRange = "127.94.0.0/16" })

	next := func() *wire.Message {
		t.Helper()
		select {
		case a := <-answers:
			return a
		case err := <-sc.errs:
			t.Fatalf("control script: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("no answer within 20s")
		}
		return nil
	}
	if sub := sc.nextSubscribe(t); sub.KnownVersion != 0 {
		t.Fatalf("first subscribe: knownVersion %d, want 0", sub.KnownVersion)
	}
	if ans := next(); ans.Type != wire.TypeAck || ans.Version != 6 || ans.Nonce != "1" {
		t.Fatalf("answer to the chunked snapshot: %+v, want one ack of nonce 1", ans)
	}
	if !hasService(a, "demo/one") || !hasService(a, "demo/two") {
		t.Fatal("the agent does not hold both chunks of the snapshot")
	}
	if ans := next(); ans.Type != wire.TypeNack || ans.Version != 7 || ans.Nonce != "2" || !strings.Contains(ans.Error, "chunk 3 of 3") {
		t.Fatalf("answer to chunk 3 after chunk 1: %+v, want a nack of nonce 2 naming the gap", ans)
	}
	if sub := sc.nextSubscribe(t); sub.StoreID != "s1" || sub.KnownVersion != 0 {
		t.Fatalf("subscribe after a chunk gap: store %q knownVersion %d, want s1 and 0 (full snapshot)", sub.StoreID, sub.KnownVersion)
	}
	if hasService(a, "demo/three") || hasService(a, "demo/four") || !hasService(a, "demo/two") {
		t.Fatal("part of the refused chunked update was applied, or the previous configuration was dropped")
	}
}
