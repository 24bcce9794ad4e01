package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// The secure data plane end to end, as a user runs it: a secure control
// plane, join tokens, two agents of different sites that talk over mutual
// TLS, workloads on each, policies applied with `fogmesh apply` (fogmesh's
// and Istio's kind), real clients (curl, grpc-go, mosquitto_pub/sub) bound
// to the source addresses of registered workloads, and backends that
// report the source identity they were handed. Every process binds port 0
// and reports its address (the broker excepted: mosquitto cannot, see
// startMosquitto). Address block of this test: 127.250-252/16.

const (
	dpClientVIPs = "127.250.0.0/16" // the client node's agent
	dpServerVIPs = "127.251.0.0/16" // the server node's agent
	dpFrontend   = "127.252.0.10"   // frontend workload on the client node
	dpGuest      = "127.252.0.11"   // guest workload on the client node
	dpLocalFront = "127.252.0.12"   // frontend workload on the server node
	dpBroker     = "127.252.0.20"   // the mosquitto broker on the server node
	dpNobody     = "127.252.0.30"   // a local process that is no workload

	dpFrontendID = "spiffe://fogmesh.local/ns/e2e/sa/frontend"
	dpGuestID    = "spiffe://fogmesh.local/ns/e2e/sa/guest"
	dpRPCID      = "spiffe://fogmesh.local/ns/e2e/sa/rpc" // only the server node hosts it
)

const dpServices = `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: web, namespace: e2e}
spec:
  ports: [{name: http, port: 18080, protocol: http}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: rpc, namespace: e2e}
spec:
  ports: [{name: grpc, port: 19090, protocol: grpc}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: broker, namespace: e2e}
spec:
  ports: [{name: mqtt, port: 11883, protocol: mqtt}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: open, namespace: e2e}
spec:
  ports: [{name: http, port: 18083, protocol: http}, {name: any, port: 18084, protocol: auto}, {name: grpc, port: 18085, protocol: grpc}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: frontend, namespace: e2e}
spec:
  ports: [{name: http, port: 18081}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: guest, namespace: e2e}
spec:
  ports: [{name: http, port: 18082}]
`

// dpPolicies: the frontend may GET and POST /api/* on web but never
// /api/admin/*, may call only Health/Check on rpc (an Istio document), and
// may publish sensors/+/temperature and subscribe sensors/# on the broker.
// Nobody else may do anything on these three; no policy selects open.
const dpPolicies = `apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-readers, namespace: e2e}
spec:
  service: web
  action: ALLOW
  rules:
    - from: [{principals: ["` + dpFrontendID + `"]}]
      to: [{methods: [GET, POST], paths: ["/api/*"]}]
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-no-admin, namespace: e2e}
spec:
  service: web
  action: DENY
  rules:
    - to: [{paths: ["/api/admin/*"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: rpc-health, namespace: e2e}
spec:
  selector: {matchLabels: {app: rpc}}
  action: ALLOW
  rules:
    - from: [{source: {principals: ["cluster.local/ns/e2e/sa/frontend"]}}]
      to: [{operation: {methods: ["POST"], paths: ["/grpc.health.v1.Health/Check"]}}]
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: broker-topics, namespace: e2e}
spec:
  service: broker
  rules:
    - from: [{principals: ["` + dpFrontendID + `"]}]
      to: [{publish: ["sensors/+/temperature"]}]
    - from: [{principals: ["` + dpFrontendID + `"]}]
      to: [{subscribe: ["sensors/#"]}]
`

// needTool skips a test whose client tool is missing, except in CI
// (CI=true), where scripts/install-deps.sh should have installed it.
func needTool(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		testenv.NeedTool(t, n)
	}
}

// waitOutput waits until p's output matches re and returns the submatches;
// it fails at once if p exits first.
func waitOutput(t *testing.T, p *proc, re *regexp.Regexp, d time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if m := re.FindStringSubmatch(p.out.String()); m != nil {
			return m
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited before printing %q:\n%s", p.cmd.Path, re, p.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not print %q within %v:\n%s", p.cmd.Path, re, d, p.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startMosquitto runs a broker on addr. mosquitto cannot bind port 0 nor
// report a port, so the port is drawn at random below the ephemeral range
// and, if it is taken after all, drawn again: the address is this test's
// own, so a clash is unlikely, and it is retried rather than guessed once.
func startMosquitto(t *testing.T, addr string) (*proc, int) {
	t.Helper()
	dir := t.TempDir()
	for range 8 {
		port := 20000 + rand.IntN(12000)
		conf := filepath.Join(dir, "mosquitto.conf")
		os.WriteFile(conf, []byte(fmt.Sprintf("listener %d %s\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type all\n", port, addr)), 0o600)
		p := startCmd(t, "mosquitto", "-c", conf)
		deadline := time.Now().Add(10 * time.Second)
		exited := false
		for !strings.Contains(p.out.String(), " running") && !exited && time.Now().Before(deadline) {
			select {
			case <-p.done:
				exited = true
			case <-time.After(20 * time.Millisecond):
			}
		}
		switch out := p.out.String(); {
		case strings.Contains(out, " running"):
			return p, port
		case exited && strings.Contains(out, "in use"):
			t.Logf("mosquitto: port %d is taken, drawing another", port)
		default:
			t.Fatalf("mosquitto did not start on %s:%d:\n%s", addr, port, out)
		}
	}
	t.Fatal("mosquitto found no free port in 8 tries")
	return nil, 0
}

// identityEcho is the HTTP workload: it answers with the path and the
// source-identity header values it received, and remembers each request.
type identityEcho struct {
	mu   sync.Mutex
	seen []seenRequest
}

type seenRequest struct {
	Path string   `json:"path"`
	IDs  []string `json:"ids"`
	XFF  []string `json:"xff,omitempty"` // X-Forwarded-For
}

func (e *identityEcho) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := seenRequest{Path: r.URL.Path, IDs: r.Header.Values("X-Fogmesh-Source-Id"), XFF: r.Header.Values("X-Forwarded-For")}
	e.mu.Lock()
	e.seen = append(e.seen, s)
	e.mu.Unlock()
	switch r.URL.Path {
	case "/body": // the request body back, streamed, with a trailer
		w.Header().Set("Trailer", "X-Length")
		n, _ := io.Copy(w, r.Body)
		w.Header().Set("X-Length", strconv.FormatInt(n, 10))
	case "/upgrade": // an upgraded connection that echoes
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
			return
		}
		c, bw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		bw.Flush()
		io.Copy(c, bw.Reader)
	default:
		json.NewEncoder(w).Encode(s)
	}
}

// reached returns what the workload received on path.
func (e *identityEcho) reached(path string) []seenRequest {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []seenRequest
	for _, s := range e.seen {
		if s.Path == path {
			out = append(out, s)
		}
	}
	return out
}

// healthEcho is the gRPC workload: grpc.health.v1 whose Check answers
// SERVING with the source identities it received in the response header
// "seen-source-id"; List is left unimplemented, so reaching it would
// answer UNIMPLEMENTED, not PERMISSION_DENIED.
type healthEcho struct {
	healthpb.UnimplementedHealthServer
	mu    sync.Mutex
	calls int
}

func (h *healthEcho) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	h.mu.Lock()
	h.calls++
	h.mu.Unlock()
	md, _ := metadata.FromIncomingContext(ctx)
	ids := md.Get("x-fogmesh-source-id")
	if len(ids) == 0 {
		ids = []string{"(none)"}
	}
	grpc.SetHeader(ctx, metadata.Pairs("seen-source-id", strings.Join(ids, ",")))
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// Watch streams three answers, each after the client's call is open, and
// ends: a server stream through the agents.
func (h *healthEcho) Watch(_ *healthpb.HealthCheckRequest, stream grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	h.mu.Lock()
	h.calls++
	h.mu.Unlock()
	md, _ := metadata.FromIncomingContext(stream.Context())
	stream.SetHeader(metadata.Pairs("seen-source-id", strings.Join(md.Get("x-fogmesh-source-id"), ",")))
	for range 3 {
		if err := stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
			return err
		}
	}
	return nil
}

func (h *healthEcho) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls
}

// dpMesh is the running mesh of TestSecureDataPlane.
type dpMesh struct {
	admin                []string // admin flags of the CLI
	clientAdmin          string   // the client node agent's admin address
	serverAdmin          string
	serverDir            string
	web, rpc, broker     netip.AddrPort // the services' VIPs on the client node
	localBroker          netip.AddrPort // broker's VIP on the server node
	localWeb, localRPC   netip.AddrPort // web's and rpc's VIPs on the server node
	webEcho, openEcho    *identityEcho
	openConns            atomic.Int64   // connections open's workload accepted
	open                 netip.AddrPort // open's VIP on the client node
	serverMesh           string         // the server agent's mesh address
	clientDir            string         // the client agent's state directory
	grpcEcho             *healthEcho
	brokerPort           int
	brokerProc           *proc // its log tells when a subscription is made
	clientLog, serverLog *lockedBuffer
}

// startDPMesh builds the mesh: a secure control plane, two agents joined
// with tokens (sites e2e-a and e2e-b), the workloads and the policies.
func startDPMesh(t *testing.T) *dpMesh {
	t.Helper()
	m := &dpMesh{webEcho: &identityEcho{}, openEcho: &identityEcho{}, grpcEcho: &healthEcho{}}

	// Backends on the server node.
	webLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	webSrv := &http.Server{Handler: m.webEcho}
	go webSrv.Serve(webLn)
	t.Cleanup(func() { webSrv.Close() })
	openLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	openSrv := &http.Server{Handler: m.openEcho, ConnState: func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			m.openConns.Add(1)
		}
	}}
	go openSrv.Serve(openLn)
	t.Cleanup(func() { openSrv.Close() })
	rpcLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, m.grpcEcho)
	go gs.Serve(rpcLn)
	t.Cleanup(gs.Stop)
	m.brokerProc, m.brokerPort = startMosquitto(t, dpBroker)

	// The control plane, secure by default, on ports it picks.
	state := t.TempDir()
	cp := start(t, "control", "-state-dir", state, "-admin-addr", "127.0.0.1:0", "-sync-addr", "127.0.0.1:0")
	addrs := waitOutput(t, cp, regexp.MustCompile(`admin https://(\S+), sync (\S+) \(mTLS\)`), 20*time.Second)
	adminAddr, syncAddr := addrs[1], addrs[2]
	m.admin = secureAdmin(t, cp, state, adminAddr)
	docs := filepath.Join(t.TempDir(), "docs.yaml")
	os.WriteFile(docs, []byte(dpServices+"---\n"+dpPolicies), 0o600)
	out, code := run(t, append([]string{"apply", "-f", docs}, m.admin...)...)
	if code != 0 || !strings.Contains(out, "authorizationpolicy/e2e/rpc-health applied") || strings.Contains(out, "warning") {
		t.Fatalf("apply: exit %d\n%s", code, out)
	}

	agentAt := func(name, site, vips, workloads string) (p *proc, admin, mesh, dir string) {
		t.Helper()
		tok, code := run(t, append([]string{"token", "create", "-site", site, "-ttl", "5m"}, m.admin...)...)
		if code != 0 {
			t.Fatalf("token create: %s", tok)
		}
		dir = t.TempDir()
		cfg := fmt.Sprintf("node: {name: %s, site: %s, region: r1}\ncontrol: [%q]\nmeshAddr: 127.0.0.1:0\ndnsAddr: 127.0.0.1:0\nadminAddr: 127.0.0.1:0\nvipRange: %q\nstateDir: %q\njoinToken: %q\nworkloads:\n%s",
			name, site, syncAddr, vips, dir, strings.TrimSpace(tok), workloads)
		path := filepath.Join(dir, "agent.yaml")
		os.WriteFile(path, []byte(cfg), 0o600)
		p = start(t, "agent", "-config", path)
		addrs := waitOutput(t, p, regexp.MustCompile(`fogmesh agent `+name+`: dns \S+, mesh (\S+), admin (\S+)\n`), 20*time.Second)
		mesh, admin = addrs[1], addrs[2]
		waitProcHTTP(t, p, "http://"+admin+"/healthz")
		return p, admin, mesh, dir
	}
	client := func(svc, addr string, port int) string {
		return fmt.Sprintf("  - {service: %s, namespace: e2e, address: %q, ports: [{name: http, port: %d}], check: {type: none}}\n", svc, addr, port)
	}
	srv, srvAdmin, srvMesh, srvDir := agentAt("server", "e2e-b", dpServerVIPs,
		fmt.Sprintf("  - {service: web, namespace: e2e, ports: [{name: http, port: %d}]}\n", webLn.Addr().(*net.TCPAddr).Port)+
			fmt.Sprintf("  - {service: open, namespace: e2e, ports: [{name: http, port: %[1]d}, {name: any, port: %[1]d}, {name: grpc, port: %[2]d}]}\n",
				openLn.Addr().(*net.TCPAddr).Port, rpcLn.Addr().(*net.TCPAddr).Port)+
			fmt.Sprintf("  - {service: rpc, namespace: e2e, ports: [{name: grpc, port: %d}]}\n", rpcLn.Addr().(*net.TCPAddr).Port)+
			fmt.Sprintf("  - {service: broker, namespace: e2e, address: %q, ports: [{name: mqtt, port: %d}]}\n", dpBroker, m.brokerPort)+
			client("frontend", dpLocalFront, 18081))
	cli, cliAdmin, _, cliDir := agentAt("client", "e2e-a", dpClientVIPs, client("frontend", dpFrontend, 18081)+client("guest", dpGuest, 18082))
	m.serverAdmin, m.serverDir, m.serverMesh, m.clientAdmin, m.clientDir = srvAdmin, srvDir, srvMesh, cliAdmin, cliDir
	m.serverLog, m.clientLog = srv.out, cli.out

	// The services' VIPs: their index in each agent's range.
	out, code = run(t, append([]string{"get", "services", "-n", "e2e", "-o", "json"}, m.admin...)...)
	var svcs []api.Service
	if err := json.Unmarshal([]byte(out), &svcs); code != 0 || err != nil {
		t.Fatalf("get services: %d %v\n%s", code, err, out)
	}
	for _, s := range svcs {
		at := func(vips string) netip.AddrPort {
			return netip.AddrPortFrom(api.VIPFor(netip.MustParsePrefix(vips), s.Status.VIPIndex), uint16(s.Spec.Ports[0].Port))
		}
		switch s.Meta.Name {
		case "web":
			m.web, m.localWeb = at(dpClientVIPs), at(dpServerVIPs)
		case "open":
			m.open = at(dpClientVIPs)
		case "rpc":
			m.rpc, m.localRPC = at(dpClientVIPs), at(dpServerVIPs)
		case "broker":
			m.broker, m.localBroker = at(dpClientVIPs), at(dpServerVIPs)
		}
	}
	// Ready when the client node routes each service to the server node.
	eventually(t, 20*time.Second, "the client node never routed web, rpc and broker to the server node", func() bool {
		out, _ := run(t, "routes", "-agent", "http://"+cliAdmin)
		return strings.Contains(out, "web-server") && strings.Contains(out, "rpc-server") && strings.Contains(out, "broker-server") && strings.Contains(out, "open-server")
	})
	return m
}

// nodeMeshClient is a mesh client with the node certificate and key an
// agent saved in dir: what an attacker who owns that node holds.
func nodeMeshClient(t *testing.T, dir, node string) *transport.Client {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "node-cert.pem"), filepath.Join(dir, "node-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	c := transport.NewClient(transport.ClientConfig{SourceNode: node, TLS: &tls.Config{MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{cert}, NextProtos: []string{identity.ALPNMesh},
		InsecureSkipVerify: true}}) // the attacker does not care who answers
	t.Cleanup(func() { c.Close() })
	return c
}

// curlResult is what curl got.
type curlResult struct {
	code int
	body string
}

// curl sends one request from the source address src (a workload's).
func curl(t *testing.T, src, url string, extra ...string) curlResult {
	t.Helper()
	args := append([]string{"-sS", "--max-time", "10", "--interface", src, "-w", "\n%{http_code}"}, extra...)
	out, err := exec.Command("curl", append(args, url)...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %s from %s: %v\n%s", url, src, err, out)
	}
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndexByte(s, '\n')
	code, _ := strconv.Atoi(s[i+1:])
	return curlResult{code: code, body: s[:max(i, 0)]}
}

// seenIDs decodes the identity echo's answer.
func seenIDs(t *testing.T, r curlResult) []string {
	t.Helper()
	var s seenRequest
	if err := json.Unmarshal([]byte(r.body), &s); err != nil {
		t.Fatalf("echo answered %d %q: %v", r.code, r.body, err)
	}
	return s.IDs
}

// denials sums the deny series of fogmesh_authz_decisions_total for a
// service on an agent's /metrics.
func denials(t *testing.T, admin, service string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	prefix := fmt.Sprintf(`fogmesh_authz_decisions_total{decision="deny",service=%q,`, service)
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			f, _ := strconv.ParseFloat(rest[strings.LastIndexByte(rest, ' ')+1:], 64)
			sum += f
		}
	}
	return sum
}

// auditRecords counts the records of the agent's audit log in dir.
func auditRecords(t *testing.T, dir string) int {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "audit", "audit.log*"))
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.SplitAfter(string(b), "\n") {
			if r, err := audit.DecodeLine([]byte(line)); err == nil && r != nil {
				n++
			}
		}
	}
	return n
}

// auditDenied reports whether the agent's audit log in dir holds a deny
// record by actor of action on object.
func auditDenied(t *testing.T, dir, actor, action, object string) bool {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "audit", "audit.log*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.SplitAfter(string(b), "\n") {
			r, err := audit.DecodeLine([]byte(line))
			if err != nil || r == nil {
				continue
			}
			if r.Kind == audit.KindAuthz && r.Decision == audit.Deny && r.Actor == actor && r.Action == action && r.Object == object {
				return true
			}
		}
	}
	return false
}

// TestSecureDataPlane: allowed and denied HTTP (HTTP/1.1 and h2c), gRPC and
// MQTT requests across a real mTLS mesh of two agents joined with tokens.
// Allowed calls reach the workload with the vouched SPIFFE ID of the
// calling workload; a forged X-Fogmesh-Source-Id never reaches it; denied
// calls get 403, PERMISSION_DENIED, or for MQTT the closed connection (MQTT
// 5: DISCONNECT 0x87), never reach the workload, and are counted in the
// enforcing agent's metrics and written to its audit log, which reaches the
// control plane whole. A node cannot vouch for a workload it does not host,
// and once revoked reaches no workload at all.
func TestSecureDataPlane(t *testing.T) {
	needTool(t, "curl", "mosquitto", "mosquitto_pub", "mosquitto_sub")
	m := startDPMesh(t)
	web := "http://" + m.web.String()
	// Policies arrive with the rest of the configuration; the first allowed
	// request waits for the mesh session.
	eventually(t, 20*time.Second, "the frontend never reached web", func() bool {
		return curl(t, dpFrontend, web+"/api/ready").code == 200
	})

	t.Run("http", func(t *testing.T) {
		for _, h2 := range []bool{false, true} {
			var proto []string
			if h2 {
				proto = []string{"--http2-prior-knowledge"}
			}
			name := map[bool]string{false: "h1", true: "h2c"}[h2]
			// Allowed: the workload sees exactly the frontend's identity,
			// whatever the client claimed, however it spelled it.
			for i, forged := range [][]string{
				nil,
				{"-H", "X-Fogmesh-Source-Id: spiffe://fogmesh.local/ns/e2e/sa/admin"},
				{"-H", "x-fogmesh-source-id: spiffe://fogmesh.local/ns/e2e/sa/admin", "-H", "X-FOGMESH-SOURCE-ID: " + dpGuestID},
			} {
				path := fmt.Sprintf("/api/%s/%d", name, i)
				r := curl(t, dpFrontend, web+path, append(proto, forged...)...)
				if r.code != 200 {
					t.Fatalf("%s: frontend GET %s: %d %s", name, path, r.code, r.body)
				}
				if ids := seenIDs(t, r); !slices.Equal(ids, []string{dpFrontendID}) {
					t.Errorf("%s: frontend GET %s (forged %q): the workload saw source %q, want %q", name, path, forged, ids, dpFrontendID)
				}
			}
			// Denied: by the DENY policy, by no matching ALLOW rule (path,
			// method), by source, and a forged claim does not help.
			for _, c := range []struct {
				who, src, method, path string
				hdr                    []string
			}{
				{"frontend", dpFrontend, "GET", "/api/admin/keys", nil},
				{"frontend", dpFrontend, "GET", "/metrics", nil},
				{"frontend", dpFrontend, "DELETE", "/api/items", nil},
				{"guest", dpGuest, "GET", "/api/guest", nil},
				{"guest forging frontend", dpGuest, "GET", "/api/guest-forged", []string{"-H", "X-Fogmesh-Source-Id: " + dpFrontendID}},
				{"no workload forging frontend", dpNobody, "GET", "/api/nobody-forged", []string{"-H", "X-Fogmesh-Source-Id: " + dpFrontendID}},
			} {
				path := c.path + "/" + name
				r := curl(t, c.src, web+path, append(append(proto, "-X", c.method), c.hdr...)...)
				if r.code != 403 || !strings.Contains(r.body, "RBAC: access denied") {
					t.Errorf("%s: %s %s %s: %d %q, want 403", name, c.who, c.method, path, r.code, r.body)
				}
				if got := m.webEcho.reached(path); len(got) != 0 {
					t.Errorf("%s: %s %s %s reached the workload: %v", name, c.who, c.method, path, got)
				}
			}
		}
		// The same on the server node's own agent (a local endpoint: its
		// agent vouches and decides alone).
		local := "http://" + m.localWeb.String()
		for _, proto := range [][]string{nil, {"--http2-prior-knowledge"}} {
			name := map[bool]string{false: "h1", true: "h2c"}[proto != nil]
			r := curl(t, dpLocalFront, local+"/api/local/"+name, append(proto, "-H", "X-Fogmesh-Source-Id: "+dpGuestID)...)
			if r.code != 200 {
				t.Fatalf("local frontend %s: %d %s", name, r.code, r.body)
			}
			if ids := seenIDs(t, r); !slices.Equal(ids, []string{dpFrontendID}) {
				t.Errorf("local frontend %s (forged guest): the workload saw %q", name, ids)
			}
			for _, c := range []struct{ src, path string }{{dpLocalFront, "/api/admin/local/" + name}, {dpNobody, "/api/local-nobody/" + name}} {
				if r := curl(t, c.src, local+c.path, append(proto, "-H", "X-Fogmesh-Source-Id: "+dpFrontendID)...); r.code != 403 {
					t.Errorf("local %s from %s: %d %s, want 403", c.path, c.src, r.code, r.body)
				}
				if got := m.webEcho.reached(c.path); len(got) != 0 {
					t.Errorf("local %s reached the workload: %v", c.path, got)
				}
			}
		}
	})

	t.Run("grpc", func(t *testing.T) {
		dial := func(src string, vip netip.AddrPort) healthpb.HealthClient {
			t.Helper()
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
			cc, err := grpc.NewClient("passthrough:///"+vip.String(),
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
					return d.DialContext(ctx, "tcp", addr)
				}))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cc.Close() })
			return healthpb.NewHealthClient(cc)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		front, guest, nobody := dial(dpFrontend, m.rpc), dial(dpGuest, m.rpc), dial(dpNobody, m.rpc)
		localFront, localNobody := dial(dpLocalFront, m.localRPC), dial(dpNobody, m.localRPC)
		forged := metadata.AppendToOutgoingContext(ctx, "x-fogmesh-source-id", "spiffe://fogmesh.local/ns/e2e/sa/admin")
		for name, c := range map[string]healthpb.HealthClient{"frontend": front, "local frontend": localFront} {
			var hdr metadata.MD
			if _, err := c.Check(forged, &healthpb.HealthCheckRequest{}, grpc.Header(&hdr)); err != nil {
				t.Fatalf("%s Check: %v", name, err)
			}
			if got := hdr.Get("seen-source-id"); !slices.Equal(got, []string{dpFrontendID}) {
				t.Errorf("%s Check (forged admin): the workload saw %q, want %q", name, got, dpFrontendID)
			}
		}
		before := m.grpcEcho.count()
		claimFront := metadata.AppendToOutgoingContext(ctx, "x-fogmesh-source-id", dpFrontendID)
		for name, call := range map[string]func() error{
			"guest Check": func() error { _, err := guest.Check(ctx, &healthpb.HealthCheckRequest{}); return err },
			"guest Check forging frontend": func() error {
				_, err := guest.Check(claimFront, &healthpb.HealthCheckRequest{})
				return err
			},
			"no workload Check forging frontend": func() error {
				_, err := nobody.Check(claimFront, &healthpb.HealthCheckRequest{})
				return err
			},
			"local no workload Check forging frontend": func() error {
				_, err := localNobody.Check(claimFront, &healthpb.HealthCheckRequest{})
				return err
			},
			"local frontend List": func() error { _, err := localFront.List(ctx, &healthpb.HealthListRequest{}); return err },
			"frontend List":       func() error { _, err := front.List(ctx, &healthpb.HealthListRequest{}); return err },
			"frontend Watch": func() error {
				s, err := front.Watch(ctx, &healthpb.HealthCheckRequest{})
				if err == nil {
					_, err = s.Recv()
				}
				return err
			},
		} {
			if err := call(); status.Code(err) != codes.PermissionDenied {
				t.Errorf("%s: %v, want PERMISSION_DENIED", name, err)
			}
		}
		if n := m.grpcEcho.count(); n != before {
			t.Errorf("denied calls reached the workload: %d calls", n-before)
		}
		// No policy selects open: a server stream gets through whole, with
		// the caller's identity and not its claim.
		var hdr metadata.MD
		ws, err := dial(dpFrontend, netip.AddrPortFrom(m.open.Addr(), 18085)).Watch(forged, &healthpb.HealthCheckRequest{}, grpc.Header(&hdr))
		if err != nil {
			t.Fatalf("open Watch: %v", err)
		}
		n := 0
		for ; n < 10; n++ {
			if _, err := ws.Recv(); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("open Watch, message %d: %v", n, err)
			}
		}
		if got := hdr.Get("seen-source-id"); n != 3 || !slices.Equal(got, []string{dpFrontendID}) {
			t.Errorf("open Watch: %d messages, the workload saw %q; want 3 and %q", n, got, dpFrontendID)
		}
	})

	t.Run("mqtt", func(t *testing.T) {
		// Clients on the client node go through its VIP to the server node;
		// the local frontend through the server node's own VIP.
		mqttArgs := func(src, version, id string) []string {
			vip := m.broker
			if src == dpLocalFront || src == dpNobody {
				vip = m.localBroker
			}
			return []string{"-h", vip.Addr().String(), "-p", strconv.Itoa(int(vip.Port())), "-A", src, "-V", version, "-i", id, "-q", "1"}
		}
		sub := startCmd(t, "mosquitto_sub", append(mqttArgs(dpFrontend, "mqttv311", "e2e-sub"), "-t", "sensors/#", "-v", "-d")...)
		waitOutput(t, m.brokerProc, regexp.MustCompile(`Sending SUBACK to e2e-sub\n`), 15*time.Second)
		pub := func(src, version, id, topic, msg string) (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, "mosquitto_pub", append(mqttArgs(src, version, id), "-t", topic, "-m", msg, "-d")...).CombinedOutput()
			return string(out), err
		}
		delivered := func(line string) bool { return strings.Contains(sub.out.String(), line+"\n") }

		for _, src := range []string{dpFrontend, dpLocalFront} {
			if out, err := pub(src, "mqttv311", "e2e-pub1", "sensors/a/temperature", src); err != nil {
				t.Fatalf("frontend publish from %s: %v\n%s", src, err, out)
			}
			eventually(t, 10*time.Second, "the subscriber never got the allowed message from "+src, func() bool { return delivered("sensors/a/temperature " + src) })
		}

		// Denied: a topic the frontend may not publish to (MQTT 5 first
		// hears DISCONNECT 0x87), the guest and a process that is no
		// workload at all.
		for _, c := range []struct{ src, version, id, topic, msg, want string }{
			{dpFrontend, "mqttv5", "e2e-pub2", "sensors/a/humidity", "denied-v5", "Received DISCONNECT (135)"},
			{dpFrontend, "mqttv311", "e2e-pub3", "sensors/b/humidity", "denied-v311", ""},
			{dpGuest, "mqttv311", "e2e-pub4", "sensors/g/temperature", "denied-guest", "received CONNACK (5)"},
			{dpLocalFront, "mqttv5", "e2e-pub6", "sensors/l/humidity", "denied-local", "Received DISCONNECT (135)"},
			{dpNobody, "mqttv5", "e2e-pub7", "sensors/n/temperature", "denied-nobody", "received CONNACK (135)"},
		} {
			out, err := pub(c.src, c.version, c.id, c.topic, c.msg)
			t.Logf("%s publish %s (%s): %v\n%s", c.src, c.topic, c.version, err, out)
			if err == nil || strings.Contains(out, "PUBACK") {
				t.Errorf("%s publish %s (%s) was accepted:\n%s", c.src, c.topic, c.version, out)
			}
			if c.want != "" && !strings.Contains(out, c.want) {
				t.Errorf("%s publish %s (%s): no %q:\n%s", c.src, c.topic, c.version, c.want, out)
			}
		}
		// A Last Will on a topic the frontend may not publish to is refused
		// at CONNECT, before the broker sees it, so the broker can never
		// publish it (a subscriber on the broker itself, past the mesh,
		// would see it).
		direct := startCmd(t, "mosquitto_sub", "-h", dpBroker, "-p", strconv.Itoa(m.brokerPort), "-i", "e2e-direct", "-t", "alerts/#", "-v", "-d")
		waitOutput(t, m.brokerProc, regexp.MustCompile(`Sending SUBACK to e2e-direct\n`), 15*time.Second)
		for _, version := range []string{"mqttv311", "mqttv5"} {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			out, err := exec.CommandContext(ctx, "mosquitto_pub", append(mqttArgs(dpFrontend, version, "e2e-will-"+version),
				"--will-topic", "alerts/fire", "--will-payload", "FIRE", "-t", "sensors/w/temperature", "-m", "will-"+version, "-d")...).CombinedOutput()
			cancel()
			want := map[string]string{"mqttv311": "received CONNACK (5)", "mqttv5": "received CONNACK (135)"}[version]
			if err == nil || !strings.Contains(string(out), want) {
				t.Errorf("a CONNECT with a denied will (%s) was not refused with %q: %v\n%s", version, want, err, out)
			}
		}
		// A subscription the frontend may not make.
		out, _ := exec.Command("mosquitto_sub", append(mqttArgs(dpFrontend, "mqttv5", "e2e-sub2"), "-t", "alerts/#", "-d", "-W", "10")...).CombinedOutput()
		if strings.Contains(string(out), "SUBACK") || !strings.Contains(string(out), "Received DISCONNECT (135)") {
			t.Errorf("frontend subscribe alerts/# was not refused with DISCONNECT 0x87:\n%s", out)
		}
		// A later allowed message arrives; none of the denied ones did.
		if out, err := pub(dpFrontend, "mqttv311", "e2e-pub5", "sensors/z/temperature", "marker"); err != nil {
			t.Fatalf("frontend publish: %v\n%s", err, out)
		}
		eventually(t, 10*time.Second, "the subscriber never got the marker", func() bool { return delivered("sensors/z/temperature marker") })
		if s := sub.out.String(); strings.Contains(s, "denied-") || strings.Contains(s, "will-") {
			t.Errorf("a denied message reached the subscriber:\n%s", s)
		}
		if s := direct.out.String(); strings.Contains(s, "FIRE") {
			t.Errorf("the broker published a denied will:\n%s", s)
		}
	})

	t.Run("vouching", func(t *testing.T) {
		// No policy selects open: the workload still sees the vouched
		// identity of its caller, and none for a process that is no
		// workload, whatever they claim (port http, and auto taking the
		// HTTP path).
		for _, vip := range []netip.AddrPort{m.open, netip.AddrPortFrom(m.open.Addr(), 18084)} {
			open := "http://" + vip.String()
			if r := curl(t, dpFrontend, open+"/open/frontend", "-H", "X-Fogmesh-Source-Id: "+dpGuestID); r.code != 200 || !slices.Equal(seenIDs(t, r), []string{dpFrontendID}) {
				t.Errorf("frontend to %s (forged guest): %d %s", open, r.code, r.body)
			}
			if r := curl(t, dpNobody, open+"/open/nobody", "-H", "X-Fogmesh-Source-Id: "+dpFrontendID); r.code != 200 || len(seenIDs(t, r)) != 0 {
				t.Errorf("no workload to %s (forged frontend): %d %s", open, r.code, r.body)
			}
		}
		// A node that lies: the client node's own certificate and key speak
		// the mesh protocol to the server node and claim, in the stream
		// header and the request header, an identity the client node hosts
		// no endpoint of. The server node's agent takes it as unknown.
		unvouched := metric(t, nil, "http://"+m.serverAdmin+"/metrics", "fogmesh_agent_authz_unvouched_source_total")
		liar := nodeMeshClient(t, m.clientDir, "client")
		for _, c := range []struct {
			svc, port string
			echo      *identityEcho
			code      int
		}{{"web", "http", m.webEcho, 403}, {"open", "http", m.openEcho, 200}, {"open", "any", m.openEcho, 200}} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := liar.Dial(ctx, m.serverMesh, transport.Header{Namespace: "e2e", Service: c.svc, Endpoint: c.svc + "-server", Port: c.port,
				Source: "client", SourceID: dpRPCID})
			if err != nil {
				t.Fatalf("%s: mesh dial with the client node's credentials: %v", c.svc, err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			path := "/lie/" + c.svc + "/" + c.port
			fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nX-Fogmesh-Source-Id: %s\r\nConnection: close\r\n\r\n", path, c.svc, dpRPCID)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("%s: %v", c.svc, err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.code {
				t.Errorf("%s:%s: a request claiming %s from the client node: %s, want %d", c.svc, c.port, dpRPCID, resp.Status, c.code)
			}
			for _, s := range c.echo.reached(path) {
				if len(s.IDs) != 0 {
					t.Errorf("%s:%s: the workload saw the unvouched source %q", c.svc, c.port, s.IDs)
				}
			}
		}
		if n := metric(t, nil, "http://"+m.serverAdmin+"/metrics", "fogmesh_agent_authz_unvouched_source_total"); n <= unvouched {
			t.Errorf("unvouched sources counted %v before and %v after", unvouched, n)
		}
	})

	t.Run("slow clients on the auto port", func(t *testing.T) {
		// A client that waits before its first byte, or pauses inside the
		// method, outlasts the source agent's detection window: the source
		// relays the connection as TCP. Its bytes are still HTTP, and the
		// workload must see the stream's vouched identity only, never the
		// identity or X-Forwarded-For the client wrote. The pause ends
		// after the destination agent has dialed the workload (so the
		// source has decided) plus longer than a detection window.
		auto := netip.AddrPortFrom(m.open.Addr(), 18084).String()
		const forgedXFF = "203.0.113.9"
		for _, c := range []struct {
			name, src, claim string
			first            string // sent before the pause
			pause            time.Duration
			want             []string
		}{
			{"frontend silent, claims admin", dpFrontend, "spiffe://fogmesh.local/ns/e2e/sa/admin", "", 700 * time.Millisecond, []string{dpFrontendID}},
			{"frontend G pause, claims guest", dpFrontend, dpGuestID, "G", 700 * time.Millisecond, []string{dpFrontendID}},
			{"nobody silent, claims frontend", dpNobody, dpFrontendID, "", 700 * time.Millisecond, nil},
			{"nobody G pause, claims frontend", dpNobody, dpFrontendID, "G", 700 * time.Millisecond, nil},
			// Scenario B: the source calls it TCP, the destination sees
			// HTTP at once.
			{"nobody silent then quick, claims frontend", dpNobody, dpFrontendID, "", 0, nil},
		} {
			t.Run(c.name, func(t *testing.T) {
				path := "/slow/" + strings.ReplaceAll(c.name, " ", "-")
				before := m.openConns.Load()
				d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(c.src)}}
				conn, err := d.Dial("tcp", auto)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(15 * time.Second))
				req := "GET " + path + " HTTP/1.1\r\nHost: open\r\nX-Fogmesh-Source-Id: " + c.claim +
					"\r\nX-Forwarded-For: " + forgedXFF + "\r\nConnection: close\r\n\r\n"
				io.WriteString(conn, c.first)
				// The destination agent dials the workload once the source
				// agent has given up detecting and opened the stream.
				eventually(t, 10*time.Second, "the source agent never relayed the connection", func() bool { return m.openConns.Load() > before })
				if c.pause > 0 {
					time.Sleep(c.pause) // the slow client under test, not synchronisation
				}
				io.WriteString(conn, req[len(c.first):])
				resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
				if err != nil {
					t.Fatalf("response: %v", err)
				}
				resp.Body.Close()
				got := m.openEcho.reached(path)
				if resp.StatusCode != 200 || len(got) != 1 {
					t.Fatalf("%s; the workload saw %v", resp.Status, got)
				}
				if !slices.Equal(got[0].IDs, c.want) {
					t.Errorf("claiming %s: the workload saw identity %q, want %q", c.claim, got[0].IDs, c.want)
				}
				if slices.Contains(got[0].XFF, forgedXFF) {
					t.Errorf("the workload saw the client's X-Forwarded-For %q", got[0].XFF)
				}
			})
		}
	})

	t.Run("open service semantics", func(t *testing.T) {
		// Across the two agents, served per request by the server node's
		// agent: a large body both ways with a trailer, and an upgrade.
		open := "http://" + m.open.String()
		body := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
		resp, err := http.Post(open+"/body", "application/octet-stream", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(got) != body || resp.Trailer.Get("X-Length") != strconv.Itoa(len(body)) {
			t.Errorf("1 MiB echo: %v, %d bytes back (equal %v), trailer %q", err, len(got), string(got) == body, resp.Trailer.Get("X-Length"))
		}
		// The frontend's upgrade request, with a forged identity: the
		// agents hand upgrades to another HTTP stack than plain requests.
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(dpFrontend)}}
		conn, err := d.Dial("tcp", m.open.String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "GET /upgrade HTTP/1.1\r\nHost: open\r\nConnection: Upgrade\r\nUpgrade: echo\r\nX-Fogmesh-Source-Id: "+dpGuestID+"\r\n\r\n")
		br := bufio.NewReader(conn)
		if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		io.WriteString(conn, "ping")
		b := make([]byte, 4)
		if _, err := io.ReadFull(br, b); err != nil || string(b) != "ping" {
			t.Errorf("echo over the upgraded connection: %q %v", b, err)
		}
		if got := m.openEcho.reached("/upgrade"); len(got) != 1 || !slices.Equal(got[0].IDs, []string{dpFrontendID}) {
			t.Errorf("upgrade request (forged guest): the workload saw %v", got)
		}
		// Bytes that are no HTTP on the auto port pass both agents as they
		// are: the HTTP workload answers them 400.
		raw, err := net.DialTimeout("tcp", netip.AddrPortFrom(m.open.Addr(), 18084).String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(raw, "\x00\x01 not http\r\n\r\n")
		if line, err := bufio.NewReader(raw).ReadString('\n'); err != nil || !strings.HasPrefix(line, "HTTP/1.1 400") {
			t.Errorf("raw bytes on the auto port: %q %v", line, err)
		}
		// Expect: 100-continue, also handed over, with a forged identity.
		r := curl(t, dpFrontend, "http://"+m.open.String()+"/continue", "-H", "Expect: 100-continue", "-H", "X-Fogmesh-Source-Id: "+dpGuestID, "--data-binary", "body")
		if r.code != 200 || !slices.Equal(seenIDs(t, r), []string{dpFrontendID}) {
			t.Errorf("100-continue (forged guest): %d %s", r.code, r.body)
		}
	})

	t.Run("concurrent clients keep their identities", func(t *testing.T) {
		// Pooled connections between the agents carry the requests of
		// every client: each request keeps its own client's identity and
		// decision, denied POST bodies included, on keep-alive connections.
		var wg sync.WaitGroup
		errs := make(chan string, 200)
		for w := range 4 {
			src, want := dpFrontend, http.StatusOK
			if w%2 == 1 {
				src, want = dpGuest, http.StatusForbidden
			}
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 1}}
			t.Cleanup(c.CloseIdleConnections)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 20 {
					path := fmt.Sprintf("/api/c%d/%d", w, i)
					resp, err := c.Post(web+path, "text/plain", strings.NewReader(strings.Repeat("x", 1000*i)))
					if err != nil {
						errs <- fmt.Sprintf("%s %s: %v", src, path, err)
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != want {
						errs <- fmt.Sprintf("%s %s: %s %q, want %d", src, path, resp.Status, b, want)
					} else if want == http.StatusOK && !strings.Contains(string(b), `"ids":["`+dpFrontendID+`"]`) {
						errs <- fmt.Sprintf("%s %s: the workload saw %s", src, path, b)
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}
	})

	t.Run("accounted", func(t *testing.T) {
		// The server node's agent decided every request above: its metrics
		// count the denials and its audit log records them.
		for svc, min := range map[string]float64{"e2e/web": 12 + 4, "e2e/rpc": 7, "e2e/broker": 3} {
			if n := denials(t, m.serverAdmin, svc); n < min {
				t.Errorf("server agent counted %v denials for %s, want at least %v", n, svc, min)
			}
			if n := denials(t, m.clientAdmin, svc); n != 0 {
				t.Errorf("client agent counted %v denials for %s: it has no endpoint of it", n, svc)
			}
		}
		for _, want := range []struct{ actor, action, object string }{
			{dpFrontendID, "GET /api/admin/keys/h1", "e2e/web:http"},
			{dpGuestID, "GET /api/guest-forged/h2c", "e2e/web:http"},
			{"node:client", "GET /api/nobody-forged/h1", "e2e/web:http"},
			{dpFrontendID, "POST /grpc.health.v1.Health/Watch", "e2e/rpc:grpc"},
			{dpGuestID, "POST /grpc.health.v1.Health/Check", "e2e/rpc:grpc"},
			{dpFrontendID, "mqtt sensors/a/humidity", "e2e/broker:mqtt"},
			{dpFrontendID, "mqtt alerts/#", "e2e/broker:mqtt"},
			{dpGuestID, "connect", "e2e/broker:mqtt"},
		} {
			eventually(t, 10*time.Second, fmt.Sprintf("no audit record of %s denied %q on %s", want.actor, want.action, want.object), func() bool {
				return auditDenied(t, m.serverDir, want.actor, want.action, want.object)
			})
		}
		// The whole chain reaches the control plane over the mTLS sync
		// stream, where it verifies.
		records := regexp.MustCompile(`server \(node\): (\d+) records`)
		var out string
		eventually(t, 15*time.Second, "the control plane's copy of the server's audit chain lacks the denials", func() bool {
			var code int
			out, code = run(t, append([]string{"audit", "verify", "--node", "server"}, m.admin...)...)
			n := 0
			if mm := records.FindStringSubmatch(out); mm != nil {
				n, _ = strconv.Atoi(mm[1])
			}
			return code == 0 && strings.Contains(out, "intact") && n == auditRecords(t, m.serverDir)
		})
	})
	t.Run("revoked client node", func(t *testing.T) {
		// Last: revoking the client node ends its pooled HTTP connections
		// through the server node, open ones included.
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(dpFrontend)}}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
		t.Cleanup(c.CloseIdleConnections)
		for _, u := range []string{web + "/api/before-revoke", "http://" + m.open.String() + "/before-revoke"} {
			resp, err := c.Get(u)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("before the revocation: %v %v", resp, err)
			}
			resp.Body.Close()
		}
		if out, code := run(t, append([]string{"node", "revoke", "client"}, m.admin...)...); code != 0 {
			t.Fatalf("node revoke: %d %s", code, out)
		}
		eventually(t, 15*time.Second, "the revoked node still reaches the server node's workloads", func() bool {
			for _, u := range []string{web + "/api/after-revoke", "http://" + m.open.String() + "/after-revoke"} {
				if resp, err := c.Get(u); err == nil {
					resp.Body.Close()
					if resp.StatusCode == 200 {
						return false
					}
				}
			}
			return true
		})
		for _, x := range []struct {
			url, path string
			echo      *identityEcho
		}{{web, "/api/revoked", m.webEcho}, {"http://" + m.open.String(), "/revoked", m.openEcho}} {
			if resp, err := c.Get(x.url + x.path); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					t.Errorf("%s after the revocation: %s", x.path, resp.Status)
				}
			}
			if got := x.echo.reached(x.path); len(got) != 0 {
				t.Errorf("%s reached the workload after the revocation: %v", x.path, got)
			}
		}
	})

	if t.Failed() {
		t.Logf("server agent log:\n%s\nclient agent log:\n%s", m.serverLog, m.clientLog)
	}
}
