package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// cutProxy forwards TCP connections to a target until cut: then it closes
// every connection it carries and every new one at once, until restored.
// It stands for a link that fails between an agent and its control plane
// only.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex // guards the following
	cutOff bool
	conns  map[net.Conn]bool
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", any0)
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	done := make(chan struct{})
	go p.serve(done)
	t.Cleanup(func() { ln.Close(); <-done; p.cut() })
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) serve(done chan struct{}) {
	defer close(done)
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		off := p.cutOff
		p.mu.Unlock()
		if off {
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		go func() { io.Copy(up, c); up.Close() }()
		go func() { io.Copy(c, up); c.Close() }()
	}
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutOff = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *cutProxy) restore() {
	p.mu.Lock()
	p.cutOff = false
	p.mu.Unlock()
}

// TestNodeCutFromControlKeepsServing: a serving node in site s2 loses its
// link to the control plane only (a proxy on the way is cut); a client
// node in site s1 still reaches it. The control plane marks it
// unreachable but keeps it ready: the client goes on routing to it and no
// request fails, past node-timeout + node-expiry, because the client's
// heartbeats report traffic from it. Once the traffic stops it is marked
// not ready after that bound and the client withdraws it; when the link
// returns it is ready again and routed to.
func TestNodeCutFromControlKeepsServing(t *testing.T) {
	const timeout, expiry = 1500 * time.Millisecond, 3 * time.Second
	cl := startCluster(t, "cutoff", 19053, "-heartbeat-interval", "500ms", "-node-expiry", expiry.String())
	px := newCutProxy(t, cl.syncAddr)
	// The server node dials the control plane through the proxy.
	dir := t.TempDir()
	tok, code := run(t, append([]string{"token", "create", "-site", "s2", "-ttl", "5m"}, cl.admin...)...)
	if code != 0 {
		t.Fatalf("token create: %s", tok)
	}
	cfg := fmt.Sprintf("node: {name: srv, site: s2, region: r1}\ncontrol: [%q]\nmeshAddr: %q\ndnsAddr: %q\nadminAddr: %q\nvipRange: \"127.11.0.0/16\"\nstateDir: %q\njoinToken: %q\n"+
		"workloads: [{service: cutoff, namespace: demo, ports: [{name: http, port: %d}]}]\n",
		px.addr(), any0, any0, any0, dir, strings.TrimSpace(tok), nameServer(t, "srv", 0))
	os.WriteFile(filepath.Join(dir, "agent.yaml"), []byte(cfg), 0o644)
	srv, srvAddrs := startAddrs(t, "agent", "-config", filepath.Join(dir, "agent.yaml"))
	waitProcHTTP(t, srv, "http://"+srvAddrs["admin"]+"/healthz")
	_, cliAdmin := cl.agent("cli", 10, 0, false)
	cl.waitRoutes(cliAdmin, 1)
	url := "http://127.10.0.1:19053/"
	waitHTTP(t, url)

	caPEM, _ := os.ReadFile(filepath.Join(cl.state, "ca.pem"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: bearer{cl.admin[5], &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	status := func() api.NodeStatus {
		resp, err := hc.Get("https://" + cl.adminAddr + "/v1/nodes")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var list struct{ Items []api.Node }
		if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
			t.Fatal(err)
		}
		for _, n := range list.Items {
			if n.Meta.Name == "srv" {
				return n.Status
			}
		}
		t.Fatal("no node srv")
		return api.NodeStatus{}
	}

	load := startSteadyGets(t, url, "srv", 2, 10*time.Millisecond)
	served := load.served
	testenv.WaitFor(t, 10*time.Second, "requests before the cut", func() bool { return served() >= 20 })

	px.cut()
	cutAt := time.Now()
	testenv.WaitFor(t, 15*time.Second, "srv marked unreachable", func() bool { return status().Unreachable })
	t.Logf("srv marked unreachable %v after the cut", time.Since(cutAt).Round(time.Millisecond))
	// Twice node-timeout + node-expiry under traffic: still ready, routed
	// to, and every request served.
	for end := time.Now().Add(2 * (timeout + expiry)); time.Now().Before(end); {
		if st := status(); !st.Ready || !st.Unreachable {
			t.Fatalf("srv under traffic after the cut: %+v; want ready and unreachable", st)
		}
		at := served()
		testenv.WaitFor(t, 10*time.Second, "requests served while cut", func() bool { return served() >= at+10 })
	}
	nOK, failed := load.stop()
	idle := time.Now() // the last request has ended (a CI run that took this after get nodes saw 0.6 s)
	t.Logf("requests: %d ok, %d failed", nOK, len(failed))
	if len(failed) > 0 {
		t.Fatalf("%d requests failed while srv was cut from the control plane only, first: %s", len(failed), failed[0])
	}
	if out, _ := run(t, append([]string{"get", "nodes"}, cl.admin...)...); !strings.Contains(out, "true (unreachable)") {
		t.Errorf("get nodes does not show srv unreachable:\n%s", out)
	}

	// No traffic: nothing witnesses srv any more; it is withdrawn after the
	// bound.
	testenv.WaitFor(t, 20*time.Second, "srv not ready without traffic", func() bool { return !status().Ready })
	if d := time.Since(idle); d < timeout/2 {
		t.Fatalf("srv withdrawn %v after the traffic stopped, well before node-timeout", d)
	}
	testenv.WaitFor(t, 10*time.Second, "cli to stop routing to srv", func() bool { return !srvHealthyAt(t, cliAdmin) })

	px.restore()
	testenv.WaitFor(t, 60*time.Second, "srv ready again once its link returns", func() bool {
		st := status()
		return st.Ready && !st.Unreachable
	})
	testenv.WaitFor(t, 10*time.Second, "cli to route to srv again", func() bool { return srvHealthyAt(t, cliAdmin) })
	waitHTTP(t, url)
}

// srvHealthyAt reports whether the agent at admin holds srv's endpoint as
// healthy.
func srvHealthyAt(t *testing.T, admin string) bool {
	resp, err := http.Get("http://" + admin + "/v1/routes")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var routes []struct {
		Endpoints []struct {
			Node    string `json:"node"`
			Healthy bool   `json:"healthy"`
		} `json:"endpoints"`
	}
	if json.NewDecoder(resp.Body).Decode(&routes) != nil {
		return false
	}
	for _, r := range routes {
		for _, e := range r.Endpoints {
			if e.Node == "srv" {
				return e.Healthy
			}
		}
	}
	return false
}
