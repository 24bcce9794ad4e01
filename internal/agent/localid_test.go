package agent

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// attestIP is the address of the client workload in these tests.
const (
	attestIP = "127.0.0.50"
	attestID = "spiffe://fogmesh.local/ns/demo/sa/client"
)

// startIdentityEcho serves "id=<X-Fogmesh-Source-Id>" for every request.
func startIdentityEcho(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "id=%s", r.Header.Get(SourceIDHeader))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// http10From sends an HTTP/1.0 request from ip, which the fast path hands
// to the net/http server (the ReverseProxy path), and returns the body.
func http10From(t *testing.T, ip, addr string) string {
	t.Helper()
	c, err := dialFrom(ip)(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET / HTTP/1.0\r\nHost: who\r\n\r\n")
	resp, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("HTTP/1.0 from %s: %v", ip, err)
	}
	_, body, _ := bytes.Cut(resp, []byte("\r\n\r\n"))
	return string(body)
}

func intp(v int) *int { return &v }

// TestLocalIdentityAttestation (issue 9, finding 6): a workload at
// 127.0.0.50 that declares attest selectors lends its identity to a local
// client connection only when the process holding the client socket
// matches them; binding its address is not enough. Checked on the HTTP/1.1
// fast path, the net/http path and a TCP port whose policy admits only that
// identity. Without selectors the address alone identifies (documented).
func TestLocalIdentityAttestation(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	backend := startIdentityEcho(t)
	db := startEcho(t, "db", "127.0.0.1:0")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: who, namespace: demo}
spec: {ports: [{name: http, port: 19661, protocol: http}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: wdb, namespace: demo}
spec: {ports: [{name: tcp, port: 19662}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: wdb-client, namespace: demo}
spec: {service: wdb, rules: [{from: [{principals: ["`+attestID+`"]}]}]}
`)
	a := startAgent(t, agentOpts{name: "n1", site: "s1", region: "r1", vipOctet: 247, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{
			{Name: "who-1", Service: "who", Namespace: "demo", Ports: []api.EndpointPort{{Name: "http", Port: backend}}},
			{Name: "wdb-1", Service: "wdb", Namespace: "demo", Ports: []api.EndpointPort{{Name: "tcp", Port: db.port()}}},
		}})
	for _, s := range []string{"demo/who", "demo/wdb"} {
		waitFor(t, s+" endpoint", func() bool { eps := endpointsOf(a, s); return len(eps) == 1 && eps[0].Healthy })
	}
	waitFor(t, "policy", func() bool { return a.view.Load().authz.Len() == 1 })
	vip := func(name string, port int) string {
		r, _ := a.LookupService("demo", name)
		return fmt.Sprintf("%s:%d", r.V4, port)
	}
	who, wdb := vip("who", 19661), vip("wdb", 19662)
	waitListening(t, who)
	register := func(at *Attest) {
		t.Helper()
		if err := a.Register(Workload{Name: "client-1", Service: "client", Namespace: "demo", Address: attestIP,
			Ports: []api.EndpointPort{{Name: "x", Port: 1}}, Check: Check{Type: "none"}, Attest: at}); err != nil {
			t.Fatal(err)
		}
	}
	counter := func(name string) uint64 { return a.cfg.Metrics.GetOrCreateCounter(name).Get() }
	const mismatch = `fogmesh_agent_local_identity_refused_total{reason="mismatch"}`
	const attested = `fogmesh_agent_local_identity_attested_total`
	// expect checks what a client in this process, bound to attestIP, is.
	expect := func(t *testing.T, want string) {
		t.Helper()
		if code, body := httpGetFrom(t, attestIP, "http://"+who+"/"); code != 200 || body != "id="+want {
			t.Errorf("HTTP/1.1 fast path: %d %q, want id=%s", code, body, want)
		}
		if body := http10From(t, attestIP, who); body != "id="+want {
			t.Errorf("net/http path: %q, want id=%s", body, want)
		}
		got, err := echoFrom(attestIP, wdb)
		if allowed := err == nil && got == "db: ping"; allowed != (want != "") {
			t.Errorf("TCP port open to %s only: got %q, %v (identity %q)", attestID, got, err, want)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := os.Geteuid(), os.Getegid()

	t.Run("no selectors: by address", func(t *testing.T) {
		register(nil)
		expect(t, attestID)
	})
	t.Run("another uid", func(t *testing.T) {
		register(&Attest{UID: intp(uid + 4242)})
		before := counter(mismatch)
		expect(t, "")
		if n := counter(mismatch) - before; n != 3 {
			t.Errorf("%s rose by %d, want 3 (one per connection)", mismatch, n)
		}
	})
	t.Run("another gid", func(t *testing.T) {
		register(&Attest{UID: intp(uid), GID: intp(gid + 4242)})
		expect(t, "")
	})
	t.Run("another binary", func(t *testing.T) {
		register(&Attest{UID: intp(uid), Path: "/usr/bin/fogmesh-workload"})
		expect(t, "")
	})
	t.Run("this process", func(t *testing.T) {
		register(&Attest{UID: intp(uid), GID: intp(gid), Path: exe})
		before := counter(attested)
		expect(t, attestID)
		if n := counter(attested) - before; n != 3 {
			t.Errorf("%s rose by %d, want 3", attested, n)
		}
	})
	t.Run("one of several selectors", func(t *testing.T) {
		register(nil)
		if err := a.Register(Workload{Name: "client-2", Service: "client", Namespace: "demo", Address: attestIP,
			Ports: []api.EndpointPort{{Name: "y", Port: 2}}, Check: Check{Type: "none"}, Attest: &Attest{UID: intp(uid + 1)}}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Deregister("client-2") })
		// client-1 declares nothing, client-2 a uid that is not ours: the
		// address is attested, and this process does not pass.
		expect(t, "")
		register(&Attest{Path: exe})
		expect(t, attestID)
	})
	// A non-root workload, run as a real client (curl) under another uid.
	t.Run("curl as another user", func(t *testing.T) {
		testenv.NeedRoot(t) // to run curl as uid 4321
		// Not nobody (65534): that is the overflow uid, which no
		// selector may name.
		const other = 4321
		curl, err := filepath.EvalSymlinks(testenv.NeedTool(t, "curl"))
		if err != nil {
			t.Fatal(err)
		}
		run := func(cred *syscall.Credential) string {
			t.Helper()
			cmd := exec.Command(curl, "-q", "-sS", "--max-time", "5", "--noproxy", "*", "--interface", attestIP, "http://"+who+"/")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
			cmd.Env = []string{"PATH=/usr/bin:/bin"}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("curl: %v: %s", err, out)
			}
			return strings.TrimSpace(string(out))
		}
		register(&Attest{UID: intp(other), Path: curl})
		if got := run(&syscall.Credential{Uid: other, Gid: other}); got != "id="+attestID {
			t.Errorf("curl as uid %d: %q, want id=%s", other, got, attestID)
		}
		if got := run(nil); got != "id=" {
			t.Errorf("curl as root: %q, want no identity", got)
		}
		expect(t, "") // and this process is neither curl nor uid 4321
	})
}
