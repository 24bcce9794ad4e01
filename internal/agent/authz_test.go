package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// Client workloads on the client node: their source addresses identify them.
const (
	frontendIP = "127.0.1.10"
	intruderIP = "127.0.1.11"
	frontendID = "spiffe://fogmesh.local/ns/demo/sa/frontend"
)

func identityWorkload(name, ip string) Workload {
	return Workload{Name: name, Service: name, Namespace: "demo", Address: ip,
		Ports: []api.EndpointPort{{Name: "x", Port: 1}}, Check: Check{Type: "none"}}
}

// recordingLogger is a DecisionLogger test double.
type recordingLogger struct {
	mu   sync.Mutex
	recs []AuthzRecord
}

func (l *recordingLogger) LogDecision(_ context.Context, d AuthzRecord) {
	l.mu.Lock()
	l.recs = append(l.recs, d)
	l.mu.Unlock()
}

func (l *recordingLogger) denied(svc string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if !r.Decision.Allow && r.Request.Namespace+"/"+r.Request.Service == svc {
			n++
		}
	}
	return n
}

func dialFrom(ip string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 3 * time.Second}
	return d.DialContext
}

func httpGetFrom(t *testing.T, ip, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dialFrom(ip)}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s from %s: %v", url, ip, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func echoFrom(ip, addr string) (string, error) {
	c, err := dialFrom(ip)(context.Background(), "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return talk(c)
}

// TestAuthorizationEndToEnd: a client node and a server node with a control
// plane; the client node's workloads "frontend" and "intruder" connect from
// their own addresses. Policies let the frontend through and stop the
// intruder on HTTP (403), gRPC (PERMISSION_DENIED), TCP (closed) and MQTT
// (a denied topic cuts the connection), at the server node's agent for
// remote endpoints and at the client's for local ones; a namespace default
// deny closes everything; decisions are metered and logged.
func TestAuthorizationEndToEnd(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	webPort, _ := startHTTP(t, "web")
	localWebPort, _ := startHTTP(t, "lweb")
	db := startEcho(t, "db", "127.0.0.1:0")
	vault := startEcho(t, "vault", "127.0.0.1:0")
	grpcLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(grpcLn)
	t.Cleanup(gs.Stop)
	mqttOK := true
	for _, bin := range []string{"mosquitto", "mosquitto_pub"} {
		if _, err := exec.LookPath(bin); err != nil {
			mqttOK = false
		}
	}
	if !mqttOK && testenv.InCI() {
		t.Fatal("mosquitto not installed; CI must have it (make test installs it)")
	}

	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: demo}
spec: {ports: [{name: http, port: 19601, protocol: http}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: rpc, namespace: demo}
spec: {ports: [{name: grpc, port: 19602, protocol: grpc}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: db, namespace: demo}
spec: {ports: [{name: tcp, port: 19603}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: broker, namespace: demo}
spec: {ports: [{name: mqtt, port: 19604, protocol: mqtt}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: lweb, namespace: demo}
spec: {ports: [{name: http, port: 19605, protocol: http}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: ldb, namespace: demo}
spec: {ports: [{name: tcp, port: 19606}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: vault, namespace: locked}
spec: {ports: [{name: tcp, port: 19607}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-frontend, namespace: demo}
spec:
  service: web
  rules:
  - from: [{principals: ["`+frontendID+`"]}]
    to: [{methods: [GET], paths: ["/api/*"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: rpc-frontend, namespace: demo}
spec:
  selector: {matchLabels: {app: rpc}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/frontend]}}]
    to: [{operation: {paths: ["/grpc.health.v1.Health/*"]}}]
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: db-frontend, namespace: demo}
spec: {service: db, rules: [{from: [{principals: ["*/sa/frontend"]}]}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: broker-topics, namespace: demo}
spec: {service: broker, rules: [{to: [{publish: ["sensors/+/temp"], subscribe: ["alerts/#"]}]}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: local-frontend, namespace: demo}
spec: {service: lweb, rules: [{from: [{principals: ["`+frontendID+`"]}]}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ldb-no-intruder, namespace: demo}
spec: {service: ldb, action: DENY, rules: [{from: [{principals: ["*/sa/intruder"]}]}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: default-deny, namespace: locked}
spec: {}
`)
	serverWorkloads := []Workload{
		webWorkload("web", "web-1", webPort),
		{Name: "rpc-1", Service: "rpc", Namespace: "demo", Ports: []api.EndpointPort{{Name: "grpc", Port: grpcLn.Addr().(*net.TCPAddr).Port}}},
		{Name: "db-1", Service: "db", Namespace: "demo", Ports: []api.EndpointPort{{Name: "tcp", Port: db.port()}}},
		{Name: "vault-1", Service: "vault", Namespace: "locked", Ports: []api.EndpointPort{{Name: "tcp", Port: vault.port()}}},
	}
	for i := range serverWorkloads {
		if serverWorkloads[i].Ports[0].Name == "web" {
			serverWorkloads[i].Ports[0].Name = "http"
		}
	}
	if mqttOK {
		serverWorkloads = append(serverWorkloads, Workload{Name: "broker-1", Service: "broker", Namespace: "demo",
			Ports: []api.EndpointPort{{Name: "mqtt", Port: startMosquitto(t)}}})
	}
	srvLog := &recordingLogger{}
	srv, err := New(Config{Node: NodeConfig{Name: "srv", Site: "s1", Region: "r1"}, Control: []string{cp.SyncAddr()},
		MeshAddr: "127.0.0.1:0", DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", VIPRange: "127.213.0.0/16",
		StateDir: t.TempDir(), Workloads: serverWorkloads, Upstreams: []string{}, HealthInterval: Duration(200 * time.Millisecond),
		DecisionLogger: srvLog, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	cli := startAgent(t, agentOpts{name: "cli", site: "s1", region: "r1", vipOctet: 232, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{identityWorkload("frontend", frontendIP), identityWorkload("intruder", intruderIP),
			{Name: "lweb-1", Service: "lweb", Namespace: "demo", Ports: []api.EndpointPort{{Name: "http", Port: localWebPort}}},
			{Name: "ldb-1", Service: "ldb", Namespace: "demo", Ports: []api.EndpointPort{{Name: "tcp", Port: db.port()}}}}})
	vip := func(ns, name string, port int) string {
		r, ok := cli.LookupService(ns, name)
		if !ok {
			return ""
		}
		return fmt.Sprintf("%s:%d", r.V4, port)
	}
	for _, s := range []string{"demo/web", "demo/rpc", "demo/db", "demo/lweb", "demo/ldb", "locked/vault"} {
		waitFor(t, s+" endpoint on the client node", func() bool {
			eps := endpointsOf(cli, s)
			return len(eps) == 1 && eps[0].Healthy
		})
	}
	waitFor(t, "policies on both nodes", func() bool {
		return cli.view.Load().authz.Len() == 7 && srv.view.Load().authz.Len() == 7
	})
	web, rpc, dbAddr := vip("demo", "web", 19601), vip("demo", "rpc", 19602), vip("demo", "db", 19603)
	waitListening(t, dbAddr)

	t.Run("http", func(t *testing.T) {
		if code, body := httpGetFrom(t, frontendIP, "http://"+web+"/api/orders"); code != 200 || body != "web HTTP/1.1" {
			t.Fatalf("frontend: %d %q", code, body)
		}
		if code, body := httpGetFrom(t, frontendIP, "http://"+web+"/admin"); code != 403 || !strings.Contains(body, "RBAC: access denied") {
			t.Fatalf("frontend, path not allowed: %d %q", code, body)
		}
		if code, _ := httpGetFrom(t, intruderIP, "http://"+web+"/api/orders"); code != 403 {
			t.Fatalf("intruder: %d", code)
		}
		// A forged identity header is replaced by the source agent.
		req, _ := http.NewRequest("GET", "http://"+web+"/api/orders", nil)
		req.Header.Set(SourceIDHeader, frontendID)
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dialFrom(intruderIP)}}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		c.CloseIdleConnections()
		if resp.StatusCode != 403 {
			t.Fatalf("intruder with a forged header: %d", resp.StatusCode)
		}
		if _, err := exec.LookPath("curl"); err == nil {
			out, err := exec.Command("curl", "-sS", "--max-time", "5", "--interface", intruderIP, "-o", "/dev/null", "-w", "%{http_code}",
				"http://"+web+"/api/orders").CombinedOutput()
			if err != nil || string(out) != "403" {
				t.Fatalf("curl as intruder: %v %s", err, out)
			}
			out, err = exec.Command("curl", "-sS", "--max-time", "5", "--interface", frontendIP, "http://"+web+"/api/orders").CombinedOutput()
			if err != nil || string(out) != "web HTTP/1.1" {
				t.Fatalf("curl as frontend: %v %s", err, out)
			}
		}
	})

	t.Run("grpc", func(t *testing.T) {
		call := func(ip string) error {
			conn, err := grpc.NewClient(rpc, grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dialFrom(ip)(ctx, "tcp", addr) }))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer ccancel()
			_, err = healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
			return err
		}
		if err := call(frontendIP); err != nil {
			t.Fatalf("frontend: %v", err)
		}
		err := call(intruderIP)
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("intruder: %v, want PermissionDenied", err)
		}
		// The destination agent served the source agent's HTTP/2 with its
		// own server (h2srv), not net/http's.
		if srv.authzHTTP.h2Streams.Load() == 0 {
			t.Fatal("no mesh stream served by the destination's HTTP/2 server")
		}
	})

	t.Run("tcp", func(t *testing.T) {
		if got, err := echoFrom(frontendIP, dbAddr); err != nil || got != "db: ping" {
			t.Fatalf("frontend: %q %v", got, err)
		}
		if got, err := echoFrom(intruderIP, dbAddr); err == nil || got != "" {
			t.Fatalf("intruder: %q %v, want the connection closed", got, err)
		}
	})

	t.Run("local endpoints", func(t *testing.T) {
		lweb, ldb := vip("demo", "lweb", 19605), vip("demo", "ldb", 19606)
		if code, body := httpGetFrom(t, frontendIP, "http://"+lweb+"/"); code != 200 || body != "lweb HTTP/1.1" {
			t.Fatalf("frontend: %d %q", code, body)
		}
		if code, _ := httpGetFrom(t, intruderIP, "http://"+lweb+"/"); code != 403 {
			t.Fatalf("intruder: %d", code)
		}
		if got, err := echoFrom(frontendIP, ldb); err != nil || got != "db: ping" {
			t.Fatalf("frontend: %q %v", got, err)
		}
		if got, err := echoFrom(intruderIP, ldb); err == nil || got != "" {
			t.Fatalf("intruder: %q %v, want the connection closed", got, err)
		}
	})

	t.Run("namespace default deny", func(t *testing.T) {
		addr := vip("locked", "vault", 19607)
		if got, err := echoFrom(frontendIP, addr); err == nil || got != "" {
			t.Fatalf("frontend to a default-deny namespace: %q %v", got, err)
		}
		req, _ := http.NewRequest("DELETE", "http://"+cp.AdminAddr()+"/v1/authorizationpolicies/locked/default-deny", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("delete: %v %v", resp, err)
		}
		resp.Body.Close()
		waitFor(t, "policy removed on the server node", func() bool { return srv.view.Load().authz.Len() == 6 })
		if got, err := echoFrom(frontendIP, addr); err != nil || got != "vault: ping" {
			t.Fatalf("after delete: %q %v", got, err)
		}
	})

	t.Run("mqtt", func(t *testing.T) {
		if !mqttOK {
			t.Skip("mosquitto not installed (make test installs mosquitto and mosquitto-clients)")
		}
		broker := vip("demo", "broker", 19604)
		host, port, _ := net.SplitHostPort(broker)
		waitFor(t, "broker endpoint", func() bool { return len(endpointsOf(cli, "demo/broker")) == 1 })
		pub := func(version, topic string) error {
			out, err := exec.Command("mosquitto_pub", "-h", host, "-p", port, "-A", frontendIP, "-V", version, "-q", "1",
				"-t", topic, "-m", "21.5").CombinedOutput()
			if err != nil {
				return fmt.Errorf("%w: %s", err, out)
			}
			return nil
		}
		for _, v := range []string{"mqttv5", "mqttv311"} {
			if err := pub(v, "sensors/a/temp"); err != nil {
				t.Fatalf("%s allowed topic: %v", v, err)
			}
			if err := pub(v, "actuators/a/valve"); err == nil {
				t.Fatalf("%s denied topic: published", v)
			}
		}
		if n := srvLog.denied("demo/broker"); n < 2 {
			t.Fatalf("%d MQTT denials logged", n)
		}
	})

	var m strings.Builder
	srv.cfg.Metrics.WritePrometheus(&m)
	for _, want := range []string{
		`fogmesh_authz_decisions_total{decision="allow",service="demo/web",policy="demo/web-frontend"}`,
		`fogmesh_authz_decisions_total{decision="deny",service="demo/web",policy="none"}`,
		`fogmesh_authz_decisions_total{decision="deny",service="demo/rpc",policy="none"}`,
		`fogmesh_authz_decisions_total{decision="deny",service="demo/db",policy="none"}`,
		`fogmesh_authz_decisions_total{decision="deny",service="locked/vault",policy="none"}`,
		`fogmesh_mesh_streams_total{dir="in",result="denied"}`,
	} {
		if !strings.Contains(m.String(), want) {
			t.Errorf("no %s in server metrics", want)
		}
	}
	var cm strings.Builder
	cli.cfg.Metrics.WritePrometheus(&cm)
	if want := `fogmesh_authz_decisions_total{decision="deny",service="demo/ldb",policy="demo/ldb-no-intruder"} 1`; !strings.Contains(cm.String(), want) {
		t.Errorf("no %s in client metrics", want)
	}
	if srvLog.denied("demo/web") == 0 {
		t.Error("no HTTP denial logged")
	}
	// Denials (the default audit setting) are in the node's audit chain.
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer fcancel()
	srv.AuditLog().Flush(fctx)
	recs, err := srv.AuditLog().ReadFrom(1, 10000)
	if err != nil {
		t.Fatal(err)
	}
	var httpDeny, allows int
	for _, r := range recs {
		if r.Kind != audit.KindAuthz {
			continue
		}
		if r.Decision == audit.Allow {
			allows++
		}
		if r.Decision == audit.Deny && strings.HasPrefix(r.Object, "demo/web:") && strings.HasPrefix(r.Action, "GET ") {
			httpDeny++
		}
	}
	if httpDeny == 0 || allows != 0 {
		t.Errorf("audit chain: %d HTTP denials of demo/web, %d allows (want > 0 and 0 with decisions: deny)", httpDeny, allows)
	}
}

// TestAuthzPoliciesInOfflineCache: policies are written to the cache file
// with the rest of the configuration and enforced again from it.
func TestAuthzPoliciesInOfflineCache(t *testing.T) {
	objs, err := api.Decode([]byte(`apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: locked}
spec: {}
`))
	if err != nil {
		t.Fatal(err)
	}
	res := newResources()
	res.put(objs[0])
	c, err := res.toConfig("store", 7)
	if err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/config-cache.json"
	if err := saveJSON(path, c); err != nil {
		t.Fatal(err)
	}
	_, loaded, err := loadCache(path)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.authz["locked/deny-all"] == nil {
		t.Fatalf("policy not in the cache: %+v", loaded.authz)
	}
	if e, _ := compileAuthz(loaded.authz); !e.Selects("locked", "anything") {
		t.Fatal("cached policy not enforced")
	}
}

// TestVouchSourceIdentity: in secure mode the destination agent accepts a
// claimed source workload identity only from the node that hosts it;
// anything else is treated as unknown and counted. Insecure mode takes the
// claim as is.
func TestVouchSourceIdentity(t *testing.T) {
	a := startAgent(t, agentOpts{name: "v", site: "s1", region: "r1", vipOctet: 185, stateDir: t.TempDir()})
	res := newResources()
	objs, err := api.Decode([]byte(`[
{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"web","namespace":"demo"},"spec":{"ports":[{"name":"http","port":80}],"identity":{"serviceAccounts":["frontend"]}}},
{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"db","namespace":"demo"},"spec":{"ports":[{"name":"tcp","port":5432}]}},
{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"web-a","namespace":"demo"},"spec":{"service":"web","node":"a","address":"10.0.0.1","ports":[{"name":"http","port":80}],"serviceAccount":"frontend"}},
{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"db-a","namespace":"demo"},"spec":{"service":"db","node":"a","address":"10.0.0.1","ports":[{"name":"tcp","port":5432}],"serviceAccount":"root"}}]`))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		res.put(o)
	}
	a.view.Store(buildView(a.self, res, nil, a.vip4, a.vip6, "fogmesh.local"))
	own := "spiffe://fogmesh.local/ns/demo/sa/frontend"
	h := func(node string) transport.Header { return transport.Header{Source: node} }
	ctx := transport.ContextWithPeer(context.Background(), transport.Peer{ID: spiffeid.RequireFromString("spiffe://fogmesh.local/site/s1/node/a")})

	if src, node := a.vouch(ctx, h("b"), own); src != own || node != "b" {
		t.Fatalf("insecure mode: vouch = %q %q, want the claim as is", src, node)
	}
	a.ident = &nodeIdentity{td: spiffeid.RequireTrustDomainFromString("fogmesh.local")} // secure mode as far as vouch is concerned
	defer func() { a.ident = nil }()
	if src, _ := a.vouch(ctx, h("a"), own); src != own {
		t.Fatalf("node a claims its own workload: got %q", src)
	}
	before := a.m.unvouched.Get()
	for _, c := range []struct{ node, id string }{{"b", own}, {"a", "spiffe://fogmesh.local/ns/demo/sa/admin"},
		{"a", "spiffe://other.example/ns/demo/sa/frontend"},
		{"a", "spiffe://fogmesh.local/ns/demo/sa/root"}} { // db-a claims it, service db does not allow it
		if src, node := a.vouch(ctx, h(c.node), c.id); src != "" || node != c.node {
			t.Errorf("node %s claiming %s: got %q, want unknown", c.node, c.id, src)
		}
	}
	if got := a.m.unvouched.Get() - before; got != 4 {
		t.Errorf("unvouched counter rose by %d, want 4", got)
	}
	// A node of a federated trust domain speaks for its own domain only.
	fed := transport.ContextWithPeer(context.Background(), transport.Peer{ID: spiffeid.RequireFromString("spiffe://other.example/site/x/node/f"), Node: "f"})
	if src, _ := a.vouch(fed, h("f"), "spiffe://other.example/ns/shop/sa/pos"); src != "spiffe://other.example/ns/shop/sa/pos" {
		t.Errorf("federated node's own identity: got %q", src)
	}
	if src, _ := a.vouch(fed, h("f"), own); src != "" {
		t.Errorf("federated node claiming this domain's %s: got %q, want unknown", own, src)
	}
}
