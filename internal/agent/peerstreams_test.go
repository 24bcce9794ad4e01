package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/internal/transport"
	"github.com/fogmesh/fogmesh/internal/udpframe"
)

// TestUDPFlowsCappedPerPeer: maxStreamsPerPeer (agent config) bounds the
// mesh streams one peer may hold open at this agent, udp flows included:
// each holds a UDP socket and two datagram buffers here. The stream over
// it is refused at once with the reason, counted, and a flow that ends
// frees its place. VIP octet 87, port 19688.
func TestUDPFlowsCappedPerPeer(t *testing.T) {
	e := startUDPEcho(t, "e")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, udpSvcDoc("coap", 19688, ""))
	a := startAgentWith(t, agentOpts{name: "dst", site: "s1", region: "r1", vipOctet: 87, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{udpWorkload("coap", "e", e.port())}},
		func(c *Config) {
			dec := json.NewDecoder(strings.NewReader(`{"maxStreamsPerPeer": 3}`))
			dec.DisallowUnknownFields() // as the agent's config file is read
			if err := dec.Decode(c); err != nil {
				t.Fatalf("agent config: %v", err)
			}
		})
	waitFor(t, "the udp service", func() bool { return hasService(a, "demo/coap") })

	peer := transport.NewClient(transport.ClientConfig{SourceNode: "peer"})
	t.Cleanup(func() { peer.Close() })
	h := transport.Header{Namespace: "demo", Service: "coap", Endpoint: "coap-e", Port: "udp", UDP: true}
	var flows []net.Conn
	t.Cleanup(func() {
		for _, f := range flows {
			f.Close()
		}
	})
	for i := range 3 {
		f, err := peer.Dial(context.Background(), a.MeshAddr(), h)
		if err != nil {
			t.Fatalf("flow %d: %v", i, err)
		}
		flows = append(flows, f)
		askFlow(t, f, "ping")
	}
	f, err := peer.Dial(context.Background(), a.MeshAddr(), h)
	if err == nil {
		f.Close()
		t.Fatal("a 4th flow of one peer was accepted; want it refused (maxStreamsPerPeer 3)")
	}
	if !errors.Is(err, transport.ErrRefused) || !strings.Contains(err.Error(), "too many streams") {
		t.Fatalf("the 4th flow: %v; want refused, too many streams", err)
	}
	if n := metricVal(a, `fogmesh_agent_peer_stream_limit_rejections_total`); n != 1 {
		t.Fatalf("refusals counted %v, want 1", n)
	}
	flows[0].Close()
	waitFor(t, "the ended flow's place to be free", func() bool {
		f, err := peer.Dial(context.Background(), a.MeshAddr(), h)
		if err != nil {
			return false
		}
		flows = append(flows, f)
		return true
	})
	askFlow(t, flows[len(flows)-1], "again")
}

// askFlow sends msg on a udp mesh stream to an echo workload (startUDPEcho)
// and wants its answer.
func askFlow(t *testing.T, f net.Conn, msg string) {
	t.Helper()
	frame, _ := udpframe.Append(nil, []byte(msg))
	if _, err := f.Write(frame); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	n, err := udpframe.NewReader(f, len(buf)).Next(buf)
	if err != nil || !bytes.Contains(buf[:n], []byte(msg)) {
		t.Fatalf("answer to %q: %q, %v", msg, buf[:n], err)
	}
}
