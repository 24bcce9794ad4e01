package agent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/netseam/memnet"
)

// TestMeshAndControlOverMemnet runs a control plane and three agents whose
// sync and mesh links all go over an in-memory network (Config.Network),
// while applications and workloads keep real loopback sockets. A client on
// node a reaches b's workload through a's VIP and the memnet mesh link; when
// b's node goes away (its memnet address reset), the client's open
// connection ends at once instead of hanging, and new connections fail over
// to c in the next tier. Cutting the control link leaves the agents serving.
func TestMeshAndControlOverMemnet(t *testing.T) {
	mem := &memnet.Network{}
	// memnet addresses live only in mem: nothing listens on them for real.
	const syncAddr = "127.230.255.1:7071"
	cp := startControlWith(t, t.TempDir(), syncAddr, func(c *control.Config) { c.Network = mem })
	apply(t, cp, svcDoc("echo", 19230))
	echoB := startEcho(t, "b", "127.0.0.1:0")
	echoC := startEcho(t, "c", "127.0.0.1:0")
	onMem := func(vipRange string) func(*Config) {
		return func(c *Config) { c.Network, c.VIPRange = mem, vipRange }
	}
	ctl := []string{syncAddr}
	b := startAgentWith(t, agentOpts{name: "b", site: "s1", region: "r1", control: ctl, stateDir: t.TempDir(),
		meshAddr: "127.230.255.2:0", workloads: []Workload{wlFor("echo", echoB)}}, onMem("127.232.0.0/17"))
	startAgentWith(t, agentOpts{name: "c", site: "s2", region: "r1", control: ctl, stateDir: t.TempDir(),
		meshAddr: "127.230.255.3:0", workloads: []Workload{wlFor("echo", echoC)}}, onMem("127.232.128.0/17"))
	a := startAgentWith(t, agentOpts{name: "a", site: "s1", region: "r1", control: ctl, stateDir: t.TempDir(),
		meshAddr: "127.230.255.4:0"}, onMem("127.230.0.0/16"))

	// The mesh port is bound on memnet, and its chosen port advertised.
	bMesh := b.MeshAddr()
	if _, err := net.DialTimeout("tcp", bMesh, time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("a real dial to b's mesh address %s: %v, want refused (it lives on memnet)", bMesh, err)
	}
	waitFor(t, "a to learn b's and c's endpoints", func() bool {
		tiers := map[string]string{}
		for _, e := range endpointsOf(a, "demo/echo") {
			if e.Healthy {
				tiers[e.Node] = e.Tier
			}
		}
		return tiers["b"] == "site" && tiers["c"] == "region"
	})
	if n := mem.Conns(syncAddr); n != 3 {
		t.Fatalf("memnet carries %d sync streams, want one per agent", n)
	}

	vip := "127.230.0.1:19230"
	mustRoundTrip(t, vip, "b: ping") // a's VIP, the memnet mesh link to b, b's workload
	held, err := net.Dial("tcp", vip)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if got, err := talk(held); err != nil || got != "b: ping" {
		t.Fatalf("held connection: %q, %v", got, err)
	}
	// Insecure mode: each relayed connection is a direct stream, a memnet
	// connection of its own; the round trip's has closed (or is closing).
	waitFor(t, "memnet to carry the held connection's stream to b's mesh port, and only it", func() bool {
		return mem.Conns(bMesh) == 1
	})

	// b's node goes away: its mesh link is reset and its port refuses.
	mem.Reset(bMesh)
	held.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := held.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client's connection through the reset link: %v, want it closed at once", err)
	}
	for range 5 {
		mustRoundTrip(t, vip, "c: ping") // failover to the next tier, no failed connection
	}

	// The control link is cut: the agents notice and keep serving.
	mem.Reset(syncAddr)
	waitFor(t, "a to notice the control plane is gone", func() bool { return !a.connected.Load() })
	mustRoundTrip(t, vip, "c: ping")
}

// applySecure applies doc through a secure control plane's admin API (TLS,
// the bootstrap admin token in its state directory dir).
func applySecure(t *testing.T, cp *control.Server, dir, doc string) {
	t.Helper()
	tok, err := os.ReadFile(filepath.Join(dir, control.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(cp.BundlePath())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		t.Fatalf("no certificate in %s", cp.BundlePath())
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest("POST", "https://"+cp.AdminAddr()+"/v1/apply", strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	req.Header.Set("Content-Type", "application/yaml")
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("apply: %s %s", resp.Status, b)
	}
}

// TestSecureMeshOverMemnet: in secure mode every link that memnet carries
// is TLS: two agents join with a token (the join dial), hold mTLS sync
// streams and reach each other over the mTLS mesh port, all in memory.
func TestSecureMeshOverMemnet(t *testing.T) {
	mem := &memnet.Network{}
	const syncAddr = "127.230.254.1:7071"
	cpDir := t.TempDir()
	cp := startControlWith(t, cpDir, syncAddr, func(c *control.Config) { c.Network, c.Insecure = mem, false })
	applySecure(t, cp, cpDir, svcDoc("echo", 19231))
	secure := func(vipRange string) func(*Config) {
		tok, err := cp.CreateToken(identity.TokenJoin, "s1", "", time.Minute) // one per node
		if err != nil {
			t.Fatal(err)
		}
		return func(c *Config) {
			c.Network, c.VIPRange, c.Insecure, c.JoinToken, c.WorkloadAPISocket = mem, vipRange, false, tok, "off"
		}
	}
	echoB := startEcho(t, "b", "127.0.0.1:0")
	ctl := []string{syncAddr}
	startAgentWith(t, agentOpts{name: "b", site: "s1", region: "r1", control: ctl, stateDir: t.TempDir(),
		meshAddr: "127.230.254.2:0", workloads: []Workload{wlFor("echo", echoB)}}, secure("127.232.0.0/17"))
	a := startAgentWith(t, agentOpts{name: "a", site: "s1", region: "r1", control: ctl, stateDir: t.TempDir(),
		meshAddr: "127.230.254.3:0"}, secure("127.230.0.0/16"))
	if a.ident == nil {
		t.Fatal("agent a runs without a node identity")
	}
	waitFor(t, "a to learn b's endpoint", func() bool {
		eps := endpointsOf(a, "demo/echo")
		return len(eps) == 1 && eps[0].Healthy && eps[0].Tier == "site"
	})
	mustRoundTrip(t, "127.230.0.1:19231", "b: ping")
}
