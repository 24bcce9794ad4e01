package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

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

// TestPeerCapRefusalEjectsNothing: a stream the endpoint's agent refuses
// for its per-peer cap (this agent holds as many streams there as it
// allows one peer) fails over like any refusal, but is no failure of the
// endpoint: it is not ejected, and the next connection once a place is
// free reaches it at once. VIP octets 30 (source) and 31 (destination),
// port 19697.
func TestPeerCapRefusalEjectsNothing(t *testing.T) {
	e := startEcho(t, "b", "127.0.0.1:0")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, svcDoc("capped", 19697))
	ctl := []string{cp.SyncAddr()}
	startAgentWith(t, agentOpts{name: "b", site: "s1", region: "r1", vipOctet: 31, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{wlFor("capped", e)}}, func(c *Config) { c.MaxStreamsPerPeer = 1 })
	a := startAgentWith(t, agentOpts{name: "a", site: "s1", region: "r1", vipOctet: 30, control: ctl, stateDir: t.TempDir(),
		ejectFor: time.Minute}, nil)
	waitFor(t, "a to learn b's endpoint", func() bool {
		for _, ep := range endpointsOf(a, "demo/capped") {
			if ep.Node == "b" && ep.Healthy {
				return true
			}
		}
		return false
	})
	vip := "127.30.0.1:19697"
	held, err := net.DialTimeout("tcp", vip, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if got, err := talk(held); err != nil || got != "b: ping" {
		t.Fatalf("the first connection: %q, %v", got, err)
	}
	if got, err := roundTrip(vip); err == nil {
		t.Fatalf("a second connection past b's cap of 1 stream per peer was answered: %q", got)
	}
	held.Close()
	for _, ep := range endpointsOf(a, "demo/capped") {
		if ep.Ejected {
			t.Fatalf("b's endpoint ejected after b refused a stream for its per-peer cap: %+v", ep)
		}
	}
	waitFor(t, "a connection once the held one's place is free", func() bool {
		got, err := roundTrip(vip)
		return err == nil && got == "b: ping"
	})
}
