package control

import (
	"context"
	"crypto/tls"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// An idle agent stream costs the control plane one goroutine, its reader:
// the sender runs a goroutine only while it sends (sender.go; before, a
// sender and a trust sender waited on every stream, 20,000 idle stacks at
// 10,000 agents, issue 13), and the reader's stack stays small while it
// waits. Trust still reaches every stream, at once and after a change.
func TestStreamCostsOneGoroutine(t *testing.T) {
	s, err := New(Config{StateDir: t.TempDir(), AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: time.Minute}) // no read timeout during the test
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Serve(context.Background()); close(done) }()
	t.Cleanup(func() { s.Close(); <-done })

	const k = 16
	type conn struct {
		c *tls.Conn
		r *wire.Reader
	}
	// recvTrust reads frames until a trust message that satisfies ok.
	recvTrust := func(a conn, node string, ok func(*wire.Trust) bool) {
		t.Helper()
		a.c.SetReadDeadline(time.Now().Add(20 * time.Second))
		for range 50 {
			m, err := a.r.Read()
			if err != nil {
				t.Fatalf("%s: %v", node, err)
			}
			if m.Type == wire.TypeTrust && ok(m.Trust) {
				return
			}
		}
		t.Fatalf("%s: no trust message", node)
	}
	conns := make([]conn, k)
	for i := range conns {
		node := fmt.Sprintf("gc-%d", i)
		key, err := identity.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		svid := joinWithKey(t, s, node, "shop-1", key)
		src := identity.NewSource()
		src.SetBundles(s.CA().Bundle())
		src.SetSVID(svid)
		c, err := tls.Dial("tcp", s.SyncAddr(), src.ClientConfig(identity.AuthorizeID(identity.ControlID(s.CA().TrustDomain())), identity.ALPNSync))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		a := conn{c, wire.NewReader(c)}
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := wire.Write(c, &wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapPolicy2, wire.CapTrust},
			Node: &api.Node{Meta: api.Meta{Name: node}, Spec: api.NodeSpec{Site: "shop-1", Region: "r", MeshAddress: "127.144.0.1:7072"}}}); err != nil {
			t.Fatal(err)
		}
		if err := wire.Write(c, &wire.Message{Type: wire.TypeSubscribe}); err != nil {
			t.Fatal(err)
		}
		recvTrust(a, node, func(*wire.Trust) bool { return true })
		conns[i] = a
	}
	// A trust change reaches every stream.
	if err := s.reg.registerNode(&api.Node{APIVersion: api.APIVersion, Kind: api.KindNode, Meta: api.Meta{Name: "gone"},
		Spec: api.NodeSpec{Site: "shop-1", Region: "r", MeshAddress: "127.144.0.2:7072"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.revokeNode("gone"); err != nil {
		t.Fatal(err)
	}
	for i, a := range conns {
		recvTrust(a, fmt.Sprintf("gc-%d", i), func(tr *wire.Trust) bool {
			return slices.ContainsFunc(tr.Revoked, func(id string) bool { return len(id) > 5 && id[len(id)-5:] == "/gone" })
		})
	}
	streams := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.streams)
	}
	with, stackWith := runtime.NumGoroutine(), stackInuse()
	for _, a := range conns {
		a.c.Close()
	}
	testenv.WaitFor(t, 10*time.Second, "the streams to end", func() bool { return streams() == 0 })
	without, stackWithout := runtime.NumGoroutine(), stackInuse()
	t.Logf("per stream: %.2f goroutines, %.1f KiB of stack", float64(with-without)/k, float64(stackWith-stackWithout)/k/1024)
	if per := float64(with-without) / k; per > 1.25 {
		t.Fatalf("%d goroutines with %d streams, %d without: %.2f per stream, want 1 (the reader)", with, k, without, per)
	}
	// The waiting frames are small, so the stack grown by the handshake
	// shrinks back: 8-10 KiB a stream here (24 KiB before the admission's
	// frame left the reader's; free goroutines keep their stacks, so a
	// sender that ran adds to it). Not checked under the race detector,
	// whose frames differ.
	if per := float64(stackWith-stackWithout) / k; !raceBuild && per > 12<<10 {
		t.Fatalf("%.1f KiB of stack per stream, want at most 12", per/1024)
	}
}

// stackInuse is the goroutine stacks' memory after two collections (each
// halves the stacks that use under a quarter of theirs).
func stackInuse() int64 {
	var ms runtime.MemStats
	for range 4 {
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	return int64(ms.StackInuse)
}
