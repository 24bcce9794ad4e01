package main

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/fogmesh/fogmesh/internal/store/etcdstore/etcdtest"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// runBounded runs the binary like run, but kills it after d: a control
// plane that should have given up at once must not hang the test.
func runBounded(t *testing.T, d time.Duration, args ...string) (string, int) {
	t.Helper()
	p := start(t, args...)
	select {
	case <-p.done:
	case <-time.After(d):
		p.kill9(t)
		return p.out.String(), -1
	}
	return p.out.String(), p.cmd.ProcessState.ExitCode()
}

// TestControlOnEtcdWithTLSAndAuth: a replica runs on an etcd (Debian's)
// that serves clients over TLS only, demands a client certificate
// (--client-cert-auth) and has auth on, with a user that may use the
// /fogmesh/ prefix only. With the right CA, client certificate, user and
// password it serves, and what is applied through it is in etcd. A wrong
// CA, no client certificate, a wrong password or a user without the
// permission end the process at once with an error naming the flag to
// fix, instead of retrying forever.
func TestControlOnEtcdWithTLSAndAuth(t *testing.T) {
	certs := etcdtest.NewCerts(t, "root")
	ec := etcdtest.StartWith(t, 1, etcdtest.Options{TLS: certs})
	ec.EnableAuth("fogmesh", "s3cret", "/fogmesh/")
	eps := strings.Join(ec.Endpoints(), ",")
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("s3cret\n"), 0o600)
	bad := filepath.Join(dir, "badpw")
	os.WriteFile(bad, []byte("guess\n"), 0o600)
	base := []string{"control", "-insecure", "-admin-addr", any0, "-sync-addr", any0, "-store", "etcd", "-etcd-endpoints", eps, "-name", "a"}
	good := []string{"-etcd-ca", certs.CA, "-etcd-cert", certs.ClientCert, "-etcd-key", certs.ClientKey, "-etcd-username", "fogmesh", "-etcd-password-file", pw}
	for _, c := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"wrong CA", []string{"-etcd-ca", certs.OtherCA, "-etcd-cert", certs.ClientCert, "-etcd-key", certs.ClientKey, "-etcd-username", "fogmesh", "-etcd-password-file", pw},
			1, []string{"-etcd-ca", "not signed by the CA"}},
		{"no client certificate", []string{"-etcd-ca", certs.CA, "-etcd-username", "fogmesh", "-etcd-password-file", pw},
			1, []string{"requires a client certificate", "-etcd-cert"}},
		{"wrong password", []string{"-etcd-ca", certs.CA, "-etcd-cert", certs.ClientCert, "-etcd-key", certs.ClientKey, "-etcd-username", "fogmesh", "-etcd-password-file", bad},
			1, []string{"refused user \"fogmesh\"", "-etcd-password-file"}},
		{"no permission", append(slices.Clone(good), "-etcd-prefix", "/other/"),
			1, []string{"may not read and write", "-etcd-username"}},
		{"user without password", []string{"-etcd-ca", certs.CA, "-etcd-cert", certs.ClientCert, "-etcd-key", certs.ClientKey, "-etcd-username", "fogmesh"},
			2, []string{"-etcd-password-file"}},
		{"cert without key", []string{"-etcd-ca", certs.CA, "-etcd-cert", certs.ClientCert},
			2, []string{"-etcd-key"}},
	} {
		out, code := runBounded(t, 60*time.Second, append(append(slices.Clone(base), "-state-dir", t.TempDir()), c.args...)...)
		t.Logf("%s: exit %d: %s", c.name, code, lastLine(out))
		if code != c.code {
			t.Errorf("%s: exit %d, want %d:\n%s", c.name, code, c.code, out)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output does not name %q:\n%s", c.name, w, out)
			}
		}
	}

	p, addrs := startAddrs(t, append(append(slices.Clone(base), "-state-dir", t.TempDir()), good...)...)
	health := "http://" + addrs["admin"] + "/healthz"
	waitProcHTTP(t, p, health)
	doc := filepath.Join(dir, "svc.yaml")
	os.WriteFile(doc, []byte("apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: tls, namespace: demo}\nspec:\n  ports: [{name: http, port: 19052, protocol: http}]\n"), 0o644)
	if out, code := run(t, "apply", "-f", doc, "-server", "http://"+addrs["admin"]); code != 0 {
		t.Fatalf("apply: %s", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := ec.Client().Get(ctx, "/fogmesh/obj/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, kv := range resp.Kvs {
		found = found || strings.Contains(string(kv.Key), "demo/tls")
	}
	if !found {
		t.Fatalf("the service applied is not in etcd (%d keys under /fogmesh/obj/)", len(resp.Kvs))
	}
	testenv.WaitFor(t, 20*time.Second, "the replica to lead", func() bool {
		resp, err := http.Get(health)
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return strings.Contains(string(b), "leader: a")
	})
}

// TestControlStartsBeforeEtcd: a replica started while its etcd is down
// starts anyway: its /healthz answers 503 with the reason, it logs each
// attempt, refuses agents' sync connections at once, and once etcd is
// started it becomes ready and serves on the same addresses; secure mode,
// so the wait serves TLS too.
func TestControlStartsBeforeEtcd(t *testing.T) {
	ec := etcdtest.StartWith(t, 1, etcdtest.Options{NoStart: true})
	state := t.TempDir()
	p, addrs := startAddrs(t, "control", "-state-dir", state, "-admin-addr", any0, "-sync-addr", any0,
		"-store", "etcd", "-etcd-endpoints", strings.Join(ec.Endpoints(), ","), "-name", "early")
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	health := "https://" + addrs["admin"] + "/healthz"
	var body string
	testenv.WaitFor(t, 20*time.Second, "a 503 naming the store", func() bool {
		select {
		case <-p.done:
			t.Fatalf("the replica exited while etcd was down:\n%s", p.out)
		default:
		}
		resp, err := hc.Get(health)
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		return resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(body, "waiting for the store")
	})
	t.Logf("while etcd is down: %s", strings.TrimSpace(body))
	testenv.WaitFor(t, 20*time.Second, "two attempts logged", func() bool {
		return strings.Count(p.out.String(), "the store is unreachable") >= 2
	})
	// An agent's connection is closed at once, not left to time out.
	c, err := net.DialTimeout("tcp", addrs["sync"], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("the sync port while waiting: read %d bytes, %v; want EOF", n, err)
	}
	c.Close()

	ec.Restart(0)
	ec.WaitHealthy(30 * time.Second)
	testenv.WaitFor(t, 30*time.Second, "ready once etcd answers", func() bool {
		select {
		case <-p.done:
			t.Fatalf("the replica exited:\n%s", p.out)
		default:
		}
		resp, err := hc.Get(health)
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		return resp.StatusCode == 200 && strings.HasPrefix(body, "ok")
	})
	if !strings.Contains(p.out.String(), "the store answers; starting") {
		t.Errorf("no log line for the start:\n%s", p.out)
	}
	// It serves for real now: the CA it made is in place and the admin
	// API answers with the token it wrote.
	flags := secureAdmin(t, p, state, addrs["admin"])
	if out, code := run(t, append([]string{"get", "nodes"}, flags...)...); code != 0 {
		t.Fatalf("get nodes once ready: %d %s", code, out)
	}
}

// lastLine is the last non-empty line of out.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// TestControlWaitingForEtcdStopsOnSIGTERM: a replica waiting for its etcd
// stops at once on SIGTERM, exit 0, and frees its addresses.
func TestControlWaitingForEtcdStopsOnSIGTERM(t *testing.T) {
	ec := etcdtest.StartWith(t, 1, etcdtest.Options{NoStart: true})
	p, addrs := startAddrs(t, "control", "-insecure", "-state-dir", t.TempDir(), "-admin-addr", any0, "-sync-addr", any0,
		"-store", "etcd", "-etcd-endpoints", strings.Join(ec.Endpoints(), ","), "-name", "w")
	testenv.WaitFor(t, 20*time.Second, "503 while waiting", func() bool {
		resp, err := http.Get("http://" + addrs["admin"] + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	p.stopsOnSIGTERM(t, "control waiting for etcd", 15*time.Second)
	for _, a := range []string{addrs["admin"], addrs["sync"]} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("%s not freed: %v", a, err)
		}
		ln.Close()
	}
}
