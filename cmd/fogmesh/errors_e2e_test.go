package main

import (
	"context"
	"encoding/json"
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
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

// Issue 16's "errors that tell the operator what to do", as a new user
// meets them: real processes, the CLI as typed. Agents here use VIPs in
// 127.28-30.0.0/16.

// runEnv is run with the environment variables in env set (and those
// named with an empty value removed).
func runEnv(t *testing.T, env map[string]string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(fogmeshBin, args...)
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); env[k] == "" {
			if _, named := env[k]; named {
				continue
			}
		}
		cmd.Env = append(cmd.Env, kv)
	}
	for k, v := range env {
		if v != "" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// without returns the admin flags with flag name and its value removed.
func without(flags []string, name string) []string {
	i := slices.Index(flags, name)
	if i < 0 {
		return flags
	}
	return append(slices.Clone(flags[:i]), flags[i+2:]...)
}

// TestHelpExitsZero: -h and --help print the usage and exit 0 for every
// command, as Go's flag package does (they exited 2, a failure to scripts).
func TestHelpExitsZero(t *testing.T) {
	cmds := [][]string{{}, {"control"}, {"agent"}, {"relay"}, {"dev"}, {"get"}, {"apply"}, {"delete"}, {"register"},
		{"deregister"}, {"routes"}, {"paths"}, {"session"}, {"describe"}, {"demo"}, {"audit"}, {"audit", "verify"},
		{"token"}, {"token", "create"}, {"node"}, {"region"}, {"ca"}, {"trust"}, {"admin"}, {"version"}}
	for i, c := range cmds {
		for _, h := range []string{"--help", "-h"} {
			if h == "-h" && i%4 != 0 {
				continue // each start of the race-built binary costs; -h is the same flag
			}
			out, code := run(t, append(slices.Clone(c), h)...)
			if code != 0 || !strings.Contains(out, "fogmesh") {
				t.Errorf("fogmesh %s %s: exit %d, want 0 and the usage:\n%s", strings.Join(c, " "), h, code, out)
			}
		}
	}
	// A wrong flag is still a usage error.
	if out, code := run(t, "get", "-bogus"); code != 2 {
		t.Errorf("get -bogus: exit %d, want 2:\n%s", code, out)
	}
}

// TestVersionOfMakeBuild: the binary `make build` makes names the commit
// it was built from, even where Go's own VCS stamp is off (GOFLAGS
// -buildvcs=false, as here) or there is no .git to read.
func TestVersionOfMakeBuild(t *testing.T) {
	testenv.NeedTool(t, "make")
	testenv.NeedTool(t, "git")
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	head, err := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("not a git checkout: %v", err)
	}
	// The Makefile's own command for bin/fogmesh, built elsewhere.
	plan, err := exec.Command("make", "-s", "-n", "-C", root, "build").Output()
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(plan), "\n") {
		if strings.HasSuffix(strings.TrimSpace(l), "./cmd/fogmesh") {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("make -n build has no command for ./cmd/fogmesh:\n%s", plan)
	}
	bin := filepath.Join(t.TempDir(), "fogmesh")
	line = strings.Replace(line, "-o bin/fogmesh ", "-o "+bin+" ", 1)
	build := exec.Command("sh", "-c", line)
	build.Dir = root
	build.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", line, err, out)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("version: %v %s", err, out)
	}
	if short := strings.TrimSpace(string(head))[:12]; !strings.Contains(string(out), "commit "+short) {
		t.Fatalf("version printed %q, want commit %s", out, short)
	}
}

// TestCLIErrorsSayWhatToDo: against a secure control plane and one agent,
// a missing trust bundle names FOGMESH_CA and -ca; get KIND NAME shows one
// object (and exits 1 for an unknown name); describe finds demo/hello
// without -n, as the demo prints it.
func TestCLIErrorsSayWhatToDo(t *testing.T) {
	ln, err := net.Listen("tcp", any0)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := startCluster(t, "hello", 19280)
	_, admin := c.agent("n28", 28, ln.Addr().(*net.TCPAddr).Port, false)
	c.waitRoutes(admin, 1)

	// No trust bundle: the error says what to set.
	noCA := map[string]string{"FOGMESH_CA": ""}
	out, code := runEnv(t, noCA, append([]string{"get", "nodes"}, without(c.admin, "-ca")...)...)
	if code == 0 || !strings.Contains(out, "FOGMESH_CA") || !strings.Contains(out, "-ca") || !strings.Contains(out, "ca.pem") {
		t.Fatalf("get nodes without a trust bundle: exit %d, want an error naming FOGMESH_CA and -ca:\n%s", code, out)
	}

	// get KIND NAME.
	testenv.WaitFor(t, 15*time.Second, "node n28 listed", func() bool {
		out, code = run(t, append([]string{"get", "nodes", "n28"}, c.admin...)...)
		return code == 0 && strings.Contains(out, "n28")
	})
	if !strings.Contains(out, "CONFIG VERSION") || strings.Count(strings.TrimSpace(out), "\n") != 1 {
		t.Fatalf("get nodes n28:\n%s", out)
	}
	if out, code = run(t, append([]string{"get", "nodes", "nope"}, c.admin...)...); code != 1 || !strings.Contains(out, `no "nope"`) {
		t.Fatalf("get nodes nope: exit %d, want 1 and `no \"nope\"`:\n%s", code, out)
	}
	if out, code = run(t, append([]string{"get", "services", "hello", "-o", "json"}, c.admin...)...); code != 0 || !strings.Contains(out, `"name": "hello"`) {
		t.Fatalf("get services hello: exit %d:\n%s", code, out)
	}

	// describe without -n: the one namespace with a service hello.
	if out, code = run(t, "describe", "service", "hello", "-agent", "http://"+admin); code != 0 || !strings.Contains(out, "Service:   demo/hello") {
		t.Fatalf("describe service hello: exit %d:\n%s", code, out)
	}
	if out, code = run(t, "describe", "service", "hello", "-n", "other", "-agent", "http://"+admin); code != 2 || !strings.Contains(out, "other/hello is not known") {
		t.Fatalf("describe service hello -n other: exit %d:\n%s", code, out)
	}
}

// TestConfigVersionAfterControlRestart: after the control plane is killed
// and restarts, `get nodes` shows the resubscribed agent at the version it
// holds, not 0 until the next change. (On this branch's base it passed
// already, through the empty update a new stream gets; the control test
// TestResubscribeAtCurrentVersionIsAcked shows the fix of the subscribe
// itself counting.)
func TestConfigVersionAfterControlRestart(t *testing.T) {
	ln, err := net.Listen("tcp", any0)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := startCluster(t, "hello", 19281)
	_, admin := c.agent("n29", 29, ln.Addr().(*net.TCPAddr).Port, false)
	c.waitRoutes(admin, 1)
	acked := func(flags []string) (string, bool) {
		out, code := run(t, append([]string{"get", "nodes", "n29", "-o", "json"}, flags...)...)
		var ns []struct {
			Status struct {
				AckedVersion uint64 `json:"ackedVersion"`
				Connected    bool   `json:"connected"`
			} `json:"status"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &ns) != nil || len(ns) != 1 {
			return out, false
		}
		return out, ns[0].Status.Connected && ns[0].Status.AckedVersion > 0
	}
	testenv.WaitFor(t, 15*time.Second, "n29 to ack a version", func() bool { _, ok := acked(c.admin); return ok })
	before, _ := acked(c.admin)

	c.ctl.kill9(t)
	p, addrs := restartAddrs(t, c.syncAddr, "control", "-state-dir", c.state, "-admin-addr", any0, "-sync-addr", c.syncAddr)
	flags := secureAdmin(t, p, c.state, addrs["admin"])
	var out string
	deadline := time.Now().Add(20 * time.Second)
	for ok := false; !ok; out, ok = acked(flags) {
		if time.Now().After(deadline) {
			t.Fatalf("after the restart n29 never showed a config version (before: %s):\n%s", before, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if table, _ := run(t, append([]string{"get", "nodes", "n29"}, flags...)...); !strings.Contains(table, "n29") {
		t.Fatalf("get nodes n29:\n%s", table)
	}
}

// TestVIPHeldByAnotherProcess: a process holds the address and port of a
// service's virtual IP before the agent starts. The agent reports it in
// its routes and `describe`, in a metric, and in its heartbeat (`get
// nodes`, status.vipBindFailures, for `fogmesh check`); its DNS does not
// hand the address out; and once the process lets go, the agent binds it
// within its backoff bound with no other change, and serves it.
func TestVIPHeldByAnotherProcess(t *testing.T) {
	const vip = "127.30.0.1:19282"
	squatter, err := net.Listen("tcp", vip)
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	go func() {
		for {
			c, err := squatter.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nsquatter\n")
			c.Close()
		}
	}()
	hello := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello from the mesh\n") })}
	hln, err := net.Listen("tcp", any0)
	if err != nil {
		t.Fatal(err)
	}
	go hello.Serve(hln)
	defer hello.Close()

	c := startCluster(t, "hello", 19282)
	a := c.agentProc("n30", 30, hln.Addr().(*net.TCPAddr).Port, false)
	c.waitRoutes(a.admin, 1)
	agentURL := "http://" + a.admin
	unbound := func() []string {
		var routes []struct {
			Service, VIP string
			Unbound      []struct{ Address, Error string }
		}
		resp, err := http.Get(agentURL + "/v1/routes")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&routes); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range routes {
			if r.Service == "demo/hello" && r.VIP+":19282" != vip {
				t.Fatalf("demo/hello has VIP %s, the test squats %s", r.VIP, vip)
			}
			for _, u := range r.Unbound {
				out = append(out, r.Service+" "+u.Address+" "+u.Error)
			}
		}
		return out
	}
	metric := func() string {
		resp, err := http.Get(agentURL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "fogmesh_agent_vip_bind_failures ") {
				return l
			}
		}
		return ""
	}
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", a.addrs["dns"])
	}}
	lookup := func() ([]string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return resolver.LookupHost(ctx, "hello.demo.mesh")
	}

	// Reported where the operator looks.
	if u := unbound(); len(u) != 1 || !strings.Contains(u[0], "demo/hello "+vip) || !strings.Contains(u[0], "address already in use") {
		t.Fatalf("routes report %q, want %s unbound", u, vip)
	}
	if out, code := run(t, "describe", "service", "hello", "-agent", agentURL); code != 0 || !strings.Contains(out, "NOT SERVED: "+vip) {
		t.Fatalf("describe: exit %d:\n%s", code, out)
	}
	if out, code := run(t, "routes", "-agent", agentURL); code != 0 || !strings.Contains(out, "NOT SERVED: "+vip+" of demo/hello") {
		t.Fatalf("routes: exit %d:\n%s", code, out)
	}
	if m := metric(); m != "fogmesh_agent_vip_bind_failures 1" {
		t.Fatalf("metric %q, want 1", m)
	}
	if addrs, err := lookup(); err == nil {
		t.Fatalf("DNS handed out %v for a VIP another process holds", addrs)
	} else if de, ok := err.(*net.DNSError); !ok || de.IsNotFound {
		t.Fatalf("DNS: %v, want a server failure, not no-such-host", err)
	}
	var out string
	testenv.WaitFor(t, 20*time.Second, "the control plane to show n30's unbound VIP", func() bool {
		out, _ = run(t, append([]string{"get", "nodes", "n30", "-o", "json"}, c.admin...)...)
		return strings.Contains(out, `"vipBindFailures"`) && strings.Contains(out, vip)
	})
	if out, _ = run(t, append([]string{"get", "nodes"}, c.admin...)...); !strings.Contains(out, "node n30 cannot bind "+vip+" of service demo/hello") {
		t.Fatalf("get nodes:\n%s", out)
	}

	// The squatter leaves: the agent binds by itself, within its backoff
	// bound (2 s between tries at most) and a margin for a busy machine.
	squatter.Close()
	freed := time.Now()
	testenv.WaitFor(t, 10*time.Second, "the agent to bind "+vip, func() bool { return len(unbound()) == 0 })
	t.Logf("bound %v after the address freed", time.Since(freed).Round(time.Millisecond))
	resp, err := http.Get("http://" + vip + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "hello from the mesh") {
		t.Fatalf("the VIP answered %q, want the mesh's hello", b)
	}
	if m := metric(); m != "fogmesh_agent_vip_bind_failures 0" {
		t.Fatalf("metric %q after the bind, want 0", m)
	}
	if addrs, err := lookup(); err != nil || len(addrs) != 1 || addrs[0]+":19282" != vip {
		t.Fatalf("DNS after the bind: %v %v", addrs, err)
	}
	testenv.WaitFor(t, 20*time.Second, "the control plane to clear n30's failure", func() bool {
		out, _ = run(t, append([]string{"get", "nodes", "n30", "-o", "json"}, c.admin...)...)
		return strings.Contains(out, `"ready": true`) && !strings.Contains(out, "vipBindFailures")
	})
}

// TestSecondDevOnOneMachine: a second `fogmesh dev` beside a running one
// exits non-zero, without printing "is running", and names the instance
// that holds what it needs and the flag that avoids it: the same state
// directory (it failed with "store: open …/fogmesh.db: timeout"), or the
// same virtual IP range (it ran, and its printed curl reached the first).
func TestSecondDevOnOneMachine(t *testing.T) {
	state := t.TempDir()
	first, addrs := startAddrs(t, "dev", "-base-port", "-1", "-vip-range", "127.28.0.0/16", "-hello-port", "18128", "-state-dir", state)
	pid := fmt.Sprintf("pid %d", first.cmd.Process.Pid)
	if addrs["vip"] != "127.28.0.1:18128" {
		t.Fatalf("first demo's VIP %q", addrs["vip"])
	}
	exits := func(p *proc) int {
		select {
		case <-p.done:
		case <-time.After(60 * time.Second):
			t.Fatalf("the second demo did not exit:\n%s", p.out)
		}
		return p.cmd.ProcessState.ExitCode()
	}
	for _, c := range []struct {
		name  string
		args  []string
		wants []string
	}{
		{"same state directory", []string{"-state-dir", state},
			[]string{"state directory " + state + " is in use by another fogmesh dev (" + pid, "https://" + addrs["admin"], "--state-dir"}},
		{"same virtual IPs", []string{"-state-dir", t.TempDir()},
			[]string{"127.28.0.1:18128 (node shop-1-a)", "held by fogmesh dev " + pid, "--vip-octet", "--vip-range"}},
	} {
		second := start(t, append([]string{"dev", "-base-port", "-1", "-vip-range", "127.28.0.0/16", "-hello-port", "18128"}, c.args...)...)
		code := exits(second)
		out := second.out.String()
		if code == 0 || strings.Contains(out, "is running") {
			t.Fatalf("%s: exit %d, want non-zero and no \"is running\":\n%s", c.name, code, out)
		}
		for _, w := range c.wants {
			if !strings.Contains(out, w) {
				t.Fatalf("%s: the error does not say %q:\n%s", c.name, w, out)
			}
		}
		if strings.Contains(out, "timeout") {
			t.Fatalf("%s: a timeout instead of the reason:\n%s", c.name, out)
		}
	}
	// The first demo is untouched.
	resp, err := http.Get("http://127.28.0.1:18128/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "node=shop-1-a") {
		t.Fatalf("the first demo answered %q", b)
	}
}
