package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// Offline autonomy tests (docs/offline.md) with compressed lifetimes, in
// secure mode. Each agent reaches the control plane through its own
// cuttable link (linkProxy), so a site can be cut off from every control
// plane while another part of the mesh still reaches it. VIP octets
// 117, 118, 119 and 124.

// linkProxy forwards TCP connections to a target until cut; restore
// listens again on the same address.
type linkProxy struct {
	t      *testing.T
	target string
	addr   string

	mu    sync.Mutex // guards the following
	ln    net.Listener
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func newLinkProxy(t *testing.T, target string) *linkProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &linkProxy{t: t, target: target, addr: ln.Addr().String(), conns: map[net.Conn]bool{}}
	p.serve(ln)
	t.Cleanup(func() { p.cut(); p.wg.Wait() })
	return p
}

func (p *linkProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.DialTimeout("tcp", p.target, 2*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[u] = true, true
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(u, c); u.Close() }()
			go func() { defer p.wg.Done(); io.Copy(c, u); c.Close() }()
		}
	}()
}

// cut closes the listener and every forwarded connection.
func (p *linkProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// restore listens again on the proxy's address.
func (p *linkProxy) restore() {
	var ln net.Listener
	testenv.Rebind(p.t, p.addr, func() (err error) {
		ln, err = net.Listen("tcp", p.addr)
		return err
	})
	p.serve(ln)
}

// adminDo calls a secure control plane's admin API with its admin token.
func adminDo(t *testing.T, cp *control.Server, dir, method, path string) (int, []byte) {
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
	roots.AppendCertsFromPEM(bundle)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(method, "https://"+cp.AdminAddr()+path, nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// agentMetric reads one series from an agent's /metrics (-1 if absent).
func agentMetric(t *testing.T, a *Agent, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + a.AdminAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// offlineSite is a secure control plane with short lifetimes and agents
// each behind their own link to it.
type offlineSite struct {
	t     *testing.T
	cp    *control.Server
	cpDir string
}

func newOfflineSite(t *testing.T, nodeTTL, workloadTTL, window time.Duration) *offlineSite {
	cpDir := t.TempDir()
	cp := startControlWith(t, cpDir, "", func(c *control.Config) {
		c.Insecure, c.NodeTTL, c.WorkloadTTL, c.AutonomyWindow = false, nodeTTL, workloadTTL, window
		// A node cut off is marked not ready after NodeTimeout, and agents
		// still connected stop routing to it (docs/offline.md); these tests
		// cut nodes for longer than the default 800 ms on purpose.
		c.NodeTimeout = time.Minute
	})
	return &offlineSite{t: t, cp: cp, cpDir: cpDir}
}

// agent starts a secure agent whose control link goes through its own
// proxy; opts.stateDir and the returned config restart it.
func (s *offlineSite) agent(o agentOpts, socket string) (*Agent, *linkProxy, Config) {
	t := s.t
	t.Helper()
	link := newLinkProxy(t, s.cp.SyncAddr())
	tok, err := s.cp.CreateToken(identity.TokenJoin, o.site, "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	o.control = []string{link.addr}
	cfg := agentConfig(o)
	cfg.Insecure, cfg.JoinToken, cfg.WorkloadAPISocket = false, tok, socket
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("node", o.name)
	}
	return s.start(cfg), link, cfg
}

func (s *offlineSite) start(cfg Config) *Agent {
	t := s.t
	t.Helper()
	// A restart on its old mesh address (peers hold it from their cache)
	// waits while another socket holds it.
	var a *Agent
	testenv.Rebind(t, cfg.MeshAddr, func() (err error) {
		a, err = New(cfg)
		return err
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

// fetchSVID fetches the caller's X.509-SVID from a Workload API socket and
// checks that it is valid now.
func fetchSVID(socket string) (*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	x, err := c.FetchX509Context(ctx)
	if err != nil {
		return nil, err
	}
	leaf := x.DefaultSVID().Certificates[0]
	if now := time.Now(); now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		return leaf, fmt.Errorf("SVID %s valid %s to %s, now is %s", leaf.SerialNumber, leaf.NotBefore, leaf.NotAfter, now)
	}
	return leaf, nil
}

// TestOfflineAutonomyCompressed: with 2 s workload SVIDs, 60 s node
// certificates and a 14 s autonomy window, a site cut off from every
// control plane for 12 s (six SVID lifetimes) keeps serving: mTLS traffic
// between its agents flows, authorization still denies an unauthorized
// node, the Workload API serves a currently valid SVID at every poll, the
// serving agent restarted during the cut comes back (new mTLS handshakes,
// SVIDs from its state dir) and serves. When the links return, the audit
// records made during the cut reach the control plane with the chain
// intact. A node revoked while the server's agent is still cut off is
// trusted there until it reconnects, and refused from then on.
func TestOfflineAutonomyCompressed(t *testing.T) {
	// 60 s node certificates: an agent that joined just before the cut
	// still holds a valid one when its redial backoff (up to 15 s)
	// brings it back after the 12 s cut.
	site := newOfflineSite(t, 60*time.Second, 2*time.Second, 14*time.Second)
	applySecure(t, site.cp, site.cpDir, "["+svcDoc("echo", 19117)+","+`{"apiVersion":"fogmesh.io/v1alpha1","kind":"AuthorizationPolicy",
	"metadata":{"name":"only-a","namespace":"demo"},"spec":{"service":"echo","action":"ALLOW","rules":[{"from":[{"nodes":["a"]}]}]}}]`)
	uid := os.Getuid()
	echoB := startEcho(t, "b", "127.0.0.1:0")
	wl := wlFor("echo", echoB)
	wl.Attest = &Attest{UID: &uid}
	bDir := t.TempDir()
	sock := filepath.Join(bDir, "workload.sock")
	b, bLink, bCfg := site.agent(agentOpts{name: "b", site: "s1", region: "r1", vipOctet: 118, stateDir: bDir,
		workloads: []Workload{wl}}, sock)
	a, aLink, _ := site.agent(agentOpts{name: "a", site: "s1", region: "r1", vipOctet: 117, stateDir: t.TempDir()}, "off")
	c, cLink, _ := site.agent(agentOpts{name: "c", site: "s1", region: "r1", vipOctet: 119, stateDir: t.TempDir()}, "off")
	for _, ag := range []*Agent{a, c} {
		waitFor(t, "the clients to learn b's endpoint", func() bool {
			eps := endpointsOf(ag, "demo/echo")
			return len(eps) == 1 && eps[0].Healthy
		})
	}
	aVIP, cVIP := "127.117.0.1:19117", "127.119.0.1:19117"
	mustRoundTrip(t, aVIP, "b: ping")
	if got, err := roundTrip(cVIP); err == nil && strings.HasPrefix(got, "b:") {
		t.Fatalf("c, which no policy allows, got through: %q", got)
	}
	testenv.WaitFor(t, 10*time.Second, "b's workload SVID batch", func() bool { _, err := fetchSVID(sock); return err == nil })
	waitFor(t, "b's SVID batch on disk", func() bool { _, err := os.Stat(filepath.Join(bDir, svidsFile)); return err == nil })

	// Cut every agent from the control plane.
	for _, l := range []*linkProxy{aLink, bLink, cLink} {
		l.cut()
	}
	for _, ag := range []*Agent{a, b, c} {
		waitFor(t, "the agents to notice the cut", func() bool { return !ag.connected.Load() })
	}
	cutAt := time.Now()
	b.AuditLog().Flush(context.Background())
	seqAtCut, _ := b.AuditLog().Last()
	serials := map[string]bool{}
	// check is one poll: traffic, authorization, the Workload API.
	check := func(when string) {
		t.Helper()
		if got, err := roundTrip(aVIP); err != nil || !strings.HasPrefix(got, "b: ping") {
			t.Fatalf("%s (%v into the cut): a -> b: %q, %v", when, time.Since(cutAt).Round(time.Millisecond), got, err)
		}
		if got, err := roundTrip(cVIP); err == nil && strings.HasPrefix(got, "b:") {
			t.Fatalf("%s: the unauthorized node c got through: %q", when, got)
		}
		leaf, err := fetchSVID(sock)
		if err != nil {
			t.Fatalf("%s (%v into the cut): Workload API: %v", when, time.Since(cutAt).Round(time.Millisecond), err)
		}
		serials[leaf.SerialNumber.String()] = true
	}
	for time.Since(cutAt) < 6*time.Second {
		check("cut off")
		time.Sleep(250 * time.Millisecond) // poll interval
	}

	// b restarts while still cut off, on the same mesh port (a holds it
	// from its cache): new mTLS handshakes with the node certificates on
	// disk, and the workload SVIDs from its state dir.
	b.Close()
	bCfg.MeshAddr, bCfg.JoinToken = b.MeshAddr(), ""
	b = site.start(bCfg)
	testenv.WaitFor(t, 20*time.Second, "the restarted b to serve a over the mesh", func() bool {
		got, err := roundTrip(aVIP)
		return err == nil && strings.HasPrefix(got, "b: ping")
	})
	for time.Since(cutAt) < 12*time.Second {
		check("cut off, b restarted")
		time.Sleep(250 * time.Millisecond)
	}
	if len(serials) < 5 {
		t.Fatalf("the Workload API served %d certificates over 12 s of 2 s SVIDs", len(serials))
	}
	if b.connected.Load() {
		t.Fatal("b reached the control plane during the cut")
	}
	b.AuditLog().Flush(context.Background())
	seqAtEnd, _ := b.AuditLog().Last()
	if seqAtEnd <= seqAtCut {
		t.Fatalf("b audited nothing during the cut (seq %d -> %d)", seqAtCut, seqAtEnd)
	}

	// a and c reconnect; a is revoked while b is still cut off: b still
	// serves a (the bound: until b reconnects).
	aLink.restore()
	cLink.restore()
	// The agents redial with a backoff of up to 15 s.
	testenv.WaitFor(t, 30*time.Second, "a to reconnect", func() bool { return a.connected.Load() })
	if code, body := adminDo(t, site.cp, site.cpDir, "POST", "/v1/nodes/a/revoke"); code != 200 {
		t.Fatalf("revoke a: %d %s", code, body)
	}
	mustRoundTrip(t, aVIP, "b: ping")

	// b reconnects: it learns of the revocation and refuses a, and ships
	// the audit records of the cut.
	bLink.restore()
	testenv.WaitFor(t, 30*time.Second, "b to refuse the revoked node a once reconnected", func() bool {
		got, err := roundTrip(aVIP)
		return err != nil || !strings.HasPrefix(got, "b:")
	})
	testenv.WaitFor(t, 30*time.Second, "the audit records of the cut at the control plane", func() bool {
		code, body := adminDo(t, site.cp, site.cpDir, "GET", "/v1/audit/b?verify=1")
		var ar control.AuditResponse
		if code != 200 || json.Unmarshal(body, &ar) != nil || len(ar.Chains) != 1 {
			return false
		}
		ch := ar.Chains[0]
		return ch.LastSeq >= seqAtEnd && ch.Intact != nil && *ch.Intact && ch.Report.FirstSeq == 1
	})
}

// TestOfflineBeyondAutonomyWindow: cut off for longer than the autonomy
// window (4 s) and the node certificate's life (8 s), an agent stops
// serving workload SVIDs and stops presenting its expired node
// certificate, and says why: the Workload API refuses, the metrics
// (fogmesh_agent_svid_missing, fogmesh_agent_node_certificate_expired_total)
// count it, a new mTLS handshake fails naming the expiry, and a restart
// is refused with a message that asks for a join token.
func TestOfflineBeyondAutonomyWindow(t *testing.T) {
	site := newOfflineSite(t, 8*time.Second, 2*time.Second, 4*time.Second)
	applySecure(t, site.cp, site.cpDir, svcDoc("echo", 19124))
	uid := os.Getuid()
	echoB := startEcho(t, "b", "127.0.0.1:0")
	wl := wlFor("echo", echoB)
	wl.Attest = &Attest{UID: &uid}
	bDir := t.TempDir()
	sock := filepath.Join(bDir, "workload.sock")
	b, bLink, _ := site.agent(agentOpts{name: "b", site: "s1", region: "r1", vipOctet: 124, stateDir: bDir,
		workloads: []Workload{wl}}, sock)
	a, aLink, aCfg := site.agent(agentOpts{name: "a", site: "s1", region: "r1", vipOctet: 117, stateDir: t.TempDir()}, "off")
	waitFor(t, "a to learn b's endpoint", func() bool {
		eps := endpointsOf(a, "demo/echo")
		return len(eps) == 1 && eps[0].Healthy
	})
	testenv.WaitFor(t, 10*time.Second, "b's workload SVID", func() bool { _, err := fetchSVID(sock); return err == nil })
	aLink.cut()
	bLink.cut()

	testenv.WaitFor(t, 20*time.Second, "b to stop serving workload SVIDs", func() bool {
		_, err := fetchSVID(sock)
		return err != nil && strings.Contains(err.Error(), "PermissionDenied")
	})
	if v := agentMetric(t, b, "fogmesh_agent_svid_missing"); v != 1 {
		t.Fatalf("fogmesh_agent_svid_missing %v, want 1", v)
	}
	if v := agentMetric(t, b, "fogmesh_agent_svid_expirations"); v < 1 {
		t.Fatalf("fogmesh_agent_svid_expirations %v", v)
	}
	testenv.WaitFor(t, 25*time.Second, "a's node certificate to expire, counted", func() bool {
		return agentMetric(t, a, "fogmesh_agent_node_certificate_expired_total") == 1
	})
	if v := agentMetric(t, a, "fogmesh_agent_node_certificate_expiry_seconds"); v >= 0 {
		t.Fatalf("fogmesh_agent_node_certificate_expiry_seconds %v after expiry", v)
	}
	// A new handshake with a's identity fails at a, naming the expiry: a
	// server with a valid certificate sees none.
	srv, err := site.cp.CA().NodeSource("s1", "x")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		_, err = identity.ServerHandshake(context.Background(), c, srv.ServerConfig(identity.AuthorizeNode(), identity.ALPNMesh), 3*time.Second)
		srvErr <- err
	}()
	_, err = tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", ln.Addr().String(),
		a.ident.src.ClientConfig(identity.AuthorizeNode(), identity.ALPNMesh))
	if err == nil || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("a new mesh handshake with an expired certificate: %v", err)
	}
	if err := <-srvErr; err == nil {
		t.Fatal("the server completed a handshake with a client whose certificate expired")
	}
	// A restart is refused, saying why.
	a.Close()
	aCfg.JoinToken = ""
	if _, err := New(aCfg); err == nil || !strings.Contains(err.Error(), "expired") || !strings.Contains(err.Error(), "join") {
		t.Fatalf("restart with an expired node certificate: %v", err)
	}
}

// TestAuditBoundedWhileCutOff: an agent cut off from the control plane
// keeps its audit records up to audit.maxBytes, counts what it loses past
// it, and once the control plane holds what it kept, removes shipped files
// and says in the chain how many records were lost; the control plane's
// copy stays intact.
func TestAuditBoundedWhileCutOff(t *testing.T) {
	cpDir := t.TempDir()
	cp := startControl(t, cpDir, "")
	syncAddr := cp.SyncAddr()
	a := startAgentWith(t, agentOpts{name: "aud", site: "s1", region: "r1", vipOctet: 119, control: []string{syncAddr},
		stateDir: t.TempDir()}, func(c *Config) { c.Audit.MaxBytes = 1 << 20 })
	waitFor(t, "agent connected", func() bool { return a.connected.Load() })
	cp.Close()
	waitFor(t, "agent to notice the control plane is gone", func() bool { return !a.connected.Load() })
	for i := range 6000 { // about 1.5 MiB of denials
		a.AuditDecision(deny(i))
	}
	a.AuditLog().Flush(context.Background())
	kept, _ := a.AuditLog().Last()
	lost := agentMetric(t, a, "fogmesh_agent_audit_lost_total")
	if lost <= 0 || float64(kept)+lost < 6000 {
		t.Fatalf("kept %d records, lost %v of 6000", kept, lost)
	}
	if n := dirBytes(t, filepath.Join(a.cfg.StateDir, "audit")); n > 1<<20 {
		t.Fatalf("the audit log takes %d bytes, bound 1 MiB", n)
	}
	cp2 := startControl(t, cpDir, syncAddr)
	// The agent's reconnect backoff grows to 15 s while it is cut off (a
	// busy machine makes the cut long): the first budget covers that, the
	// second the shipping of about 1 MiB of records under -race (30 s in
	// all once timed out in a full run of the package).
	testenv.WaitFor(t, 30*time.Second, "the agent to reconnect", func() bool { return a.connected.Load() })
	testenv.WaitFor(t, 60*time.Second, "the kept records shipped", func() bool {
		c, ok := cpChain(t, cp2, "aud")
		return ok && c.LastSeq == kept
	})
	waitFor(t, "shipped files removed", func() bool { return dirBytes(t, filepath.Join(a.cfg.StateDir, "audit")) <= 1<<19 })
	a.AuditDecision(deny(1))
	testenv.WaitFor(t, 30*time.Second, "the loss and the next record shipped", func() bool {
		c, ok := cpChain(t, cp2, "aud")
		return ok && c.LastSeq == kept+2 && c.Intact != nil && *c.Intact
	})
	recs, err := a.AuditLog().ReadFrom(kept+1, 1)
	if err != nil || len(recs) != 1 || recs[0].Action != "lost" || !strings.Contains(recs[0].Reason, "size bound") {
		t.Fatalf("the record after the bound: %+v %v", recs, err)
	}
}

func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}
