package control

import (
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/wire"
)

func startServer(t *testing.T, dir string) *Server {
	t.Helper()
	s := serveControl(t, Config{StateDir: dir, AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond, NodeExpiry: 600 * time.Millisecond, Insecure: true})
	return s
}

func applyDoc(t *testing.T, s *Server, doc string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+s.AdminAddr()+"/v1/apply", "application/yaml", strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

const helloSvc = `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: hello, namespace: demo}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
`

// agentConn is a raw sync client for tests.
type agentConn struct {
	t *testing.T
	c net.Conn
	r *wire.Reader
}

func dialAgent(t *testing.T, s *Server, node string) *agentConn {
	t.Helper()
	return dialAgentAs(t, s, &api.Node{Meta: api.Meta{Name: node}, Spec: api.NodeSpec{Site: "shop-1", Region: "east", MeshAddress: "127.0.0.1:7072"}})
}

// dialAgentAs is dialAgent registering n as it is.
func dialAgentAs(t *testing.T, s *Server, n *api.Node) *agentConn {
	t.Helper()
	c, err := net.Dial("tcp", s.SyncAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a := &agentConn{t: t, c: c, r: wire.NewReader(c)}
	a.send(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Capabilities: []string{wire.CapPolicy2}, Node: n})
	if m := a.recv(); m.Type != wire.TypeWelcome {
		t.Fatalf("want welcome, got %+v", m)
	}
	return a
}

func (a *agentConn) send(m *wire.Message) {
	a.t.Helper()
	if err := wire.Write(a.c, m); err != nil {
		a.t.Fatal(err)
	}
}

func (a *agentConn) recv() *wire.Message {
	a.t.Helper()
	a.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	m, err := a.r.Read()
	if err != nil {
		a.t.Fatal(err)
	}
	return m
}

func names(m *wire.Message) []string {
	var out []string
	for _, r := range m.Resources {
		out = append(out, r.Type+" "+r.Name)
	}
	return out
}

func TestSyncSnapshotThenDeltaThenResume(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	if code, body := applyDoc(t, s, helloSvc); code != 200 {
		t.Fatal(code, body)
	}
	a := dialAgent(t, s, "n1")
	a.send(&wire.Message{Type: wire.TypeSubscribe})
	snap := a.recv()
	if snap.Type != wire.TypeUpdate || !snap.Full {
		t.Fatalf("want full snapshot, got %+v", snap)
	}
	if got := strings.Join(names(snap), ","); got != "Node n1,Service demo/hello" {
		t.Fatalf("snapshot has %s", got)
	}
	a.send(&wire.Message{Type: wire.TypeAck, Nonce: snap.Nonce, Version: snap.Version})

	// An endpoint applied now arrives as a delta with only that resource.
	code, body := applyDoc(t, s, `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"db","namespace":"demo"},
		"spec":{"service":"hello","address":"::1","ports":[{"name":"http","port":9000}]}}`)
	if code != 200 {
		t.Fatal(code, body)
	}
	d := a.recv()
	if d.Full || strings.Join(names(d), ",") != "Endpoint demo/db" || d.Version <= snap.Version {
		t.Fatalf("delta: %+v", d)
	}
	known := d.Version
	a.c.Close()

	// While the agent is away: one change and one delete.
	applyDoc(t, s, strings.Replace(helloSvc, "8080", "8081", 1))
	req, _ := http.NewRequest("DELETE", "http://"+s.AdminAddr()+"/v1/endpoints/demo/db", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatal("delete", err, resp)
	}

	// Resume from the known version: only what changed, and the removal.
	b := dialAgent(t, s, "n1")
	b.send(&wire.Message{Type: wire.TypeSubscribe, StoreID: s.StoreID(), KnownVersion: known})
	m := b.recv()
	if m.Full {
		t.Fatalf("resume sent a full snapshot")
	}
	if got := strings.Join(names(m), ","); got != "Service demo/hello" {
		t.Fatalf("resume resources: %s", got)
	}
	if len(m.Removed) != 1 || m.Removed[0].Name != "demo/db" {
		t.Fatalf("resume removed: %+v", m.Removed)
	}

	// A subscriber holding another store's versions gets a full snapshot.
	c := dialAgent(t, s, "n2")
	c.send(&wire.Message{Type: wire.TypeSubscribe, StoreID: "other", KnownVersion: known})
	if m := c.recv(); !m.Full {
		t.Fatalf("foreign store id: want full snapshot")
	}
}

// TestNodeMissingHeartbeatsBecomesNotReady: a silent node is marked
// unreachable at NodeTimeout and not ready NodeExpiry later (expiry.go).
func TestNodeMissingHeartbeatsBecomesNotReady(t *testing.T) {
	s := startServer(t, t.TempDir())
	a := dialAgent(t, s, "n1")
	a.send(&wire.Message{Type: wire.TypeSubscribe, Types: []string{wire.ResourceNode}})
	a.recv() // snapshot: n1 ready
	// No heartbeats: after NodeTimeout (600ms) the node turns not ready and
	// the change reaches subscribers; the server also drops the silent stream.
	b := dialAgent(t, s, "n2")
	b.send(&wire.Message{Type: wire.TypeSubscribe, Types: []string{wire.ResourceNode}})
	b.recv()
	stop := make(chan struct{})
	defer close(stop)
	go func() { // n2 keeps heartbeating
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				wire.Write(b.c, &wire.Message{Type: wire.TypeHeartbeat, Load: 3})
			}
		}
	}()
	// First it is marked unreachable, still ready (its endpoints stay
	// routable); after NodeExpiry more (600ms), with no peer reporting
	// traffic from it, not ready.
	deadline := time.Now().Add(5 * time.Second)
	var unreachableAt time.Time
	for time.Now().Before(deadline) {
		m := b.recv()
		for _, r := range m.Resources {
			var n api.Node
			json.Unmarshal(r.Body, &n)
			switch {
			case n.Meta.Name != "n1":
			case n.Status.Ready && n.Status.Unreachable && unreachableAt.IsZero():
				unreachableAt = time.Now()
				if n.Status.UnreachableSince.IsZero() {
					t.Error("unreachable without the time of its last sign of life")
				}
			case !n.Status.Ready && unreachableAt.IsZero():
				t.Fatal("n1 marked not ready without being marked unreachable first")
			case !n.Status.Ready:
				if d := time.Since(unreachableAt); d < 300*time.Millisecond { // 600ms, less two ticks and delivery
					t.Fatalf("n1 marked not ready %v after unreachable, before NodeExpiry (600ms)", d)
				}
				return
			}
		}
	}
	t.Fatal("n1 never marked not ready")
}

func TestBadSyncInputIsDropped(t *testing.T) {
	s := startServer(t, t.TempDir())
	cases := map[string][]byte{
		"garbage":      []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"huge length":  {0xff, 0xff, 0xff, 0xff, '{'},
		"truncated":    {0, 0, 0, 100, '{', '"'},
		"bad json":     append([]byte{0, 0, 0, 5}, "{{{{{"...),
		"unknown type": append([]byte{0, 0, 0, 14}, `{"type":"zzz"}`...),
		"no node":      append([]byte{0, 0, 0, 16}, `{"type":"hello"}`...),
	}
	rnd := make([]byte, 300)
	for i := range rnd {
		rnd[i] = byte(rand.IntN(256))
	}
	cases["random"] = rnd
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := net.Dial("tcp", s.SyncAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(b)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			// The server closes the connection (maybe after an error frame).
			if _, err := io.ReadAll(c); err != nil {
				t.Fatalf("server did not close: %v", err)
			}
		})
	}
	// A slow sender that never completes its hello is dropped too.
	c, _ := net.Dial("tcp", s.SyncAddr())
	defer c.Close()
	c.Write([]byte{0, 0})
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("slow sender not dropped: %v", err)
	}
	// And the server still serves.
	a := dialAgent(t, s, "n1")
	a.send(&wire.Message{Type: wire.TypeSubscribe})
	if m := a.recv(); !m.Full {
		t.Fatal("no snapshot after bad input")
	}
}

func TestApplyRejectsBadDocumentsAndStoresNothing(t *testing.T) {
	s := startServer(t, t.TempDir())
	cases := []struct{ name, doc, want string }{
		{"bad port", strings.Replace(helloSvc, "8080", "70000", 1), "spec.ports[0].port"},
		{"unknown field", strings.Replace(helloSvc, "ports:", "portz:", 1), "portz"},
		{"wrong type", strings.Replace(helloSvc, "8080", `"http"`, 1), "spec.ports[0].port"}, // the full path (issue 16)
		{"bad protocol", strings.Replace(helloSvc, "protocol: http", "protocol: smtp", 1), "spec.ports[0].protocol"},
		{"bad name", strings.Replace(helloSvc, "name: hello", "name: Hello_World", 1), "metadata.name"},
		{"no kind", "apiVersion: fogmesh.io/v1alpha1\nmetadata: {name: x}\n", "kind"},
		{"bad version", strings.Replace(helloSvc, "v1alpha1", "v9", 1), "apiVersion"},
		// The second document is bad: the first must not be stored either.
		{"second doc bad", helloSvc + "---\n" + strings.Replace(helloSvc, "hello", "other", 1) + "  balancer: fastest\n", "spec.balancer"},
		{"bad endpoint address", `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"e"},"spec":{"service":"s","address":"1.2.3","ports":[{"port":1}]}}`, "spec.address"},
		{"yaml syntax", "kind: [", "yaml"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := applyDoc(t, s, c.doc)
			if code != 400 || !strings.Contains(body, c.want) {
				t.Fatalf("got %d %s, want 400 naming %q", code, body, c.want)
			}
		})
	}
	resp, err := http.Get("http://" + s.AdminAddr() + "/v1/services")
	if err != nil {
		t.Fatal(err)
	}
	var l ListResponse
	json.NewDecoder(resp.Body).Decode(&l)
	resp.Body.Close()
	if len(l.Items) != 0 || l.Version != 0 {
		t.Fatalf("bad documents stored something: %+v", l)
	}
}

func TestRestartKeepsObjectsAndVIPs(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	applyDoc(t, s, helloSvc+"---\n"+strings.Replace(helloSvc, "hello", "orders", 1))
	s.Close()
	s2 := startServer(t, dir)
	resp, err := http.Get("http://" + s2.AdminAddr() + "/v1/services")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var l ListResponse
	json.NewDecoder(resp.Body).Decode(&l)
	vips := map[string]string{}
	for _, raw := range l.Items {
		var svc api.Service
		json.Unmarshal(raw, &svc)
		vips[svc.Meta.Name] = svc.Status.VIP
	}
	if vips["hello"] != "127.77.0.1" || vips["orders"] != "127.77.0.2" {
		t.Fatalf("after restart: %v", vips)
	}
	// Re-applying keeps the VIP.
	applyDoc(t, s2, strings.Replace(helloSvc, "8080", "9090", 1))
	resp2, err := http.Get("http://" + s2.AdminAddr() + "/v1/services?namespace=demo")
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()
	var l2 ListResponse
	json.NewDecoder(resp2.Body).Decode(&l2)
	if !strings.Contains(string(l2.Items[0]), `"vip": "127.77.0.1"`) && !strings.Contains(string(l2.Items[0]), `"vip":"127.77.0.1"`) {
		t.Fatalf("vip changed on re-apply: %s", l2.Items[0])
	}
}

func TestVIPFor(t *testing.T) {
	for _, c := range []struct {
		prefix string
		i      uint32
		want   string
	}{
		{"127.77.0.0/16", 1, "127.77.0.1"},
		{"127.77.0.0/16", 256, "127.77.1.0"},
		{"127.77.0.0/16", 65534, "127.77.255.254"},
		{"fd00::/64", 300, "fd00::12c"},
	} {
		if got := api.VIPFor(mustPrefix(c.prefix), c.i).String(); got != c.want {
			t.Errorf("VIPFor(%s,%d)=%s want %s", c.prefix, c.i, got, c.want)
		}
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// TestAgentEndpointsWithinServiceIdentity: an agent may not report an
// endpoint whose service account or site its service does not allow; nothing
// of the refused batch is stored.
func TestAgentEndpointsWithinServiceIdentity(t *testing.T) {
	s := startServer(t, t.TempDir())
	if code, body := applyDoc(t, s, `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"pay","namespace":"prod"},
	"spec":{"ports":[{"name":"http","port":80}],"identity":{"serviceAccounts":["pay-sa"],"sites":["s1"]}}}`); code != 200 {
		t.Fatalf("apply: %d %s", code, body)
	}
	for _, n := range []struct{ name, site string }{{"n1", "s1"}, {"n2", "s2"}} {
		if err := s.reg.registerNode(&api.Node{Meta: api.Meta{Name: n.name}, Spec: api.NodeSpec{Site: n.site, Region: "r", MeshAddress: "127.0.0.1:1"}}); err != nil {
			t.Fatal(err)
		}
	}
	ep := func(name, sa string) api.Endpoint {
		return api.Endpoint{Meta: api.Meta{Name: name, Namespace: "prod"}, Spec: api.EndpointSpec{Service: "pay", Address: "10.0.0.1",
			Ports: []api.EndpointPort{{Name: "http", Port: 8080}}, ServiceAccount: sa}}
	}
	for _, c := range []struct {
		node string
		eps  []api.Endpoint
		want string
	}{
		{"n1", []api.Endpoint{ep("pay-1", "pay-sa"), ep("pay-2", "root")}, `service account "root" is not allowed`},
		{"n1", []api.Endpoint{ep("pay-3", "")}, `service account "pay" is not allowed`},
		{"n2", []api.Endpoint{ep("pay-4", "pay-sa")}, `site "s2" is not allowed`},
	} {
		if err := s.reg.syncLocalEndpoints(c.node, c.eps); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %v: err %v, want %q", c.node, c.eps[len(c.eps)-1].Meta.Name, err, c.want)
		}
	}
	if objs, _, _ := s.reg.list(api.KindEndpoint); len(objs) != 0 {
		t.Fatalf("refused batches stored %d endpoints", len(objs))
	}
	if err := s.reg.syncLocalEndpoints("n1", []api.Endpoint{ep("pay-1", "pay-sa")}); err != nil {
		t.Fatalf("allowed endpoint refused: %v", err)
	}
}

// TestOldAgentRefused: an agent that does not name wire.CapPolicy2 would
// drop the fields that narrow routes and policies (mesh-wide DENY, no
// default route) and so enforce wider rules; its stream is refused with an
// error that says to upgrade it, and counted.
func TestOldAgentRefused(t *testing.T) {
	s := startServer(t, t.TempDir())
	c, err := net.Dial("tcp", s.SyncAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a := &agentConn{t: t, c: c, r: wire.NewReader(c)}
	a.send(&wire.Message{Type: wire.TypeHello, Protocol: wire.ProtocolVersion, Node: &api.Node{
		Meta: api.Meta{Name: "old"}, Spec: api.NodeSpec{Site: "shop-1", Region: "east", MeshAddress: "127.0.0.1:7072"}}})
	if m := a.recv(); m.Type != wire.TypeError || !strings.Contains(m.Error, "upgrade") {
		t.Fatalf("an agent without %s got %+v; want an error naming the upgrade", wire.CapPolicy2, m)
	}
	// The refusal is written before its effect is counted: wait for it.
	testenv.WaitFor(t, 5*time.Second, "the old agent to be counted", func() bool { return s.mOldAgents.Get() >= 1 })
	if s.mOldAgents.Get() != 1 {
		t.Fatalf("old agents counted %d, want 1", s.mOldAgents.Get())
	}
}

// TestAgentEndpointsSiteUnknownNode: an agent served while the store could
// not record its node (openStream goes on when the store is unavailable)
// has no stored site when its endpoints arrive; a service that bounds
// its sites must refuse them rather than skip the check.
func TestAgentEndpointsSiteUnknownNode(t *testing.T) {
	s := startServer(t, t.TempDir())
	if code, body := applyDoc(t, s, `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"pay","namespace":"prod"},
	"spec":{"ports":[{"name":"http","port":80}],"identity":{"sites":["s1"]}}}`); code != 200 {
		t.Fatalf("apply: %d %s", code, body)
	}
	ep := api.Endpoint{Meta: api.Meta{Name: "pay-x", Namespace: "prod"}, Spec: api.EndpointSpec{Service: "pay", Address: "10.0.0.1",
		Ports: []api.EndpointPort{{Name: "http", Port: 8080}}}}
	if err := s.reg.syncLocalEndpoints("unrecorded", []api.Endpoint{ep}); err == nil || !strings.Contains(err.Error(), "spec.identity.sites") {
		t.Fatalf("endpoint of a node with no stored site: err %v, want a refusal naming spec.identity.sites", err)
	}
	if objs, _, _ := s.reg.list(api.KindEndpoint); len(objs) != 0 {
		t.Fatalf("stored %d endpoints of a node whose site is unknown", len(objs))
	}
}

// serveControl starts a control plane of cfg, serving until the test ends.
func serveControl(t testing.TB, cfg Config) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Serve(context.Background()); close(done) }()
	t.Cleanup(func() { s.Close(); <-done })
	return s
}
