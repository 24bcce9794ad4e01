package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/fogmesh/fogmesh/internal/agent"
	"github.com/fogmesh/fogmesh/internal/identity"
)

// readCerts reads a PEM certificate file.
func readCerts(t *testing.T, path string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := identity.ParseCertificatesPEM(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return certs
}

// TestRegionalControlPlaneProcesses: real processes. A regional control
// plane (`fogmesh control --mode regional --region east --upstream G
// --join-token fmg1...`) joins the global one and keeps its intermediate
// CA in its state dir. With the global plane stopped, a new agent joins at
// the regional plane, gets a workload SVID through the Workload API and
// renews its node certificate, all chaining to the global root through
// the intermediate. The global plane comes back and the region re-links.
// That agent, still at its regional plane, serves a workload to an agent
// of the global root (its node and endpoint replicated up): mutual TLS
// across the two CAs. `fogmesh region revoke east` then refuses the
// region's link, and the root's agent, restarted, refuses its handshake.
func TestRegionalControlPlaneProcesses(t *testing.T) {
	const port = 19116
	gl := startClusterProto(t, "echo", "tcp", port, "-heartbeat-interval", "500ms", "-node-timeout", "1m")
	token := func(flags []string, args ...string) string {
		t.Helper()
		out, code := run(t, append(append([]string{"token", "create"}, args...), flags...)...)
		if code != 0 {
			t.Fatalf("token create %v: %s", args, out)
		}
		return strings.TrimSpace(out)
	}
	if out, code := run(t, append([]string{"token", "create", "-kind", "region"}, gl.admin...)...); code != 2 || !strings.Contains(out, "-region is required") {
		t.Fatalf("region token without -region: exit %d %s", code, out)
	}
	tok := token(gl.admin, "-kind", "region", "-region", "east")
	if !strings.HasPrefix(tok, "fmg1.") {
		t.Fatalf("region token %q", tok)
	}
	rstate := t.TempDir()
	regional := func(extra ...string) []string {
		return append([]string{"control", "--mode", "regional", "--region", "east", "--upstream", gl.syncAddr,
			"-state-dir", rstate, "-admin-addr", any0, "-sync-addr", any0, "-heartbeat-interval", "500ms", "-node-ttl", "20s"}, extra...)
	}
	if out, code := run(t, regional("--join-token", token(gl.admin, "-site", "s1"))...); code != 2 || !strings.Contains(out, "not a region token") {
		t.Fatalf("regional plane with a node's join token: exit %d\n%s", code, out)
	}
	rp, ra := startAddrs(t, regional("--join-token", tok)...)
	rflags := secureAdmin(t, rp, rstate, ra["admin"])
	for _, f := range []string{"ca-key.pem", "client-key.pem"} {
		if fi, err := os.Stat(filepath.Join(rstate, "region", f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("region/%s: %v %v", f, fi, err)
		}
	}
	inter := readCerts(t, filepath.Join(rstate, "region", "ca.pem"))[0]
	if !inter.IsCA || inter.URIs[0].String() != "spiffe://fogmesh.local/region/east" {
		t.Fatalf("intermediate %v", inter.URIs)
	}
	radm, rbase := adminHTTP(t, rflags)
	linked := func() bool { return metric(t, radm, rbase+"/metrics", "fogmesh_control_region_linked") == 1 }
	eventually(t, 20*time.Second, "the region never linked to the global plane", linked)
	// The global plane's service reaches the region over the secure
	// replication link (the region may not apply it: the global plane owns it).
	eventually(t, 20*time.Second, "the global plane's service never reached the region", func() bool {
		out, code := run(t, append([]string{"get", "services"}, rflags...)...)
		return code == 0 && strings.Contains(out, "echo")
	})

	// The global plane goes down.
	gl.ctl.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-gl.ctl.done:
	case <-time.After(20 * time.Second):
		t.Fatal("global control plane did not stop on SIGTERM")
	}
	eventually(t, 20*time.Second, "the region link stayed up", func() bool { return !linked() })

	// A new node joins at the regional plane, gets a workload SVID and
	// renews its certificate.
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "agent.yaml")
	echoPort := echoServer(t)
	agentCfg := func(control, joinToken string) {
		cfg := fmt.Sprintf("node: {name: edge-east, site: s2, region: east}\ncontrol: [%q]\nmeshAddr: %q\ndnsAddr: %q\nadminAddr: %q\nvipRange: \"127.116.0.0/16\"\nstateDir: %q\n"+
			"workloads: [{service: echo, namespace: demo, ports: [{name: http, port: %d}], attest: {uid: %d}}]\n",
			control, any0, any0, any0, dir, echoPort, os.Getuid())
		if joinToken != "" {
			cfg += fmt.Sprintf("joinToken: %q\n", joinToken)
		}
		os.WriteFile(cfgPath, []byte(cfg), 0o600)
	}
	agentCfg(ra["sync"], token(rflags, "-site", "s2", "-ttl", "5m"))
	east, ea := startAddrs(t, "agent", "-config", cfgPath)
	waitProcHTTP(t, east, "http://"+ea["admin"]+"/healthz")
	chain := readCerts(t, filepath.Join(dir, "node-cert.pem"))
	if len(chain) != 2 || !chain[1].Equal(inter) {
		t.Fatalf("node certificate chain of %d, want leaf and the region's intermediate", len(chain))
	}
	globalRoots := readCerts(t, filepath.Join(gl.state, "ca.pem"))
	verify := func(certs []*x509.Certificate) error {
		roots, inters := x509.NewCertPool(), x509.NewCertPool()
		for _, r := range globalRoots {
			roots.AddCert(r)
		}
		for _, c := range certs[1:] {
			inters.AddCert(c)
		}
		_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err
	}
	if err := verify(chain); err != nil {
		t.Fatalf("node certificate from the regional plane does not verify against the global root: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	wc, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+agent.DefaultWorkloadAPISocket(dir)))
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	var x *workloadapi.X509Context
	for {
		if x, err = wc.FetchX509Context(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no workload SVID: %v\nagent:\n%s", err, east.out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(x.SVIDs) != 1 || x.SVIDs[0].ID.String() != "spiffe://fogmesh.local/ns/demo/sa/echo" {
		t.Fatalf("SVIDs %v", x.SVIDs)
	}
	if err := verify(x.SVIDs[0].Certificates); err != nil {
		t.Fatalf("workload SVID from the regional plane does not verify against the global root: %v", err)
	}
	eventually(t, 40*time.Second, "the agent never renewed its node certificate at the regional plane", func() bool {
		return nodeCert(t, dir).SerialNumber.Cmp(chain[0].SerialNumber) != 0
	})
	if err := verify(readCerts(t, filepath.Join(dir, "node-cert.pem"))); err != nil {
		t.Fatalf("renewed node certificate: %v", err)
	}

	// The global plane comes back: the region links again.
	// The sync address stays (the region's upstream names it; restartAddrs
	// waits while another socket holds it); the admin port is the kernel's
	// pick, read back (the old one may be taken by now: a CI run once met
	// "address already in use" there).
	var addrs map[string]string
	gl.ctl, addrs = restartAddrs(t, gl.syncAddr, "control", "-state-dir", gl.state, "-admin-addr", any0, "-sync-addr", gl.syncAddr,
		"-heartbeat-interval", "500ms", "-node-timeout", "1m")
	gl.adminAddr = addrs["admin"]
	gl.admin = secureAdmin(t, gl.ctl, gl.state, gl.adminAddr)
	eventually(t, 40*time.Second, "the region never linked again", linked)

	// edge-east stays with its region; its node and endpoint reach the
	// global plane over the region's link, and an agent of the root (in
	// region r1) calls its workload, the service being exported to every
	// region (an agent of the global plane gets another region's endpoints
	// only so): mutual TLS between the root's and the intermediate's
	// certificates.
	exported := filepath.Join(t.TempDir(), "echo.yaml")
	os.WriteFile(exported, []byte(fmt.Sprintf("apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: echo, namespace: demo}\n"+
		"spec:\n  ports: [{name: http, port: %d, protocol: tcp}]\n  balancer: round-robin\n  export: [\"*\"]\n", port)), 0o644)
	if out, code := run(t, append([]string{"apply", "-f", exported}, gl.admin...)...); code != 0 {
		t.Fatalf("export echo: %d %s", code, out)
	}
	client := gl.agentProc("client", 114, 0, false)
	if c := readCerts(t, filepath.Join(client.dir, "node-cert.pem")); len(c) != 1 {
		t.Fatalf("the root's agent has a chain of %d", len(c))
	}
	gl.waitRoutes(client.admin, 1)
	vip := fmt.Sprintf("127.114.0.1:%d", port)
	waitEcho(t, vip)

	// The region is revoked at the global plane.
	out, code := run(t, append([]string{"region", "revoke", "east"}, gl.admin...)...)
	if code != 0 || !strings.Contains(out, "spiffe://fogmesh.local/region/east") {
		t.Fatalf("region revoke: %d %s", code, out)
	}
	eventually(t, 20*time.Second, "the region's link was not refused", func() bool { return !linked() })
	eventually(t, 20*time.Second, "the regional plane never logged the refusal", func() bool {
		return strings.Contains(rp.out.String(), "refused this region's certificate")
	})
	eventually(t, 10*time.Second, "the root's agent never saved the region on its deny list", func() bool {
		return slices.Contains(readTrust(t, client.dir).Revoked, "spiffe://fogmesh.local/region/east")
	})
	client.restart(t) // a new handshake to edge-east
	eventually(t, 20*time.Second, "the root's agent still reaches the revoked region's node", func() bool {
		echoOnce(vip)
		return metric(t, nil, "http://"+client.admin+"/metrics", `fogmesh_tls_handshake_failures_total{port="mesh",dir="out",reason="revoked"}`) > 0
	})
	if err := echoOnce(vip); err == nil {
		t.Fatal("the root's agent reached the workload of the revoked region's node")
	}
}
