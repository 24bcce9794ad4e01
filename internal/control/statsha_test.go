package control

import (
	"context"
	"crypto/tls"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/store/etcdstore/etcdtest"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestReplicasShareStats: secure replicas on one etcd. An agent streams to
// replica a and reports counters in its heartbeats; replica b's GET
// /v1/stats shows its rate, read from a over a's admin API with b's
// serving certificate. That certificate reads nothing else there, and a
// node's certificate is refused.
func TestReplicasShareStats(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := startReplica(t, c, "a", false)
	b := startReplica(t, c, "b", false)
	svid := signNode(t, a.CA(), "s1", "n1", time.Hour)
	conn, err := tls.Dial("tcp", a.SyncAddr(), asIsClientConfig(a, svid, identity.ALPNSync))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ag := &agentConn{t: t, c: conn, r: wire.NewReader(conn)}
	ag.send(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapPolicy2},
		Node: &api.Node{Meta: api.Meta{Name: "n1"}, Spec: api.NodeSpec{Site: "s1", Region: "r", MeshAddress: "127.0.0.1:1"}}})
	if m := ag.recv(); m.Type != wire.TypeWelcome {
		t.Fatalf("welcome: %+v", m)
	}
	go func() { // drain what a sends (heartbeat answers)
		for {
			if _, err := ag.r.Read(); err != nil {
				return
			}
		}
	}()
	bounds := []float64{0.001, 0.01}
	t0 := time.Now()
	var st *StatsResponse
	beat := time.NewTicker(100 * time.Millisecond) // the simulated agent heartbeats
	defer beat.Stop()
	for i := range 100 {
		n := uint64(i * 5)
		ag.send(&wire.Message{Type: wire.TypeHeartbeat, Stats: &wire.StatsReport{At: t0.Add(time.Duration(i) * 100 * time.Millisecond).UnixMilli(),
			Full: i == 0, Bounds: bounds, Rows: []wire.StatRow{statRow("demo/web", "n2", n, 0, n, 0, 0)}}})
		if st, err = b.heartbeatStats(context.Background()); err != nil {
			t.Fatal(err)
		}
		if i >= 2 && len(st.Services) == 1 && slices.Contains(st.Nodes, "n1") {
			break
		}
		if i == 99 {
			t.Fatalf("replica b never showed the rate of a's agent: %+v", st)
		}
		<-beat.C // the agent's heartbeat period here
	}
	// 5 requests every 100 ms of the agent's clock.
	if rps := st.Services[0].RPS; rps < 49 || rps > 51 || len(st.ReplicaErrors) != 0 {
		t.Fatalf("replica b shows %v req/s (want 50), replica errors %v", rps, st.ReplicaErrors)
	}

	// b's certificate (the control plane's identity) reads only the
	// local tables; a node's is refused.
	call := func(cfg *tls.Config, path string) int {
		t.Helper()
		cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		resp, err := cl.Get("https://" + a.AdminAddr() + path)
		if err != nil {
			return 0 // refused in the handshake
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	peer := b.sec.src.ClientConfig(identity.AuthorizeID(identity.ControlID(b.sec.ca.TrustDomain())))
	if code := call(peer, "/v1/stats/local"); code != http.StatusOK {
		t.Errorf("peer replica GET /v1/stats/local: %d", code)
	}
	for _, path := range []string{"/v1/services", "/v1/stats", "/v1/audit"} {
		if code := call(peer, path); code != http.StatusForbidden {
			t.Errorf("peer replica GET %s: %d, want 403", path, code)
		}
	}
	node := asIsClientConfig(a, signNode(t, a.CA(), "s1", "n9", time.Hour), "")
	node.NextProtos = nil
	if code := call(node, "/v1/stats/local"); code == http.StatusOK {
		t.Error("a node's certificate read the replica's tables")
	}

	// The agent's replica gone: b says so, and still answers.
	a.Close()
	testenv.WaitFor(t, 10*time.Second, "b to stop asking the closed replica", func() bool {
		st, err := b.heartbeatStats(context.Background())
		return err == nil && len(st.Services) == 0
	})
}
