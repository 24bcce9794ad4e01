package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/identity"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// End-to-end tests of the security features with real processes: node
// revocation, CA rotation, federation, admin client certificates and
// renewal. Agents use VIP ranges 127.190-199/16.

// echoServer is a TCP echo workload on a loopback port; its cleanup
// closes the listener and every connection.
func echoServer(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr).Port
}

// echoConn is an open connection through a VIP to an echo workload.
type echoConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialEcho(addr string) (*echoConn, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, err
	}
	e := &echoConn{c: c, r: bufio.NewReader(c)}
	if err := e.ping("hello"); err != nil {
		c.Close()
		return nil, err
	}
	return e, nil
}

// ping sends a line and waits (3 s at most) for it to come back.
func (e *echoConn) ping(msg string) error {
	e.c.SetDeadline(time.Now().Add(3 * time.Second))
	defer e.c.SetDeadline(time.Time{})
	if _, err := io.WriteString(e.c, msg+"\n"); err != nil {
		return err
	}
	line, err := e.r.ReadString('\n')
	if err != nil {
		return err
	}
	if line != msg+"\n" {
		return fmt.Errorf("echo answered %q, want %q", line, msg)
	}
	return nil
}

// echoOnce opens a connection through addr, pings once and closes it.
func echoOnce(addr string) error {
	e, err := dialEcho(addr)
	if err != nil {
		return err
	}
	return e.c.Close()
}

// waitEcho waits until a new connection through addr echoes.
func waitEcho(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := echoOnce(addr)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never echoed: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// metric returns the value of the series named exactly series in the
// Prometheus text at url (0 if absent). client nil means plain HTTP.
func metric(t *testing.T, client *http.Client, url, series string) float64 {
	t.Helper()
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("metrics: %s: %s", resp.Status, b)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// adminTransport is an HTTPS transport that carries a bearer token.
type adminTransport struct {
	http.RoundTripper
	token string
}

func (a *adminTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+a.token)
	return a.RoundTripper.RoundTrip(r)
}

// adminHTTP is an HTTP client of the control plane's admin API built from
// the CLI flags (-server, -ca, -token); it returns the client and the
// base URL.
func adminHTTP(t *testing.T, flags []string) (*http.Client, string) {
	t.Helper()
	b, err := os.ReadFile(flags[3])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	return &http.Client{Timeout: 5 * time.Second, Transport: &adminTransport{
		RoundTripper: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, token: flags[5]}}, flags[1]
}

// readTrust reads an agent's saved trust file.
func readTrust(t *testing.T, dir string) *wire.Trust {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "trust.json"))
	if err != nil {
		t.Fatal(err)
	}
	var tr wire.Trust
	if err := json.Unmarshal(b, &tr); err != nil {
		t.Fatalf("trust.json: %v", err)
	}
	return &tr
}

// nodeCert reads an agent's node certificate (the leaf).
func nodeCert(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "node-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// eventually polls cond every 100 ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRevokeNodeAtAgents: three joined agents (a client, a server with an
// echo workload, a bystander client). `fogmesh node revoke client` makes
// the server agent cut the client's open proxied connection, refuse its
// new handshakes (counted as reason "revoked" on the server's /metrics),
// and the control plane refuse its sync stream; the bystander keeps
// working.
func TestRevokeNodeAtAgents(t *testing.T) {
	cl := startClusterProto(t, "echo", "tcp", 19050, "-heartbeat-interval", "500ms")
	server := cl.agentProc("server", 130, echoServer(t), false)
	client := cl.agentProc("client", 131, 0, false)
	bystander := cl.agentProc("bystander", 132, 0, false)
	cl.waitRoutes(client.admin, 1)
	cl.waitRoutes(bystander.admin, 1)
	clientVIP, byVIP := "127.131.0.1:19050", "127.132.0.1:19050"
	waitEcho(t, clientVIP)
	waitEcho(t, byVIP)
	open, err := dialEcho(clientVIP)
	if err != nil {
		t.Fatal(err)
	}
	defer open.c.Close()
	byOpen, err := dialEcho(byVIP)
	if err != nil {
		t.Fatal(err)
	}
	defer byOpen.c.Close()

	revokedSeries := `fogmesh_tls_handshake_failures_total{port="mesh",dir="in",reason="revoked"}`
	serverMetrics := "http://" + server.admin + "/metrics"
	if v := metric(t, nil, serverMetrics, revokedSeries); v != 0 {
		t.Fatalf("revoked handshakes before the revocation: %v", v)
	}
	out, code := run(t, append([]string{"node", "revoke", "client"}, cl.admin...)...)
	if code != 0 || !strings.Contains(out, "spiffe://fogmesh.local/site/s1/node/client") {
		t.Fatalf("node revoke: %d %s", code, out)
	}
	revokedAt := time.Now()

	// The open connection is cut within a few seconds.
	open.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := open.r.ReadByte(); err == nil {
		t.Fatalf("the revoked node's open connection still delivers data (%q)", n)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the revoked node's open connection was not cut within 5 s\nserver log:\n%s", server.p.out)
	}
	t.Logf("open connection cut %v after the revocation", time.Since(revokedAt).Round(time.Millisecond))

	// New connections through the client's agent fail; the server counts
	// the refused handshakes.
	eventually(t, 10*time.Second, "new connections through the revoked node are still served", func() bool {
		return echoOnce(clientVIP) != nil
	})
	for i := range 3 {
		if err := echoOnce(clientVIP); err == nil {
			t.Fatalf("attempt %d through the revoked node was served", i)
		}
	}
	eventually(t, 10*time.Second, "the server agent counted no revoked handshake", func() bool {
		return metric(t, nil, serverMetrics, revokedSeries) > 0
	})
	if !strings.Contains(server.p.out.String(), "revocation cut open mesh sessions") || strings.Contains(server.p.out.String(), "sessions=0") {
		t.Errorf("server agent did not log the closed sessions:\n%s", server.p.out)
	}

	// The control plane refuses the revoked node's sync stream.
	adm, base := adminHTTP(t, cl.admin)
	eventually(t, 15*time.Second, "the control plane refused no revoked sync handshake", func() bool {
		return metric(t, adm, base+"/metrics", `fogmesh_tls_handshake_failures_total{port="sync",reason="revoked"}`) > 0
	})
	eventually(t, 10*time.Second, "the revoked agent never logged a refused sync stream", func() bool {
		return strings.Contains(client.p.out.String(), "control plane stream ended")
	})

	// The bystander keeps working: its open connection and new ones.
	if err := byOpen.ping("still here"); err != nil {
		t.Fatalf("bystander's open connection broke: %v", err)
	}
	if err := echoOnce(byVIP); err != nil {
		t.Fatalf("bystander's new connection: %v", err)
	}
	if v := metric(t, nil, "http://"+bystander.admin+"/metrics", `fogmesh_tls_handshake_failures_total{port="mesh",dir="out",reason="revoked"}`); v != 0 {
		t.Errorf("bystander saw revoked handshakes: %v", v)
	}
	// The server agent saved the deny list.
	tr := readTrust(t, server.dir)
	if len(tr.Revoked) != 1 || tr.Revoked[0] != "spiffe://fogmesh.local/site/s1/node/client" {
		t.Fatalf("server's trust.json deny list: %v", tr.Revoked)
	}
}

// chainsTo reports whether leaf verifies against exactly the roots given.
func chainsTo(leaf *x509.Certificate, roots ...*x509.Certificate) bool {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// pingWhile pings e every 200 ms until stop is closed and returns the
// first failure (nil if none).
func pingWhile(e *echoConn, stop <-chan struct{}) <-chan error {
	done := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			case <-time.After(200 * time.Millisecond):
			}
			if err := e.ping(fmt.Sprintf("ping %d", i)); err != nil {
				done <- fmt.Errorf("ping %d: %w", i, err)
				return
			}
		}
	}()
	return done
}

// TestNodeRenewalKeepsConnections: with a 20 s node TTL both agents renew
// over the sync stream (new serial in STATE/node-cert.pem, counted in
// fogmesh_agent_certificate_renewals_total) while a proxied connection
// through them stays open and keeps echoing.
func TestNodeRenewalKeepsConnections(t *testing.T) {
	cl := startClusterProto(t, "echo", "tcp", 19051, "-heartbeat-interval", "500ms", "-node-ttl", "20s")
	server := cl.agentProc("server", 133, echoServer(t), false)
	client := cl.agentProc("client", 134, 0, false)
	cl.waitRoutes(client.admin, 1)
	vip := "127.134.0.1:19051"
	waitEcho(t, vip)
	open, err := dialEcho(vip)
	if err != nil {
		t.Fatal(err)
	}
	defer open.c.Close()
	before := map[string]string{server.dir: nodeCert(t, server.dir).SerialNumber.Text(16), client.dir: nodeCert(t, client.dir).SerialNumber.Text(16)}
	stop := make(chan struct{})
	pings := pingWhile(open, stop)
	eventually(t, 20*time.Second, "the agents never renewed their node certificates", func() bool {
		for dir, serial := range before {
			if nodeCert(t, dir).SerialNumber.Text(16) == serial {
				return false
			}
		}
		return true
	})
	close(stop)
	if err := <-pings; err != nil {
		t.Fatalf("the open connection broke during renewal: %v", err)
	}
	for _, a := range []*agentProc{server, client} {
		c := nodeCert(t, a.dir)
		if life := time.Until(c.NotAfter); life < 10*time.Second || life > 21*time.Second {
			t.Errorf("%s: renewed certificate valid for %v more", a.dir, life)
		}
		// The agent writes the file before it counts the renewal: wait for the count.
		eventually(t, 5*time.Second, a.admin+": renewal not counted in fogmesh_agent_certificate_renewals_total", func() bool {
			return metric(t, nil, "http://"+a.admin+"/metrics", "fogmesh_agent_certificate_renewals_total") >= 1
		})
	}
	if err := open.ping("after renewal"); err != nil {
		t.Fatalf("open connection after renewal: %v", err)
	}
	if err := echoOnce(vip); err != nil {
		t.Fatalf("new connection after renewal: %v", err)
	}
}

// TestCARotationOverlap: `fogmesh ca rotate` while two agents talk. The
// bundle holds both roots during the overlap (`fogmesh get trust`,
// STATE/ca.pem, the agents' trust.json); traffic keeps flowing; an agent
// that renews gets a certificate of the new root and, restarted so that it
// must handshake again, still talks to a peer whose certificate is of the
// old root.
func TestCARotationOverlap(t *testing.T) {
	// The server agent joins under a 1h node TTL (it will not renew during
	// the test), the client under 20s (it renews at about 10s).
	cl := startClusterProto(t, "echo", "tcp", 19052, "-heartbeat-interval", "500ms", "-node-ttl", "1h")
	server := cl.agentProc("server", 135, echoServer(t), false)
	cl.ctl.kill9(t)
	// The server agent dials the sync address: it stays; the admin port
	// is a new one.
	var addrs map[string]string
	cl.ctl, addrs = restartAddrs(t, cl.syncAddr, "control", "-state-dir", cl.state, "-admin-addr", any0, "-sync-addr", cl.syncAddr,
		"-heartbeat-interval", "500ms", "-node-ttl", "20s")
	cl.adminAddr = addrs["admin"]
	cl.admin = secureAdmin(t, cl.ctl, cl.state, cl.adminAddr)
	client := cl.agentProc("client", 136, 0, false)
	cl.waitRoutes(client.admin, 1)
	vip := "127.136.0.1:19052"
	waitEcho(t, vip)
	b, _ := os.ReadFile(filepath.Join(cl.state, "ca.pem"))
	oldRoots, err := identity.ParseCertificatesPEM(b)
	if err != nil || len(oldRoots) != 1 {
		t.Fatalf("bundle before rotation: %d roots, %v", len(oldRoots), err)
	}
	oldRoot := oldRoots[0]
	open, err := dialEcho(vip)
	if err != nil {
		t.Fatal(err)
	}
	defer open.c.Close()
	stop := make(chan struct{})
	pings := pingWhile(open, stop)

	out, code := run(t, append([]string{"ca", "rotate"}, cl.admin...)...)
	if code != 0 || !strings.Contains(out, "2 roots trusted") {
		t.Fatalf("ca rotate: %d %s", code, out)
	}
	out, code = run(t, append([]string{"get", "trust"}, cl.admin...)...)
	if code != 0 || !strings.Contains(out, "fogmesh.local  2      own") {
		t.Fatalf("get trust during the overlap: %d\n%s", code, out)
	}
	b, _ = os.ReadFile(filepath.Join(cl.state, "ca.pem"))
	roots, _ := identity.ParseCertificatesPEM(b)
	if len(roots) != 2 {
		t.Fatalf("ca.pem holds %d roots during the overlap", len(roots))
	}
	var newRoot *x509.Certificate
	for _, r := range roots {
		if !r.Equal(oldRoot) {
			newRoot = r
		}
	}
	if newRoot == nil {
		t.Fatal("ca.pem lacks a new root")
	}
	for _, a := range []*agentProc{server, client} {
		eventually(t, 10*time.Second, a.dir+": trust.json never got both roots", func() bool {
			return len(readTrust(t, a.dir).Bundles["fogmesh.local"]) == 2
		})
	}
	// The client renews under the new root; traffic flows meanwhile.
	eventually(t, 20*time.Second, "the client agent never got a certificate of the new root", func() bool {
		return chainsTo(nodeCert(t, client.dir), newRoot)
	})
	if err := echoOnce(vip); err != nil {
		t.Fatalf("new connection after the client renewed: %v", err)
	}
	close(stop)
	if err := <-pings; err != nil {
		t.Fatalf("the open connection broke during the rotation: %v", err)
	}
	if c := nodeCert(t, server.dir); !chainsTo(c, oldRoot) || chainsTo(c, newRoot) {
		t.Fatal("the server agent's certificate is not of the old root any more: the test proves nothing")
	}
	// A fresh mesh handshake: new-root client, old-root server.
	client.restart(t)
	waitEcho(t, vip)
	if c := nodeCert(t, client.dir); !chainsTo(c, newRoot) {
		t.Fatal("the restarted client lost its new-root certificate")
	}
	if v := metric(t, nil, "http://"+server.admin+"/metrics", `fogmesh_tls_handshake_failures_total{port="mesh",dir="in",reason="unknown_authority"}`); v != 0 {
		t.Fatalf("the server refused %v handshakes for an unknown authority", v)
	}
}

// otherCA writes a self-signed root of trust domain td as PEM to a file.
func otherCA(t *testing.T, td string, isCA bool) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://" + td)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: td + " root"}, URIs: []*url.URL{u},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true, IsCA: isCA}
	if isCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), td+".pem")
	os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	return p
}

// TestTrustAddRemove: `fogmesh trust add` pushes a federated bundle to a
// joined agent (its trust.json) and `trust remove` takes it away; a
// malformed or non-CA bundle, a bad or the own trust domain are refused
// with exit 2 and a clear message, through the CLI and the API alike, and
// leave the stored trust and the agent's unchanged.
func TestTrustAddRemove(t *testing.T) {
	cl := startClusterProto(t, "echo", "tcp", 19053, "-heartbeat-interval", "500ms")
	ag := cl.agentProc("edge", 137, 0, false)
	bundle := otherCA(t, "other.example", true)
	trust := func(args ...string) (string, int) {
		return run(t, append(append([]string{"trust"}, args...), cl.admin...)...)
	}
	if out, code := trust("add", "-domain", "other.example", "-bundle", bundle); code != 0 || !strings.Contains(out, "other.example added") {
		t.Fatalf("trust add: %d %s", code, out)
	}
	eventually(t, 10*time.Second, "the agent never received the federated bundle", func() bool {
		return len(readTrust(t, ag.dir).Bundles["other.example"]) == 1
	})
	if out, _ := run(t, append([]string{"get", "trust"}, cl.admin...)...); !strings.Contains(out, "other.example  1      federated") {
		t.Fatalf("get trust:\n%s", out)
	}
	stored := func() string {
		out, code := run(t, append([]string{"get", "trust", "-o", "json"}, cl.admin...)...)
		if code != 0 {
			t.Fatalf("get trust: %d %s", code, out)
		}
		return out
	}
	before, agentBefore := stored(), readTrust(t, ag.dir)

	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(s), 0o644)
		return p
	}
	leaf := otherCA(t, "leaf.example", false)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"garbage bundle", []string{"add", "-domain", "bad.example", "-bundle", write("garbage.pem", "not a certificate\n")}, "no PEM certificate"},
		{"corrupt PEM", []string{"add", "-domain", "bad.example", "-bundle", write("corrupt.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")}, "malformed certificate"},
		{"empty bundle", []string{"add", "-domain", "bad.example", "-bundle", write("empty.pem", "")}, "empty.pem"},
		{"not a CA", []string{"add", "-domain", "leaf.example", "-bundle", leaf}, "not a CA"},
		{"missing file", []string{"add", "-domain", "bad.example", "-bundle", filepath.Join(dir, "nope.pem")}, "nope.pem"},
		{"bad domain", []string{"add", "-domain", "Bad_Domain!", "-bundle", bundle}, "Bad_Domain!"},
		{"URI domain", []string{"add", "-domain", "spiffe://bad.example", "-bundle", bundle}, "not a URI"},
		{"own domain", []string{"add", "-domain", "fogmesh.local", "-bundle", bundle}, "own trust domain"},
		{"no domain", []string{"add", "-bundle", bundle}, "-domain"},
		{"remove unknown", []string{"remove", "nosuch.example"}, "not found"},
		{"remove bad name", []string{"remove", "../tokens"}, "trust domain"},
		{"no verb", nil, "want add"},
	} {
		out, code := trust(c.args...)
		if code != 2 || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit %d, output %q; want exit 2 naming %q", c.name, code, out, c.want)
		}
	}
	// The API refuses the same without the CLI's own checks.
	adm, base := adminHTTP(t, cl.admin)
	for name, body := range map[string]string{
		"garbage bundle": `{"trustDomain":"bad.example","bundle":"garbage"}`,
		"leaf bundle":    fmt.Sprintf(`{"trustDomain":"leaf.example","bundle":%q}`, mustRead(t, leaf)),
		"empty domain":   fmt.Sprintf(`{"trustDomain":"","bundle":%q}`, mustRead(t, bundle)),
		"not JSON":       `{"trustDomain":`,
	} {
		resp, err := adm.Post(base+"/v1/trust", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("API %s: %s %s", name, resp.Status, b)
		}
	}
	if after := stored(); after != before {
		t.Fatalf("refused input changed the stored trust:\nbefore %s\nafter %s", before, after)
	}

	if out, code := trust("remove", "other.example"); code != 0 || !strings.Contains(out, "other.example removed") {
		t.Fatalf("trust remove: %d %s", code, out)
	}
	eventually(t, 10*time.Second, "the agent kept the removed bundle", func() bool {
		_, ok := readTrust(t, ag.dir).Bundles["other.example"]
		return !ok
	})
	// Pushes arrive in order: the removal came after the refused input, so
	// had any of that been pushed, the agent would hold it by now.
	if a := readTrust(t, ag.dir); len(a.Bundles) != len(agentBefore.Bundles)-1 {
		t.Fatalf("refused input reached the agent: %v (before: %v)", a.Bundles, agentBefore.Bundles)
	}
	if out := stored(); strings.Contains(out, "other.example") {
		t.Fatalf("removed domain still stored: %s", out)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// foreignAdminCert writes a certificate for spiffe://fogmesh.local/admin/NAME
// signed by a CA the control plane does not know, and its key.
func foreignAdminCert(t *testing.T, name string) (certPath, keyPath string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rogue"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://fogmesh.local/admin/" + name)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), URIs: []*url.URL{u}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certPath, append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...), 0o644)
	kb, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certPath, keyPath
}

// TestAdminClientCertificate: `fogmesh admin cert create` (admin token)
// makes the key locally and gets spiffe://TD/admin/NAME signed from a CSR;
// admin verbs then work with -cert/-key and no token, reads and writes;
// a certificate of the same ID from another CA, and a read-only token
// asking for a certificate, are refused; bad names are usage errors.
func TestAdminClientCertificate(t *testing.T) {
	state := t.TempDir()
	cp, ca := startAddrs(t, "control", "-state-dir", state, "-admin-addr", any0, "-sync-addr", any0)
	flags := secureAdmin(t, cp, state, ca["admin"])
	out := filepath.Join(t.TempDir(), "certs")
	res, code := run(t, append([]string{"admin", "cert", "create", "ops", "-out", out, "-ttl", "1h"}, flags...)...)
	if code != 0 || !strings.Contains(res, "spiffe://fogmesh.local/admin/ops") {
		t.Fatalf("admin cert create: %d %s", code, res)
	}
	certPath, keyPath := filepath.Join(out, "ops-cert.pem"), filepath.Join(out, "ops-key.pem")
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", err, fi)
	}
	b, _ := os.ReadFile(certPath)
	certs, err := identity.ParseCertificatesPEM(b)
	if err != nil || certs[0].URIs[0].String() != "spiffe://fogmesh.local/admin/ops" {
		t.Fatalf("admin certificate: %v %v", err, certs)
	}
	if life := time.Until(certs[0].NotAfter); life > time.Hour || life < 55*time.Minute {
		t.Fatalf("admin certificate lifetime %v, want 1h", life)
	}
	withCert := []string{"-server", flags[1], "-ca", flags[3], "-cert", certPath, "-key", keyPath}
	if out, code := run(t, append([]string{"get", "nodes"}, withCert...)...); code != 0 || !strings.Contains(out, "NAME") {
		t.Fatalf("get nodes with the admin certificate: %d %s", code, out)
	}
	if out, code := run(t, append([]string{"token", "create", "-site", "s1"}, withCert...)...); code != 0 || !strings.HasPrefix(out, "fmj1.") {
		t.Fatalf("token create with the admin certificate: %d %s", code, out)
	}
	// The same ID from a CA the control plane does not trust.
	fc, fk := foreignAdminCert(t, "ops")
	if out, code := run(t, "get", "nodes", "-server", flags[1], "-ca", flags[3], "-cert", fc, "-key", fk); code != 1 || !strings.Contains(out, "tls") {
		t.Fatalf("a foreign admin certificate: %d %s", code, out)
	}
	// A read-only token may not mint an admin certificate.
	ro, _ := run(t, append([]string{"token", "create", "-kind", "admin", "-role", "read-only"}, flags...)...)
	roOut := t.TempDir()
	if out, code := run(t, "admin", "cert", "create", "sneaky", "-out", roOut, "-server", flags[1], "-ca", flags[3], "-token", strings.TrimSpace(ro)); code != 1 || !strings.Contains(out, "read-only") {
		t.Fatalf("read-only token: %d %s", code, out)
	}
	if entries, _ := os.ReadDir(roOut); len(entries) != 0 {
		t.Fatalf("a refused request left files: %v", entries)
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"bad name", []string{"admin", "cert", "create", "Bad_Name", "-out", t.TempDir()}, "DNS label"},
		{"path name", []string{"admin", "cert", "create", "../x", "-out", t.TempDir()}, "DNS label"},
		{"bad ttl", []string{"admin", "cert", "create", "ok", "-ttl", "9999h", "-out", t.TempDir()}, "ttl"},
		{"exists", []string{"admin", "cert", "create", "ops", "-out", out}, "exists"},
		{"no verb", []string{"admin"}, "cert create"},
		{"cert without key", []string{"get", "nodes", "-cert", certPath}, "-cert and -key"},
	} {
		out, code := run(t, append(c.args, flags...)...)
		if code != 2 || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit %d, output %q; want exit 2 naming %q", c.name, code, out, c.want)
		}
	}
	// Revoked before it expires: refused from the next call on.
	if out, code := run(t, append([]string{"admin", "cert", "revoke", "ops"}, flags...)...); code != 0 || !strings.Contains(out, "admin/ops revoked") {
		t.Fatalf("admin cert revoke: %d %s", code, out)
	}
	if out, code := run(t, append([]string{"get", "nodes"}, withCert...)...); code == 0 {
		t.Fatalf("a revoked admin certificate still reads: %s", out)
	}
	if out, code := run(t, append([]string{"admin", "cert", "revoke", "Bad_Name"}, flags...)...); code != 2 {
		t.Fatalf("revoke with a bad name: %d %s", code, out)
	}
	// The issue is in the control plane's audit chain.
	logs, _ := filepath.Glob(filepath.Join(state, "audit", "control", "audit.log*"))
	var chain strings.Builder
	for _, f := range logs {
		b, _ := os.ReadFile(f)
		chain.Write(b)
	}
	if !strings.Contains(chain.String(), "issue admin") || !strings.Contains(chain.String(), "revoke admin") ||
		!strings.Contains(chain.String(), "spiffe://fogmesh.local/admin/ops") {
		t.Fatalf("audit chain lacks the admin certificate issue:\n%s", chain.String())
	}
}
