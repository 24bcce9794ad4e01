package dev

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

func startDemo(t *testing.T, octet int) *Demo {
	t.Helper()
	return startDemoWith(t, Options{VIPOctet: octet})
}

// startDemoWith starts a demo with opts on free ports in a fresh state
// directory and waits until it is ready.
func startDemoWith(t *testing.T, opts Options) *Demo {
	t.Helper()
	opts.StateDir, opts.BasePort, opts.HelloPort = t.TempDir(), -1, 18080
	ctx, cancel := context.WithCancel(context.Background())
	d, err := Start(ctx, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); d.Close() })
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	if err := d.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	return d
}

func get(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b)
}

// TestDemoLocalityFailover is the demo's promise: from shop-1-a the answer
// comes from the nearest instance, and each stop moves the very next request
// to the next tier, with no failed request.
func TestDemoLocalityFailover(t *testing.T) {
	d := startDemo(t, 105)
	url := "http://" + d.VIP() + "/"
	if got := get(t, url); !strings.Contains(got, "node=shop-1-a") {
		t.Fatalf("first answer %q, want the same node", got)
	}
	for _, step := range []struct{ stop, want string }{
		{"shop-1-a", "node=shop-1-b"}, // same site
		{"shop-1-b", "node=shop-2-a"}, // same region
		{"shop-2-a", "node=cloud-a"},  // anywhere
	} {
		if err := d.StopHello(step.stop); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 5; i++ { // the very next request, and the ones after
			t.Logf("step %s request %d", step.stop, i)
			if got := get(t, url); !strings.Contains(got, step.want) {
				t.Fatalf("after stopping %s: request %d answered %q, want %s", step.stop, i, got, step.want)
			}
		}
	}
	// The local instance comes back once its health check passes, on its
	// old address (its workload names it), once no other socket holds it.
	testenv.Rebind(t, d.hello["shop-1-a"].Addr, func() error { return d.StartHello("shop-1-a") })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(get(t, url), "node=shop-1-a") {
		if time.Now().After(deadline) {
			t.Fatal("shop-1-a never served again after restart")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDemoWithRealClients uses dig and curl as a user would.
func TestDemoWithRealClients(t *testing.T) {
	for _, bin := range []string{"dig", "curl"} {
		testenv.NeedTool(t, bin)
	}
	d := startDemo(t, 110)
	host, port, _ := net.SplitHostPort(d.Agents[0].DNSAddr())
	out, err := exec.Command("dig", "@"+host, "-p", port, "hello.demo.mesh", "+short").CombinedOutput()
	if err != nil {
		t.Fatalf("dig: %v %s", err, out)
	}
	vip := strings.TrimSpace(string(out))
	if want, _, _ := net.SplitHostPort(d.VIP()); vip != want {
		t.Fatalf("dig answered %q, want %s", vip, want)
	}
	out, _ = exec.Command("dig", "@"+host, "-p", port, "nope.demo.mesh").CombinedOutput()
	if !strings.Contains(string(out), "NXDOMAIN") {
		t.Fatalf("unknown name: %s", out)
	}
	out, _ = exec.Command("dig", "@"+host, "-p", port, "_http._tcp.hello.demo.mesh", "SRV", "+short").CombinedOutput()
	if !strings.Contains(string(out), "18080 hello.demo.mesh.") {
		t.Fatalf("SRV: %s", out)
	}
	// Each agent answers with its own VIP range, as separate machines would.
	host2, port2, _ := net.SplitHostPort(d.Agents[3].DNSAddr())
	out, _ = exec.Command("dig", "@"+host2, "-p", port2, "hello.demo.mesh", "+short").CombinedOutput()
	if got := strings.TrimSpace(string(out)); got != "127.113.0.1" {
		t.Fatalf("cloud-a answered %q, want 127.113.0.1", got)
	}
	out, err = exec.Command("curl", "-sS", "--max-time", "5", fmt.Sprintf("http://%s:18080/", vip)).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "node=shop-1-a") {
		t.Fatalf("curl: %v %s", err, out)
	}
	// From cloud-a, the same name reaches cloud-a's own instance.
	out, err = exec.Command("curl", "-sS", "--max-time", "5", "http://127.113.0.1:18080/").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "node=cloud-a") {
		t.Fatalf("curl from cloud-a: %v %s", err, out)
	}
}

// TestDemoStateDirReuse: a second start on the same state keeps the VIP.
func TestDemoRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := Start(ctx, Options{StateDir: dir, BasePort: -1, VIPOctet: 115, HelloPort: 18081})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	if err := d.WaitReady(wctx); err != nil {
		t.Fatal(err)
	}
	vip := d.VIP()
	d.Close()
	if _, err := os.Stat(filepath.Join(dir, "shop-1-a", "config-cache.json")); err != nil {
		t.Fatalf("no config cache after the first run: %v", err)
	}
	d2, err := Start(ctx, Options{StateDir: dir, BasePort: -1, VIPOctet: 115, HelloPort: 18081})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if d2.VIP() != vip { // served from the agent's cache before any sync
		t.Fatalf("VIP %s after restart, was %s", d2.VIP(), vip)
	}
}

// TestDemoPathBehindNAT: the demo's node "behind a NAT" advertises no
// reachable mesh address; a request to its instance still succeeds (the
// relay carries the first), and the path then moves to a punched UDP path
// that `fogmesh paths` shows.
func TestDemoPathBehindNAT(t *testing.T) {
	d := startDemo(t, 109)
	for _, n := range []string{"shop-1-a", "shop-1-b"} {
		if err := d.StopHello(n); err != nil {
			t.Fatal(err)
		}
	}
	url := "http://" + d.VIP() + "/"
	if got := get(t, url); !strings.Contains(got, "node="+BehindNAT) {
		t.Fatalf("answer %q, want %s", got, BehindNAT)
	}
	me := d.Agents[0]
	var kinds []string
	testenv.WaitFor(t, 10*time.Second, "a punched path to "+BehindNAT, func() bool {
		get(t, url)
		for _, p := range me.Paths().Paths {
			if p.Peer == BehindNAT {
				if len(kinds) == 0 || kinds[len(kinds)-1] != string(p.Kind) {
					kinds = append(kinds, string(p.Kind))
				}
				return p.Kind == "punched"
			}
		}
		return false
	})
	t.Logf("path to %s: %v", BehindNAT, kinds)
	if st := me.Paths(); !st.Punching || len(st.Relays) != 1 || !st.Relays[0].Connected {
		t.Fatalf("paths status %+v", st)
	}
}
