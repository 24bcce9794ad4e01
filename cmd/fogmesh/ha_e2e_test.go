package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/store/etcdstore/etcdtest"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestControlReplicasOnEtcd: two `fogmesh control -store etcd` processes
// (secure, the default) share one etcd. Two agents list both; they join
// and sync through replica a, serve traffic, and a is killed with SIGKILL
// under load: they move to b within seconds, b sends them deltas and no
// snapshot, their configuration matches the store exactly (nothing lost or
// duplicated), and not one request fails before, during or after.
func TestControlReplicasOnEtcd(t *testing.T) {
	ec := etcdtest.Start(t, 1)
	eps := strings.Join(ec.Endpoints(), ",")
	stA, stB := t.TempDir(), t.TempDir()
	pa, aa := startAddrs(t, "control", "-state-dir", stA, "-admin-addr", any0, "-sync-addr", any0, "-store", "etcd", "-etcd-endpoints", eps, "-name", "a", "-heartbeat-interval", "500ms", "-etcd-session-ttl", "2s")
	flagsA := secureAdmin(t, pa, stA, aa["admin"])
	pb, ab := startAddrs(t, "control", "-state-dir", stB, "-admin-addr", any0, "-sync-addr", any0, "-store", "etcd", "-etcd-endpoints", eps, "-name", "b", "-heartbeat-interval", "500ms", "-etcd-session-ttl", "2s")
	// One CA: a's bundle verifies b, and a's admin token works on b.
	flagsB := slices.Clone(flagsA)
	flagsB[1] = "https://" + ab["admin"]
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(flagsA[3])
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: bearer{flagsA[5], &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	getB := func(path string) string {
		resp, err := hc.Get("https://" + ab["admin"] + path)
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	testenv.WaitFor(t, 20*time.Second, "replica b answering with a's CA", func() bool {
		select {
		case <-pb.done:
			t.Fatalf("replica b exited:\n%s", pb.out)
		default:
		}
		return strings.HasPrefix(getB("/healthz"), "ok")
	})

	doc := filepath.Join(t.TempDir(), "svc.yaml")
	os.WriteFile(doc, []byte("apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: ha, namespace: demo}\nspec:\n  ports: [{name: http, port: 19050, protocol: http}]\n"), 0o644)
	if out, code := run(t, append([]string{"apply", "-f", doc}, flagsA...)...); code != 0 {
		t.Fatal(out)
	}
	if out, code := run(t, append([]string{"get", "services"}, flagsB...)...); code != 0 || !strings.Contains(out, "ha") {
		t.Fatalf("replica b does not serve what was applied through a: %d %s", code, out)
	}

	agent := func(name string, octet, port int) (*proc, string, string) {
		dir := t.TempDir()
		tok, code := run(t, append([]string{"token", "create", "-site", "s1", "-ttl", "5m"}, flagsA...)...)
		if code != 0 {
			t.Fatalf("token create: %s", tok)
		}
		cfg := fmt.Sprintf("node: {name: %s, site: s1, region: r1}\ncontrol: [%q, %q]\nmeshAddr: %q\ndnsAddr: %q\nadminAddr: %q\nvipRange: \"127.%d.0.0/16\"\nstateDir: %q\njoinToken: %q\n",
			name, aa["sync"], ab["sync"], any0, any0, any0, octet, dir, strings.TrimSpace(tok))
		if port > 0 {
			cfg += fmt.Sprintf("workloads: [{service: ha, namespace: demo, ports: [{name: http, port: %d}]}]\n", port)
		}
		path := filepath.Join(dir, "agent.yaml")
		os.WriteFile(path, []byte(cfg), 0o644)
		p, addrs := startAddrs(t, "agent", "-config", path)
		waitProcHTTP(t, p, "http://"+addrs["admin"]+"/healthz")
		return p, addrs["admin"], dir
	}
	_, _, srvDir := agent("srv", 103, nameServer(t, "srv", 0))
	_, cliAdmin, cliDir := agent("cli", 104, 0)
	cl := &cluster{t: t, service: "ha"}
	cl.waitRoutes(cliAdmin, 1)
	url := "http://127.104.0.1:19050/"
	waitHTTP(t, url)

	load := startSteadyGets(t, url, "srv", 4, 5*time.Millisecond)
	served := load.served
	testenv.WaitFor(t, 10*time.Second, "requests before the kill", func() bool { return served() >= 50 })

	bm := func(series string) float64 { return metric(t, hc, "https://"+ab["admin"]+"/metrics", series) }
	connected := func() float64 { return bm("fogmesh_control_nodes_connected") }
	if n := connected(); n != 0 {
		t.Fatalf("%v agents on b before the kill; the test wants them on a", n)
	}
	pa.kill9(t)
	killed := time.Now()
	// A change made through b while the agents move: it reaches them as a
	// delta from b.
	os.WriteFile(doc, []byte("apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: ha2, namespace: demo}\nspec:\n  ports: [{name: http, port: 19051, protocol: http}]\n"), 0o644)
	if out, code := run(t, append([]string{"apply", "-f", doc}, flagsB...)...); code != 0 {
		t.Fatalf("apply through b after a died: %s", out)
	}
	testenv.WaitFor(t, 10*time.Second, "both agents on b", func() bool { return connected() == 2 })
	t.Logf("agents moved to b in %v", time.Since(killed).Round(time.Millisecond))
	if d := time.Since(killed); d > 8*time.Second {
		t.Errorf("agents took %v to move", d)
	}
	atMove := served()
	testenv.WaitFor(t, 10*time.Second, "requests after the move", func() bool { return served() >= atMove+50 })
	nOK, failed := load.stop()

	snaps, deltas := bm("fogmesh_control_sync_snapshots_sent_total"), bm("fogmesh_control_sync_deltas_sent_total")
	if snaps != 0 || deltas < 2 {
		t.Fatalf("b sent %v snapshots and %v deltas; want deltas only", snaps, deltas)
	}
	// Each agent's configuration is exactly the store's: every service,
	// once, at the store's version.
	var status struct {
		Revision uint64 `json:"revision"`
		StoreID  string `json:"storeID"`
		Leader   bool   `json:"leader"`
	}
	if err := json.Unmarshal([]byte(getB("/v1/status")), &status); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{srvDir, cliDir} {
		testenv.WaitFor(t, 10*time.Second, "agent cache at the store's revision", func() bool {
			var cache struct {
				StoreID   string `json:"storeId"`
				Version   uint64 `json:"version"`
				Resources []struct{ Type, Name string }
			}
			b, err := os.ReadFile(filepath.Join(dir, "config-cache.json"))
			if err != nil || json.Unmarshal(b, &cache) != nil {
				return false
			}
			var svcs []string
			seen := map[string]bool{}
			for _, r := range cache.Resources {
				if seen[r.Type+"/"+r.Name] {
					t.Fatalf("%s holds %s/%s twice", dir, r.Type, r.Name)
				}
				seen[r.Type+"/"+r.Name] = true
				if r.Type == "Service" {
					svcs = append(svcs, r.Name)
				}
			}
			slices.Sort(svcs)
			return cache.StoreID == status.StoreID && cache.Version >= status.Revision && slices.Equal(svcs, []string{"demo/ha", "demo/ha2"})
		})
	}
	t.Logf("requests: %d ok, %d failed", nOK, len(failed))
	if len(failed) > 0 {
		t.Fatalf("%d requests failed, first: %s", len(failed), failed[0])
	}
	// b leads once a's session has expired.
	testenv.WaitFor(t, 20*time.Second, "b to lead", func() bool { return bm("fogmesh_control_leader") == 1 })
}

// bearer adds an admin token to every request.
type bearer struct {
	token string
	rt    http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.rt.RoundTrip(r)
}

// TestControlStoreFlagErrors: bad store flags are usage errors (exit 2).
// An etcd that does not answer is waited for (TestControlStartsBeforeEtcd).
func TestControlStoreFlagErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-store", "etcd"}, 2, "-etcd-endpoints"},
		{[]string{"-store", "zookeeper"}, 2, "unknown store"},
		{[]string{"-store", "etcd", "-etcd-endpoints", "http://127.0.0.1:1", "-etcd-session-ttl", "1500ms"}, 2, "whole seconds"},
		{[]string{"-etcd-endpoints", "http://127.0.0.1:1"}, 2, "without -store etcd"},
	} {
		out, code := run(t, append([]string{"control", "-insecure", "-state-dir", dir, "-admin-addr", any0, "-sync-addr", any0}, c.args...)...)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("control %v: exit %d, output %q; want exit %d naming %q", c.args, code, out, c.code, c.want)
		}
	}
}
