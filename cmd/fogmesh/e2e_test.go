package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/fogmesh/fogmesh/internal/agent"
	"github.com/fogmesh/fogmesh/internal/audit"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// These tests run the real binary as a user would: separate processes,
// signals, exit codes, files on disk.

var fogmeshBin string

func TestMain(m *testing.M) {
	// The race runtime sleeps 1 s before a process exits (GORACE's
	// atexit_sleep_ms, for races at exit), and these tests start and end
	// hundreds of race-built processes: a third of the package's time.
	// A race found while a process runs is still reported.
	if g := os.Getenv("GORACE"); !strings.Contains(g, "atexit_sleep_ms") {
		os.Setenv("GORACE", strings.TrimSpace(g+" atexit_sleep_ms=0"))
	}
	dir, err := os.MkdirTemp("", "fogmesh-e2e")
	if err != nil {
		panic(err)
	}
	fogmeshBin = filepath.Join(dir, "fogmesh")
	if b := os.Getenv(e2eBinEnv); b != "" {
		fogmeshBin = b // a test re-run in its own network namespace (inNetns)
	} else if out, err := exec.Command("go", "build", "-race", "-o", fogmeshBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// any0 is what a test gives every listen address of a process it starts:
// the kernel picks the port, and the process reports it in its -addr-file
// (startAddrs). A port picked by listening and closing is never handed to a
// child: another test's socket can take it in between.
const any0 = "127.0.0.1:0"

// closedAddr is an address where nothing listens, for tests of a refused
// connection: a listener bound and closed at once.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", any0)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startAddrs starts the binary with -addr-file and waits until the process
// has bound its listeners and written their addresses; it fails the test
// at once, with the output, if the process exits first.
func startAddrs(t *testing.T, args ...string) (*proc, map[string]string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "addrs.json")
	p := start(t, append(args, "-addr-file", path)...)
	return p, p.waitAddrs(t, path)
}

// restartAddrs is startAddrs for a process started again on an address it
// held before, because others must find it there (the sync address agents
// and regions dial); addr is that address, named in args too. The port may
// be held by another socket for a while: a start that exits with "address
// already in use" is tried again until testenv.Rebind gives up. Every other
// address in args is any0, read back from the map.
func restartAddrs(t *testing.T, addr string, args ...string) (*proc, map[string]string) {
	t.Helper()
	var p *proc
	var addrs map[string]string
	testenv.Rebind(t, addr, func() error {
		path := filepath.Join(t.TempDir(), "addrs.json")
		p = start(t, append(args, "-addr-file", path)...)
		var err error
		addrs, err = p.addrsOrExit(path)
		return err
	})
	return p, addrs
}

// waitAddrs reads the -addr-file at path once the process has written it.
func (p *proc) waitAddrs(t *testing.T, path string) map[string]string {
	t.Helper()
	addrs, err := p.addrsOrExit(path)
	if err != nil {
		t.Fatal(err)
	}
	return addrs
}

// addrsOrExit is waitAddrs returning the error: the process exited first
// (wrapping syscall.EADDRINUSE when its output says the address was in
// use), wrote no addresses in 30 s, or wrote a bad file.
func (p *proc) addrsOrExit(path string) (map[string]string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(path); err == nil {
			var addrs map[string]string
			if err := json.Unmarshal(b, &addrs); err != nil {
				return nil, fmt.Errorf("addr-file %s: %w", path, err)
			}
			return addrs, nil
		}
		select {
		case <-p.done:
			out := p.out.String()
			if strings.Contains(out, "address already in use") {
				return nil, fmt.Errorf("process exited before writing its addresses (%w):\n%s", syscall.EADDRINUSE, out)
			}
			return nil, fmt.Errorf("process exited before writing its addresses:\n%s", out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no addresses written in 30 s:\n%s", p.out)
		}
	}
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	out  *lockedBuffer
}

// start runs the binary; the test's cleanup kills it if still running.
func start(t *testing.T, args ...string) *proc {
	t.Helper()
	return startCmd(t, fogmeshBin, args...)
}

// stopsOnSIGTERM sends p SIGTERM and fails the test unless it exits 0
// within d (graceful shutdown: the exit code means success).
func (p *proc) stopsOnSIGTERM(t *testing.T, what string, d time.Duration) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("%s still running %v after SIGTERM:\n%s", what, d, p.out)
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("%s exit %d after SIGTERM:\n%s", what, code, p.out)
	}
}

// startCmd runs any program; the test's cleanup kills it if still running.
func startCmd(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startExec(t, exec.Command(name, args...))
}

// startExec starts cmd with its output captured; the test's cleanup kills
// it if still running.
func startExec(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), out: out}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// lockedBuffer is safe for several writing goroutines.
type lockedBuffer = testenv.Buffer

func (p *proc) kill9(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(fogmeshBin, args...)
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never became healthy", url)
}

// waitProcHTTP is waitHTTP for a process we started: if the process exits
// first, the test fails at once with its output.
func waitProcHTTP(t *testing.T, p *proc, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("process exited before %s answered:\n%s", url, p.out)
		default:
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never became healthy; output:\n%s", url, p.out)
}

const servicesYAML = `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: hello, namespace: demo}
spec:
  ports: [{name: http, port: 19080, protocol: http}]
---
apiVersion: fogmesh.io/v1alpha1
kind: Endpoint
metadata: {name: static-1, namespace: demo}
spec: {service: hello, address: "%s", ports: [{name: http, port: %d}]}
`

// TestControlSIGKILLLosesNothing, and the agent serving from its cache after
// a SIGKILL while the control plane is down.
func TestKillNineControlAndAgent(t *testing.T) {
	state := t.TempDir()
	cp, ca := startAddrs(t, "control", "-insecure", "-state-dir", state, "-admin-addr", any0, "-sync-addr", any0, "-heartbeat-interval", "500ms")
	admin, syncAddr := ca["admin"], ca["sync"]
	server := "http://" + admin
	waitHTTP(t, server+"/healthz")

	// A static endpoint: a real HTTP server the agent dials directly.
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "static backend\n") })}
	bl, _ := net.Listen("tcp", "127.0.0.1:0")
	go backend.Serve(bl)
	defer backend.Close()
	doc := filepath.Join(t.TempDir(), "svc.yaml")
	os.WriteFile(doc, []byte(fmt.Sprintf(servicesYAML, "127.0.0.1", bl.Addr().(*net.TCPAddr).Port)), 0o644)
	if out, code := run(t, "apply", "-server", server, "-f", doc); code != 0 || !strings.Contains(out, "service/demo/hello applied") {
		t.Fatalf("apply: %d %s", code, out)
	}

	// Back on new ports (no agent has the old ones yet): the old ones may
	// be another socket's by now.
	cp.kill9(t)
	cp, ca = startAddrs(t, "control", "-insecure", "-state-dir", state, "-admin-addr", any0, "-sync-addr", any0, "-heartbeat-interval", "500ms")
	admin, syncAddr = ca["admin"], ca["sync"]
	server = "http://" + admin
	waitHTTP(t, server+"/healthz")
	out, code := run(t, "get", "services", "-server", server, "-o", "json")
	if code != 0 || !strings.Contains(out, `"vip": "127.77.0.1"`) {
		t.Fatalf("service lost after SIGKILL: %d %s", code, out)
	}
	out, _ = run(t, "get", "endpoints", "-server", server)
	if !strings.Contains(out, "static-1") {
		t.Fatalf("endpoint lost after SIGKILL: %s", out)
	}

	agentState := t.TempDir()
	agentArgs := []string{"agent", "-insecure", "-name", "edge-1", "-site", "shop-1", "-region", "east", "-control", syncAddr,
		"-state-dir", agentState, "-admin-addr", any0, "-dns-addr", any0, "-mesh-addr", any0,
		"-vip-range", "127.120.0.0/16"}
	ag, aa := startAddrs(t, agentArgs...)
	agentAdmin := aa["admin"]
	waitHTTP(t, "http://"+agentAdmin+"/healthz")
	vipURL := "http://127.120.0.1:19080/"
	waitHTTP(t, vipURL)
	out, _ = run(t, "get", "nodes", "-server", server)
	if !strings.Contains(out, "edge-1") || !strings.Contains(out, "true") {
		t.Fatalf("node not registered/ready: %s", out)
	}

	// Control plane down, agent SIGKILLed and restarted: it serves from cache.
	cp.kill9(t)
	ag.kill9(t)
	start(t, agentArgs...)
	waitHTTP(t, vipURL)
	resp, err := http.Get(vipURL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "static backend\n" {
		t.Fatalf("offline agent answered %q", b)
	}
}

// TestRestartOnAHeldAddress: a control plane started on an address another
// socket holds exits saying so, which restartAddrs takes for "try again";
// once the holder lets go it binds that same address, its admin port the
// kernel's pick.
func TestRestartOnAHeldAddress(t *testing.T) {
	holder, err := net.Listen("tcp", any0)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	held := holder.Addr().String()
	args := []string{"control", "-insecure", "-state-dir", t.TempDir(), "-admin-addr", any0, "-sync-addr", held}
	path := filepath.Join(t.TempDir(), "addrs.json")
	p := start(t, append(args, "-addr-file", path)...)
	if _, err := p.addrsOrExit(path); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("start on a held address: %v, want EADDRINUSE", err)
	}
	holder.Close()
	cp, ca := restartAddrs(t, held, args...)
	if ca["sync"] != held {
		t.Fatalf("restarted on %s, want %s", ca["sync"], held)
	}
	waitProcHTTP(t, cp, "http://"+ca["admin"]+"/healthz")
}

func TestSIGTERMIsGraceful(t *testing.T) {
	cp, ca := startAddrs(t, "control", "-insecure", "-state-dir", t.TempDir(), "-admin-addr", any0, "-sync-addr", any0)
	admin := ca["admin"]
	waitHTTP(t, "http://"+admin+"/healthz")
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(m), "fogmesh_control_store_revision") {
		t.Fatalf("metrics: %s", m)
	}
	cp.stopsOnSIGTERM(t, "control", 10*time.Second)
}

func TestBadConfigAndInputExitCodes(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(s), 0o644)
		return p
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown agent field", []string{"agent", "-config", write("a1.yaml", "node: {name: n1, site: s, region: r}\nmeshAdress: 1.2.3.4:1\n")}, "meshAdress"},
		{"bad agent vip range", []string{"agent", "-config", write("a2.yaml", "node: {name: n1, site: s, region: r}\nvipRange: 10.0.0.0/99\n"), "-state-dir", dir}, "vipRange"},
		{"bad node name", []string{"agent", "-name", "Bad_Name", "-site", "s", "-region", "r", "-state-dir", dir}, "metadata.name"},
		{"bad workload port", []string{"agent", "-config", write("a3.yaml", "node: {name: n1, site: s, region: r}\nworkloads: [{service: x, ports: [{port: 99999}]}]\n"), "-state-dir", dir}, "workloads[0]"},
		{"wrong type", []string{"control", "-config", write("c1.yaml", "adminAddr: [1]\n")}, "adminAddr"},
		{"bad apply doc", []string{"apply", "-f", write("d1.yaml", "apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 0}]}\n")}, "spec.ports[0].port"},
		{"unknown get kind", []string{"get", "pods"}, "unknown resource"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, code := run(t, c.args...)
			if code != 2 || !strings.Contains(out, c.want) {
				t.Fatalf("exit %d, output %q; want exit 2 naming %q", code, out, c.want)
			}
		})
	}
	if out, code := run(t, "version"); code != 0 || !strings.HasPrefix(out, "fogmesh v") {
		t.Fatalf("version: %d %s", code, out)
	}
	// A control plane that is not there: a runtime failure, exit 1.
	if _, code := run(t, "get", "nodes", "-server", "http://"+closedAddr(t)); code != 1 {
		t.Fatalf("unreachable server: exit %d", code)
	}
}

// TestCLIRoundTrip: apply, get in each format, delete.
func TestCLIRoundTrip(t *testing.T) {
	_, ca := startAddrs(t, "control", "-insecure", "-state-dir", t.TempDir(), "-admin-addr", any0, "-sync-addr", any0)
	server := "http://" + ca["admin"]
	waitHTTP(t, server+"/healthz")
	doc := filepath.Join(t.TempDir(), "svc.json")
	os.WriteFile(doc, []byte(`[{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"orders","namespace":"shop"},"spec":{"ports":[{"name":"grpc","port":9090,"protocol":"grpc"}]}}]`), 0o644)
	if out, code := run(t, "apply", "-server", server, "-f", doc); code != 0 {
		t.Fatal(out)
	}
	out, _ := run(t, "get", "svc", "-server", server)
	if !strings.Contains(out, "orders") || !strings.Contains(out, "grpc:9090/grpc") {
		t.Fatalf("table: %s", out)
	}
	out, _ = run(t, "get", "services", "-server", server, "-o", "yaml")
	if !strings.Contains(out, "name: orders") {
		t.Fatalf("yaml: %s", out)
	}
	out, _ = run(t, "get", "services", "-server", server, "-o", "json", "-n", "shop")
	var items []map[string]any
	if err := json.Unmarshal([]byte(out), &items); err != nil || len(items) != 1 {
		t.Fatalf("json: %v %s", err, out)
	}
	if out, code := run(t, "delete", "service", "orders", "-n", "shop", "-server", server); code != 0 {
		t.Fatal(out)
	}
	if out, code := run(t, "delete", "service", "orders", "-n", "shop", "-server", server); code != 2 || !strings.Contains(out, "not found") {
		t.Fatalf("second delete: %d %s", code, out)
	}
}

// TestExamples runs the files in examples/ as the README tells users to.
func TestExamples(t *testing.T) {
	_, ca := startAddrs(t, "control", "-insecure", "-config", "../../examples/control.yaml", "-state-dir", t.TempDir(), "-admin-addr", any0, "-sync-addr", any0)
	server, syncAddr := "http://"+ca["admin"], ca["sync"]
	waitHTTP(t, server+"/healthz")
	if out, code := run(t, "apply", "-server", server, "-f", "../../examples/services.yaml"); code != 0 {
		t.Fatalf("apply examples/services.yaml: %s", out)
	}
	if out, code := run(t, "apply", "-server", server, "-f", "../../examples/egress-masking.yaml"); code != 0 || !strings.Contains(out, "service/shop/billing applied") {
		t.Fatalf("apply examples/egress-masking.yaml: %s", out)
	}
	out, code := run(t, "apply", "-server", server, "-f", "../../examples/istio-canary.yaml")
	if code != 0 || !strings.Contains(out, "route/shop/reviews applied") || !strings.Contains(out, "destinationpolicy/shop/reviews applied") ||
		strings.Contains(out, "fault is not supported") || strings.Contains(out, "mirror") ||
		!strings.Contains(out, "warning: document 2 (DestinationRule shop/reviews): spec.trafficPolicy.tls is not supported") {
		t.Fatalf("apply istio-canary.yaml: %d\n%s", code, out)
	}
	if out, _ := run(t, "get", "routes", "-server", server); !strings.Contains(out, "reviews") || !strings.Contains(out, "v1:90/v2:10; else -> 404") {
		t.Fatalf("get routes:\n%s", out)
	}
	if out, _ := run(t, "get", "dp", "-server", server, "-o", "yaml"); !strings.Contains(out, "balancer: least-conn") {
		t.Fatalf("get destinationpolicies:\n%s", out)
	}
	out, code = run(t, "apply", "-server", server, "-f", "../../examples/authz.yaml")
	if code != 0 || !strings.Contains(out, "authorizationpolicy/shop/default-deny applied") || !strings.Contains(out, "authorizationpolicy/shop/broker-topics applied") {
		t.Fatalf("apply authz.yaml: %d\n%s", code, out)
	}
	out, code = run(t, "apply", "-server", server, "-f", "../../examples/istio-authz.yaml")
	if code != 0 || !strings.Contains(out, "authorizationpolicy/shop/reviews-viewer applied") ||
		!strings.Contains(out, "spec.rules[1].from[0].source.requestPrincipals is not supported") ||
		!strings.Contains(out, "spec.mtls.mode PERMISSIVE cannot weaken fogmesh") {
		t.Fatalf("apply istio-authz.yaml: %d\n%s", code, out)
	}
	if out, _ := run(t, "get", "authorizationpolicies", "-server", server, "-n", "shop"); !strings.Contains(out, "orders-no-admin") ||
		!strings.Contains(out, "DENY") || !strings.Contains(out, "reviews-viewer") {
		t.Fatalf("get authorizationpolicies:\n%s", out)
	}
	if out, code := run(t, "delete", "-server", server, "-f", "../../examples/istio-authz.yaml"); code != 0 || !strings.Contains(out, "authorizationpolicies/shop/reviews-viewer deleted") {
		t.Fatalf("delete istio-authz.yaml: %d\n%s", code, out)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: fogmesh.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {rules: [{to: [{paths: ['a*b']}]}]}\n"), 0o644)
	if out, code := run(t, "apply", "-server", server, "-f", bad); code != 2 || !strings.Contains(out, "spec.rules[0].to[0].paths[0]") {
		t.Fatalf("apply of an invalid policy: %d\n%s", code, out)
	}
	_, aa := startAddrs(t, "agent", "-insecure", "-config", "../../examples/agent.yaml", "-control", syncAddr, "-state-dir", t.TempDir(),
		"-admin-addr", any0, "-dns-addr", any0, "-mesh-addr", any0, "-vip-range", "127.121.0.0/16")
	agentAdmin := aa["admin"]
	waitHTTP(t, "http://"+agentAdmin+"/healthz")
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := run(t, "get", "endpoints", "-server", server, "-n", "shop")
		if strings.Contains(out, "orders-edge-1") && strings.Contains(out, "orders-legacy") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent's workload never registered: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, _ = run(t, "routes", "-agent", "http://"+agentAdmin)
	if !strings.Contains(out, "orders-legacy") || !strings.Contains(out, "site") {
		t.Fatalf("routes: %s", out)
	}
}

// TestDevCtrlC: the demo starts, serves, and stops cleanly on SIGINT.
func TestDevCtrlC(t *testing.T) {
	p, addrs := startAddrs(t, "dev", "-base-port", "-1", "-vip-octet", "140", "-hello-port", "18090", "-state-dir", t.TempDir())
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(p.out.String(), "Ctrl-C stops everything") {
		select {
		case <-p.done:
			t.Fatalf("dev exited:\n%s", p.out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("dev did not start:\n%s", p.out)
		}
	}
	if addrs["vip"] != "127.140.0.1:18090" {
		t.Fatalf("demo VIP %q, want 127.140.0.1:18090", addrs["vip"])
	}
	resp, err := http.Get("http://127.140.0.1:18090/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "node=shop-1-a") {
		t.Fatalf("demo answered %q", b)
	}
	if out, code := run(t, "describe", "service", "hello", "-n", "demo", "-agent", "http://"+addrs["shop-1-a.admin"]); code != 0 ||
		!strings.Contains(out, "hello-shop-1-b  shop-1-b") || !strings.Contains(out, "Balancer:  edge-aware") ||
		!strings.Contains(out, "Names:     hello.demo.mesh hello.demo.svc.cluster.local\n") {
		t.Fatalf("describe: %d\n%s", code, out)
	}
	if out, code := run(t, "demo", "-demo", "http://"+addrs["demo"], "stop", "shop-1-a"); code != 0 {
		t.Fatal(out)
	}
	resp, err = http.Get("http://127.140.0.1:18090/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "node=shop-1-b") {
		t.Fatalf("after stop, demo answered %q", b)
	}
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatal("dev did not stop on Ctrl-C")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("dev exit %d:\n%s", code, p.out)
	}
	if c, err := net.Dial("tcp", "127.140.0.1:18090"); err == nil {
		c.Close()
		t.Fatal("VIP still listening after Ctrl-C")
	}
}

// TestAgentRegisterCLIAndSIGTERM: fogmesh register/deregister against a
// running agent binary, then SIGTERM exits 0.
func TestAgentRegisterCLIAndSIGTERM(t *testing.T) {
	p, aa := startAddrs(t, "agent", "-insecure", "-name", "solo", "-site", "s", "-region", "r", "-state-dir", t.TempDir(),
		"-admin-addr", any0, "-dns-addr", any0, "-mesh-addr", any0, "-vip-range", "127.138.0.0/16")
	agentURL := "http://" + aa["admin"]
	waitHTTP(t, agentURL+"/healthz")
	if out, code := run(t, "register", "-agent", agentURL, "-service", "db", "-n", "shop", "-port", "sql=5432", "-check", "none"); code != 0 || !strings.Contains(out, "db-solo registered") {
		t.Fatalf("register: %d %s", code, out)
	}
	if out, code := run(t, "register", "-agent", agentURL, "-service", "db", "-port", "sql=0"); code != 2 || !strings.Contains(out, "port") {
		t.Fatalf("bad register: %d %s", code, out)
	}
	if out, code := run(t, "deregister", "-agent", agentURL, "db-solo"); code != 0 {
		t.Fatal(out)
	}
	if out, code := run(t, "deregister", "-agent", agentURL, "db-solo"); code != 2 || !strings.Contains(out, "not found") {
		t.Fatalf("second deregister: %d %s", code, out)
	}
	resp, err := http.Get(agentURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"fogmesh_agent_active_connections", "fogmesh_dns_queries_total", "fogmesh_mesh_streams_total"} {
		if !strings.Contains(string(m), name) {
			t.Errorf("metrics lack %s", name)
		}
	}
	p.stopsOnSIGTERM(t, "agent", 10*time.Second)
}

// TestControlAdminHostileInput: garbage and a slow sender on the admin port
// do not stop the control plane from serving.
func TestControlAdminHostileInput(t *testing.T) {
	_, ca := startAddrs(t, "control", "-insecure", "-state-dir", t.TempDir(), "-admin-addr", any0, "-sync-addr", any0)
	admin := ca["admin"]
	waitHTTP(t, "http://"+admin+"/healthz")
	slow, err := net.Dial("tcp", admin)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	slow.Write([]byte("POST /v1/apply HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n")) // and nothing more
	for _, b := range []string{"\x16\x03\x01\x00garbage\r\n\r\n", "GET /v1/nodes HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", strings.Repeat("X", 1<<20)} {
		c, err := net.Dial("tcp", admin)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(b))
		c.Close()
	}
	resp, err := http.Post("http://"+admin+"/v1/apply", "application/json", strings.NewReader(strings.Repeat("[", 5<<20)))
	if err == nil {
		if resp.StatusCode != http.StatusRequestEntityTooLarge && resp.StatusCode != 400 {
			t.Errorf("oversize body: %s", resp.Status)
		}
		resp.Body.Close()
	}
	waitHTTP(t, "http://"+admin+"/healthz")
	// The slow sender is dropped after the header timeout (5 s).
	slow.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(slow); err != nil {
		t.Fatalf("slow sender not dropped: %v", err)
	}
}

// TestNodeKilledUnderLoad: steady GET load through one agent to two nodes
// of the same site; one node's agent is killed with SIGKILL while requests
// are in flight on it. In-flight idempotent requests are retried on the
// other endpoint and new ones fail over at connect: zero failed requests.
func TestNodeKilledUnderLoad(t *testing.T) {
	cl := startCluster(t, "steady", 19040, "-heartbeat-interval", "500ms")
	victim, _ := cl.agent("victim", 124, nameServer(t, "victim", 20*time.Millisecond), false)
	cl.agent("survivor", 125, nameServer(t, "survivor", 20*time.Millisecond), false)
	_, clientAdmin := cl.agent("loadgen", 126, 0, false)
	cl.waitRoutes(clientAdmin, 2)
	url := "http://127.126.0.1:19040/"
	waitHTTP(t, url)

	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	var mu sync.Mutex
	var failed []string
	counts := map[string]int{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5000; i++ { // bounded; the test stops it earlier
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get(url)
				if err != nil {
					mu.Lock()
					failed = append(failed, err.Error())
					mu.Unlock()
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				mu.Lock()
				if resp.StatusCode != 200 {
					failed = append(failed, fmt.Sprintf("%s: %s", resp.Status, b))
				} else {
					counts[string(b)]++
				}
				mu.Unlock()
			}
		}()
	}
	served := func(name string) int {
		mu.Lock()
		defer mu.Unlock()
		return counts[name]
	}
	eventually(t, 15*time.Second, "the victim never served", func() bool { return served("victim") >= 20 })
	before := served("victim")
	victim.kill9(t)
	// Run on until the survivor has served 400 requests after the kill.
	after := served("survivor")
	eventually(t, 30*time.Second, "the survivor served too little after the kill", func() bool { return served("survivor") >= after+400 })
	close(stop)
	wg.Wait()
	t.Logf("requests: victim %d (before SIGKILL %d), survivor %d, failed %d", counts["victim"], before, counts["survivor"], len(failed))
	if before == 0 {
		t.Fatal("the victim served nothing before it died; the test proves nothing")
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d requests failed, first: %s", len(failed), len(failed)+counts["victim"]+counts["survivor"], failed[0])
	}
}

// TestSilentNodeDeathGossip: a serving node is frozen with SIGSTOP (no
// FIN, no RST: what a power cut looks like from the network) under steady
// load. Its site peers' gossip declares it dead in under a second, the
// client's agent stops routing to it and fails its in-flight requests over:
// no request fails, none waits for a timeout, and the control plane (5 s
// heartbeats, 15 s timeout) plays no part.
func TestSilentNodeDeathGossip(t *testing.T) {
	cl := startCluster(t, "quiet", 19041) // default 5 s heartbeats: the control plane is too slow to matter
	victim, _ := cl.agent("frozen", 127, nameServer(t, "frozen", 10*time.Millisecond), true)
	t.Cleanup(func() { victim.cmd.Process.Signal(syscall.SIGCONT) })
	cl.agent("awake", 128, nameServer(t, "awake", 10*time.Millisecond), true)
	watcher, clientAdmin := cl.agent("watcher", 129, 0, true)
	cl.waitRoutes(clientAdmin, 2)
	url := "http://127.129.0.1:19041/"
	waitHTTP(t, url)
	eventually(t, 15*time.Second, "the watcher's gossip never saw its 2 site peers", func() bool {
		return metric(t, nil, "http://"+clientAdmin+"/metrics", "fogmesh_agent_gossip_members") == 3
	})

	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	type result struct {
		at, took time.Duration
		body     string
		err      error
	}
	var mu sync.Mutex
	var results []result
	t0 := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 3000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				s := time.Now()
				resp, err := c.Get(url)
				r := result{at: s.Sub(t0), err: err}
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					r.body = string(b)
					if resp.StatusCode != 200 {
						r.err = fmt.Errorf("%s: %s", resp.Status, b)
					}
				}
				r.took = time.Since(s)
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		}()
	}
	count := func(cond func(r result) bool) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, r := range results {
			if cond(r) {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(15 * time.Second); count(func(r result) bool { return r.body == "frozen" }) < 20; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			close(stop)
			wg.Wait()
			t.Fatalf("after 15s: the node to freeze never served (%d requests, %d by it)\nwatcher log:\n%s",
				len(results), count(func(r result) bool { return r.body == "frozen" }), watcher.out)
		}
	}
	frozenAt := time.Since(t0)
	victim.cmd.Process.Signal(syscall.SIGSTOP)
	// Run on until 200 requests started more than a second after the
	// freeze have finished (bounded by the deadline).
	eventually(t, 30*time.Second, "too few requests finished after the freeze", func() bool {
		return count(func(r result) bool { return r.at > frozenAt+time.Second }) >= 200
	})
	close(stop)
	wg.Wait()
	var failed, toFrozenAfter, before int
	var slowest time.Duration
	var errs []string
	for _, r := range results {
		if r.err != nil {
			failed++
			if len(errs) < 10 {
				errs = append(errs, fmt.Sprintf("at %v (freeze at %v, took %v): %v", r.at, frozenAt, r.took, r.err))
			}
			continue
		}
		slowest = max(slowest, r.took)
		if r.body == "frozen" && r.at < frozenAt {
			before++
		}
		// The frozen node's workload is reached only through its frozen
		// agent, so it can never answer: a request routed to it after
		// the gossip verdict shows as one that waited for a failover.
		// Requests take 10 ms; one started a second after the freeze
		// that takes over a second was routed to the frozen node.
		if r.at > frozenAt+time.Second && r.took > time.Second {
			toFrozenAfter++
		}
	}
	t.Logf("%d requests; %d answered by the node before it froze; slowest %v; failed %d; stuck on it >1 s after: %d",
		len(results), before, slowest, failed, toFrozenAfter)
	if before == 0 {
		t.Fatal("the frozen node served nothing before: the test proves nothing")
	}
	if failed > 0 || toFrozenAfter > 0 {
		t.Fatalf("failed %d, routed to the frozen node more than 1 s after it froze: %d\n%s\nwatcher log:\n%s", failed, toFrozenAfter, strings.Join(errs, "\n"), watcher.out)
	}
	// README: death seen in under a second, in-flight attempts then fail
	// over at once; the slowest request may add one request's time and
	// scheduling on a busy machine to that second.
	if slowest > 1500*time.Millisecond {
		t.Fatalf("a request waited %v (README: in-flight requests fail over within 1.5 s): the frozen node was not routed around in time (frozen at %v)\nwatcher log:\n%s", slowest, frozenAt, watcher.out)
	}
}

// nameServer serves its name after delay on a loopback port.
func nameServer(t *testing.T, name string, delay time.Duration) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(delay) // keeps requests in flight
		io.WriteString(w, name)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// cluster is a control plane process with one round-robin HTTP service,
// and agent processes of one site.
type cluster struct {
	t                 *testing.T
	service, syncAddr string
	admin             []string // -server, -ca, -token flags of admin verbs
	ctl               *proc    // the control plane process
	state, adminAddr  string   // its state directory and admin address
}

func startCluster(t *testing.T, service string, port int, controlFlags ...string) *cluster {
	t.Helper()
	return startClusterProto(t, service, "http", port, controlFlags...)
}

// startClusterProto is startCluster with the service port's protocol.
func startClusterProto(t *testing.T, service, protocol string, port int, controlFlags ...string) *cluster {
	t.Helper()
	state := t.TempDir()
	p, ca := startAddrs(t, append([]string{"control", "-state-dir", state, "-admin-addr", any0, "-sync-addr", any0}, controlFlags...)...)
	admin, syncAddr := ca["admin"], ca["sync"]
	flags := secureAdmin(t, p, state, admin)
	doc := filepath.Join(t.TempDir(), "svc.yaml")
	os.WriteFile(doc, []byte(fmt.Sprintf("apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: %s, namespace: demo}\nspec:\n  ports: [{name: http, port: %d, protocol: %s}]\n  balancer: round-robin\n", service, port, protocol)), 0o644)
	if out, code := run(t, append([]string{"apply", "-f", doc}, flags...)...); code != 0 {
		t.Fatal(out)
	}
	return &cluster{t: t, service: service, syncAddr: syncAddr, admin: flags, ctl: p, state: state, adminAddr: admin}
}

// agent starts an agent process in site s1 with VIPs in 127.<octet>/16 and,
// if workloadPort > 0, a workload of the service; it returns the process
// and its admin address.
func (c *cluster) agent(name string, octet, workloadPort int, gossip bool) (*proc, string) {
	c.t.Helper()
	a := c.agentProc(name, octet, workloadPort, gossip)
	return a.p, a.admin
}

// agentProc is a running agent of a cluster.
type agentProc struct {
	p                 *proc
	admin, dir, confg string // admin address, state directory, config file
	addrs             map[string]string
}

// restart kills the agent with SIGKILL and starts it again from its state
// directory (no join token is needed any more: it has its certificate).
func (a *agentProc) restart(t *testing.T) {
	t.Helper()
	a.p.kill9(t)
	a.p, a.addrs = startAddrs(t, "agent", "-config", a.confg)
	a.admin = a.addrs["admin"]
	waitProcHTTP(t, a.p, "http://"+a.admin+"/healthz")
}

// agentProc starts an agent process like agent and returns it with its
// state directory and config file.
func (c *cluster) agentProc(name string, octet, workloadPort int, gossip bool) *agentProc {
	t := c.t
	t.Helper()
	dir := t.TempDir()
	tok, code := run(t, append([]string{"token", "create", "-site", "s1", "-ttl", "5m"}, c.admin...)...)
	if code != 0 {
		t.Fatalf("token create: %s", tok)
	}
	cfg := fmt.Sprintf("node: {name: %s, site: s1, region: r1}\ncontrol: [%q]\nmeshAddr: %q\ndnsAddr: %q\nadminAddr: %q\nvipRange: \"127.%d.0.0/16\"\nstateDir: %q\njoinToken: %q\n",
		name, c.syncAddr, any0, any0, any0, octet, dir, strings.TrimSpace(tok))
	if gossip {
		cfg += fmt.Sprintf("gossipAddr: %q\n", any0)
	}
	if workloadPort > 0 {
		cfg += fmt.Sprintf("workloads: [{service: %s, namespace: demo, ports: [{name: http, port: %d}]}]\n", c.service, workloadPort)
	}
	path := filepath.Join(dir, "agent.yaml")
	os.WriteFile(path, []byte(cfg), 0o644)
	p, addrs := startAddrs(t, "agent", "-config", path)
	waitProcHTTP(t, p, "http://"+addrs["admin"]+"/healthz")
	return &agentProc{p: p, admin: addrs["admin"], dir: dir, confg: path, addrs: addrs}
}

// waitRoutes waits until the agent at admin routes the service to n endpoints.
func (c *cluster) waitRoutes(admin string, n int) {
	t := c.t
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, _ := run(t, "routes", "-agent", "http://"+admin)
		if strings.Count(out, c.service+"-") == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent never learned %d endpoints:\n%s", n, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAuditVerifyCLI: fogmesh audit verify on real log files (exit 0
// intact, 1 tampered naming file:line and seq, 2 unreadable or bad usage),
// with checkpoint signatures, and against a control plane that was killed
// with SIGKILL between admin changes.
func TestAuditVerifyCLI(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	l, err := audit.Open(audit.Config{Dir: dir, Node: "edge-1", Signer: key, CheckpointEvery: 4, MaxFileBytes: 2048})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		l.Append(audit.Record{Kind: audit.KindAuthz, Actor: "spiffe://fogmesh.local/ns/a/sa/b", Action: "connect",
			Object: fmt.Sprintf("demo/svc-%d", i), Decision: audit.Deny, Reason: "policy demo/deny"})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := l.Files()
	if len(files) < 3 {
		t.Fatalf("want rotated files, got %v", files)
	}
	lastSeq, lastHash := l.Last()
	head := fmt.Sprintf("%d:%s", lastSeq, lastHash)
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pubPath := filepath.Join(t.TempDir(), "node.pub")
	os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	oder, _ := x509.MarshalPKIXPublicKey(&other.PublicKey)
	otherPath := filepath.Join(t.TempDir(), "other.pub")
	os.WriteFile(otherPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: oder}), 0o600)

	reversed := append([]string(nil), files...)
	slices.Reverse(reversed)
	out, code := run(t, append([]string{"audit", "verify", "--pubkey", pubPath, "--head", head}, reversed...)...)
	if code != 0 || !strings.Contains(out, "intact") || !strings.Contains(out, "25 records") || !strings.Contains(out, "5 signed") {
		t.Fatalf("intact set: exit %d\n%s", code, out)
	}
	if out, code := run(t, append([]string{"audit", "verify", "--pubkey", otherPath}, files...)...); code != 1 || !strings.Contains(out, "signature") {
		t.Fatalf("wrong key: exit %d\n%s", code, out)
	}
	// Edit one record of the second file.
	b, _ := os.ReadFile(files[1])
	lines := strings.SplitAfter(string(b), "\n")
	lines[1] = strings.Replace(lines[1], `"decision":"deny"`, `"decision":"allow"`, 1)
	os.WriteFile(files[1], []byte(strings.Join(lines, "")), 0o600)
	var seq uint64
	if r, _ := audit.DecodeLine([]byte(lines[1])); r != nil {
		seq = r.Seq
	}
	out, code = run(t, append([]string{"audit", "verify"}, files...)...)
	if want := fmt.Sprintf("%s:2: seq %d: edited", files[1], seq); code != 1 || !strings.Contains(out, want) || !strings.Contains(out, "TAMPERED") {
		t.Fatalf("edited: exit %d, want %q in\n%s", code, want, out)
	}
	if out, code := run(t, "audit", "verify", filepath.Join(dir, "missing.log")); code != 2 {
		t.Fatalf("missing file: exit %d\n%s", code, out)
	}
	for _, args := range [][]string{{"audit"}, {"audit", "verify"}, {"audit", "verify", "--cert", "a", "--pubkey", "b", "f"}, {"audit", "verify", "--node", "x", "f"}} {
		if out, code := run(t, args...); code != 2 {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
	}

	// A control plane killed between admin changes keeps a chain that
	// verifies after restart.
	state := t.TempDir()
	cp, ca := startAddrs(t, "control", "-insecure", "-state-dir", state, "-admin-addr", any0, "-sync-addr", any0)
	admin := ca["admin"]
	waitProcHTTP(t, cp, "http://"+admin+"/healthz")
	svc := filepath.Join(t.TempDir(), "svc.yaml")
	os.WriteFile(svc, []byte(fmt.Sprintf(servicesYAML, "127.0.0.1", 19999)), 0o600)
	if out, code := run(t, "apply", "-server", "http://"+admin, "-f", svc); code != 0 {
		t.Fatalf("apply: %d %s", code, out)
	}
	cp.kill9(t)
	cp, ca = startAddrs(t, "control", "-insecure", "-state-dir", state, "-admin-addr", any0, "-sync-addr", any0)
	admin = ca["admin"]
	waitProcHTTP(t, cp, "http://"+admin+"/healthz")
	if out, code := run(t, "delete", "-server", "http://"+admin, "service", "hello", "-n", "demo"); code != 0 {
		t.Fatalf("delete: %d %s", code, out)
	}
	out, code = run(t, "audit", "verify", "--all", "-server", "http://"+admin)
	if code != 0 || !strings.Contains(out, "control (control): 3 records, seq 1..3") || !strings.Contains(out, "intact") {
		t.Fatalf("control plane chain: exit %d\n%s", code, out)
	}
	if out, code := run(t, "audit", "verify", "--node", "nosuch", "-server", "http://"+admin); code != 2 {
		t.Fatalf("unknown node: exit %d\n%s", code, out)
	}
	// The files on disk verify too: unanchored on their own (exit 3),
	// intact against the head the control plane reports.
	ctlFiles, _ := filepath.Glob(filepath.Join(state, "audit", "control", "audit.log*"))
	if out, code := run(t, append([]string{"audit", "verify"}, ctlFiles...)...); code != 3 || !strings.Contains(out, "UNANCHORED") {
		t.Fatalf("control plane files without a head: exit %d\n%s", code, out)
	}
	resp, err := http.Get("http://" + admin + "/v1/audit/control")
	if err != nil {
		t.Fatal(err)
	}
	var chains struct {
		Chains []struct {
			LastSeq  uint64
			LastHash string
		}
	}
	json.NewDecoder(resp.Body).Decode(&chains)
	resp.Body.Close()
	if len(chains.Chains) != 1 {
		t.Fatalf("GET /v1/audit/control: %+v", chains)
	}
	ctlHead := fmt.Sprintf("%d:%s", chains.Chains[0].LastSeq, chains.Chains[0].LastHash)
	if out, code := run(t, append([]string{"audit", "verify", "--head", ctlHead}, ctlFiles...)...); code != 0 || !strings.Contains(out, "intact") {
		t.Fatalf("control plane files with its head: exit %d\n%s", code, out)
	}
}

// secureAdmin waits for a secure control plane's admin API (HTTPS, verified
// with the bundle it wrote) and returns the admin flags of the CLI: the
// server URL, the bundle and the bootstrap admin token.
func secureAdmin(t *testing.T, p *proc, state, admin string) []string {
	t.Helper()
	ca := filepath.Join(state, "ca.pem")
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(state, "admin.token")); err == nil {
			if b, err := os.ReadFile(ca); err == nil {
				pool := x509.NewCertPool()
				pool.AppendCertsFromPEM(b)
				c := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
				if resp, err := c.Get("https://" + admin + "/healthz"); err == nil {
					resp.Body.Close()
					break
				}
			}
		}
		select {
		case <-p.done:
			t.Fatalf("control exited:\n%s", p.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("secure control plane never answered:\n%s", p.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tok, err := os.ReadFile(filepath.Join(state, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return []string{"-server", "https://" + admin, "-ca", ca, "-token", strings.TrimSpace(string(tok))}
}

// TestSecureJoinAndTokens: real processes, secure by default. Admin verbs
// need a token (read-only may only read); an agent joins with a join token;
// a reused, unknown, malformed or wrong-site token makes the agent exit 2
// and leaves no certificate behind.
func TestSecureJoinAndTokens(t *testing.T) {
	state := t.TempDir()
	cp, ca := startAddrs(t, "control", "-state-dir", state, "-admin-addr", any0, "-sync-addr", any0)
	admin, syncAddr := ca["admin"], ca["sync"]
	flags := secureAdmin(t, cp, state, admin)
	if out, code := run(t, "get", "nodes", "-server", "https://"+admin, "-ca", flags[3]); code != 1 || !strings.Contains(out, "authentication required") {
		t.Fatalf("no token: %d %s", code, out)
	}
	ro, code := run(t, append([]string{"token", "create", "-kind", "admin", "-role", "read-only"}, flags...)...)
	if code != 0 {
		t.Fatal(ro)
	}
	roFlags := []string{"-server", flags[1], "-ca", flags[3], "-token", strings.TrimSpace(ro)}
	if out, code := run(t, append([]string{"get", "nodes"}, roFlags...)...); code != 0 {
		t.Fatalf("read-only get: %d %s", code, out)
	}
	doc := filepath.Join(t.TempDir(), "svc.yaml")
	os.WriteFile(doc, []byte("apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: x, namespace: demo}\nspec: {ports: [{name: http, port: 80}]}\n"), 0o644)
	if out, code := run(t, append([]string{"apply", "-f", doc}, roFlags...)...); code != 1 || !strings.Contains(out, "read-only") {
		t.Fatalf("read-only apply: %d %s", code, out)
	}

	tok, code := run(t, append([]string{"token", "create", "-site", "shop-1", "-ttl", "10m"}, flags...)...)
	if code != 0 {
		t.Fatal(tok)
	}
	tok = strings.TrimSpace(tok)
	agentArgs := func(name, site, token string) ([]string, string) {
		dir := t.TempDir()
		return []string{"agent", "-name", name, "-site", site, "-region", "east", "-control", syncAddr, "-join-token", token,
			"-state-dir", dir, "-admin-addr", any0, "-dns-addr", any0, "-mesh-addr", any0, "-vip-range", "127.122.0.0/16"}, dir
	}
	args, dir := agentArgs("edge-1", "shop-1", tok)
	p, aa := startAddrs(t, args...)
	waitProcHTTP(t, p, "http://"+aa["admin"]+"/healthz")
	for _, f := range []string{"node-key.pem", "node-cert.pem", "trust.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("agent state lacks %s", f)
		}
	}
	if fi, _ := os.Stat(filepath.Join(dir, "node-key.pem")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("node key mode %v", fi.Mode().Perm())
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := run(t, append([]string{"get", "nodes"}, flags...)...)
		if strings.Contains(out, "edge-1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("joined node never registered: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	wrongSite, code := run(t, append([]string{"token", "create", "-site", "shop-2"}, flags...)...)
	if code != 0 {
		t.Fatal(wrongSite)
	}
	for _, c := range []struct{ name, token, want string }{
		{"reused", tok, "already used"},
		{"malformed", "fmj1.nope", "bad token"},
		{"unknown", "fmj1.0123456789ab.0123456789abcdef0123456789abcdef." + tok[len(tok)-64:], "unknown token"},
		{"wrong site", strings.TrimSpace(wrongSite), "is for site shop-2"},
	} {
		args, dir := agentArgs("edge-2", "shop-1", c.token)
		out, code := run(t, args...)
		if code != 2 || !strings.Contains(out, c.want) {
			t.Errorf("%s token: exit %d, output %q; want exit 2 naming %q", c.name, code, out, c.want)
		}
		if _, err := os.Stat(filepath.Join(dir, "node-cert.pem")); err == nil {
			t.Errorf("%s token: a certificate was saved", c.name)
		}
	}
}

// TestWorkloadSVIDFromJoinedAgent: real processes, secure by default. An
// agent joins with a token; its workload, attested to this test's uid, gets
// an X.509-SVID through the SPIFFE Workload API socket (go-spiffe's own
// client), signed by the control plane's CA for exactly the workload's
// identity; the control plane's audit chain records the issue.
func TestWorkloadSVIDFromJoinedAgent(t *testing.T) {
	state := t.TempDir()
	cp, ca := startAddrs(t, "control", "-state-dir", state, "-admin-addr", any0, "-sync-addr", any0)
	admin, syncAddr := ca["admin"], ca["sync"]
	flags := secureAdmin(t, cp, state, admin)
	tok, code := run(t, append([]string{"token", "create", "-site", "shop-1", "-ttl", "10m"}, flags...)...)
	if code != 0 {
		t.Fatal(tok)
	}
	svcDoc := filepath.Join(t.TempDir(), "svc.yaml")
	os.WriteFile(svcDoc, []byte(`apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  ports: [{name: http, port: 80}]
  identity: {serviceAccounts: [orders-sa], sites: [shop-1]}
`), 0o600)
	if out, code := run(t, append([]string{"apply", "-f", svcDoc}, flags...)...); code != 0 {
		t.Fatalf("apply: %d %s", code, out)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`node: {name: edge-1, site: shop-1, region: east}
workloads:
  - service: orders
    namespace: shop
    serviceAccount: orders-sa
    ports: [{name: http, port: 1}]
    check: {type: none}
    attest: {uid: %d}
  - service: billing
    namespace: shop
    ports: [{name: http, port: 2}]
    check: {type: none}
`, os.Getuid())), 0o600)
	p, aa := startAddrs(t, "agent", "-config", cfg, "-control", syncAddr, "-join-token", strings.TrimSpace(tok), "-state-dir", dir,
		"-admin-addr", any0, "-dns-addr", any0, "-mesh-addr", any0, "-vip-range", "127.123.0.0/16")
	waitProcHTTP(t, p, "http://"+aa["admin"]+"/healthz")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+agent.DefaultWorkloadAPISocket(dir)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var x *workloadapi.X509Context
	for {
		if x, err = c.FetchX509Context(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no SVID: %v\nagent:\n%s", err, p.out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(x.SVIDs) != 1 || x.SVIDs[0].ID.String() != "spiffe://fogmesh.local/ns/shop/sa/orders-sa" {
		t.Fatalf("SVIDs %v", x.SVIDs)
	}
	// The SVID chains to the control plane's CA bundle.
	b, _ := os.ReadFile(filepath.Join(state, "ca.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	leaf := x.SVIDs[0].Certificates[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("SVID does not chain to the CA: %v", err)
	}
	if life := leaf.NotAfter.Sub(time.Now()); life > 70*time.Minute || life < 50*time.Minute {
		t.Fatalf("SVID lifetime %v, want about 1h", life)
	}
	out, code := run(t, append([]string{"audit", "verify", "--all"}, flags...)...)
	if code != 0 || !strings.Contains(out, "intact") {
		t.Fatalf("audit verify: %d\n%s", code, out)
	}
	// Creating a workload (an identity) through the local API needs the
	// token in the agent's state directory.
	reg := []string{"register", "-agent", "http://" + aa["admin"], "-service", "payments", "-n", "shop", "-port", "9", "-check", "none"}
	if out, code := run(t, reg...); code == 0 || !strings.Contains(out, "local-api.token") {
		t.Fatalf("register without the token: exit %d\n%s", code, out)
	}
	if fi, err := os.Stat(filepath.Join(dir, "local-api.token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("local API token file: %v %v", fi, err)
	}
	tokb, _ := os.ReadFile(filepath.Join(dir, "local-api.token"))
	if out, code := run(t, append(reg, "-agent-token", strings.TrimSpace(string(tokb)))...); code != 0 {
		t.Fatalf("register with the token: exit %d\n%s", code, out)
	}

	// SIGTERM: the control plane closes its chain with a checkpoint signed
	// by its audit key, which `audit verify --pubkey` checks.
	cp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-cp.done:
	case <-time.After(10 * time.Second):
		t.Fatal("control plane did not stop on SIGTERM")
	}
	logs, _ := filepath.Glob(filepath.Join(state, "audit", "control", "audit.log*"))
	// Without a head (the control plane is down) the end is unanchored:
	// exit 3, though every signature verifies.
	if out, code := run(t, append([]string{"audit", "verify", "--pubkey", filepath.Join(state, "audit-key.pub.pem")}, logs...)...); code != 3 || !strings.Contains(out, "1 signed") {
		t.Fatalf("control plane chain with its key: exit %d\n%s", code, out)
	}
	var chain strings.Builder
	for _, f := range logs {
		b, _ := os.ReadFile(f)
		chain.Write(b)
	}
	if !strings.Contains(chain.String(), "spiffe://fogmesh.local/ns/shop/sa/orders-sa") || !strings.Contains(chain.String(), "issue workload") ||
		!strings.Contains(chain.String(), "issue node") {
		t.Fatalf("control plane audit chain lacks the node and SVID issues:\n%s", chain.String())
	}
}
