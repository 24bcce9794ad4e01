package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/pathnorm"
)

// startFileServer serves a lenient "file server" on a loopback port
// (HTTP/1.1 and h2c): like http.FileServer and most frameworks it decodes
// the path (%2F included) and cleans it, and serves "ADMIN SECRET" for
// anything that lands under /admin/. X-Got-Path is the request target as
// it arrived.
func startFileServer(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Got-Path", r.RequestURI)
		if strings.HasPrefix(path.Clean("/"+r.URL.Path), "/admin/") {
			io.WriteString(w, "ADMIN SECRET")
			return
		}
		io.WriteString(w, "public")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// startAgentConfig runs an agent with cfg (the test defaults filled in).
func startAgentConfig(t *testing.T, cfg Config) *Agent {
	t.Helper()
	cfg.MeshAddr, cfg.DNSAddr, cfg.AdminAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.StateDir, cfg.Upstreams, cfg.Insecure = t.TempDir(), []string{}, true
	cfg.HealthInterval = Duration(200 * time.Millisecond)
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

type pathResult struct {
	code int
	got  string // X-Got-Path: what the workload received ("" if it got nothing)
	body string
}

// rawH1 sends method and target as they are in an HTTP/1.1 request line.
func rawH1(t *testing.T, addr, method, target string) pathResult {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: files\r\nConnection: close\r\n\r\n", method, target)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("GET %s over HTTP/1.1: %v", target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return pathResult{resp.StatusCode, resp.Header.Get("X-Got-Path"), string(b)}
}

// h2c sends target as the :path of a cleartext HTTP/2 request.
func h2c(t *testing.T, addr, method, target string) pathResult {
	t.Helper()
	dec, err := url.PathUnescape(target)
	if err != nil {
		t.Fatal(err)
	}
	u := &url.URL{Scheme: "http", Host: addr, Path: dec, RawPath: target}
	if u.RequestURI() != target {
		t.Fatalf("the h2c client would send %q, not %q", u.RequestURI(), target)
	}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	defer tr.CloseIdleConnections()
	req := &http.Request{Method: method, URL: u, Host: "files", Header: http.Header{}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := tr.RoundTrip(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("GET %s over h2c: %v", target, err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("h2c: answered over %s", resp.Proto)
	}
	b, _ := io.ReadAll(resp.Body)
	return pathResult{resp.StatusCode, resp.Header.Get("X-Got-Path"), string(b)}
}

// TestAuthorizationOnNormalisedPaths sends the path-confusion attacks of
// issue 9 (finding 3) over HTTP/1.1 (raw request lines) and h2c, to a
// remote endpoint (decided by the destination agent) and a local one
// (decided by the client's agent), for Istio's default option BASE and
// for DECODE_AND_MERGE_SLASHES. The workload is a lenient file server
// that decodes %2F and cleans the path. Whatever the verdict, the workload
// receives exactly the path that was authorized.
func TestAuthorizationOnNormalisedPaths(t *testing.T) {
	type want struct {
		code int
		got  string // the path the workload must have received, for 200
	}
	type attack struct {
		target string
		h1only bool // not expressible as an h2 :path
		// files: ALLOW /public/*; dfiles: DENY /admin*
		svc  string
		base want
		dams want // DECODE_AND_MERGE_SLASHES
	}
	deny := want{code: 403}
	bad := want{code: 400}
	ok := func(p string) want { return want{200, p} }
	attacks := []attack{
		{"/public/a.txt", false, "files", ok("/public/a.txt"), ok("/public/a.txt")},
		{"/public/../admin/secret.txt", false, "files", deny, deny},
		{"/public/%2e%2e/admin/secret.txt", false, "files", deny, deny},
		{"/public/%2E./admin/secret.txt", false, "files", deny, deny},
		{"/public%2f..%2fadmin/secret.txt", false, "files", deny, deny},
		// BASE keeps %2F as data: the path stays below /public, and the
		// workload gets it as it was authorized (a workload that decodes
		// %2F needs DECODE_AND_MERGE_SLASHES, as with Istio).
		{"/public/..%2fadmin/secret.txt", false, "files", ok("/public/..%2Fadmin/secret.txt"), deny},
		{"http://x/public/../admin/secret.txt", true, "files", deny, deny},
		{"/public/%2e/%61.txt", false, "files", ok("/public/a.txt"), ok("/public/a.txt")},
		{`/public\..\admin/secret.txt`, true, "files", deny, deny},
		{"/public/a%00.txt", true, "files", bad, bad},
		{"/public/a%zz.txt", true, "files", bad, bad},
		{"/public/a.txt", false, "dfiles", ok("/public/a.txt"), ok("/public/a.txt")},
		{"/./admin/secret.txt", false, "dfiles", deny, deny},
		{"/public/../admin/secret.txt", false, "dfiles", deny, deny},
		{"/%61dmin/secret.txt", false, "dfiles", deny, deny},
		// BASE does not merge slashes (Istio): "//admin" is not "/admin".
		{"//admin/secret.txt", false, "dfiles", ok("//admin/secret.txt"), deny},
		{"/public/..%2Fadmin/secret.txt", false, "dfiles", ok("/public/..%2Fadmin/secret.txt"), deny},
	}
	for _, mode := range []pathnorm.Mode{pathnorm.Base, pathnorm.DecodeAndMergeSlashes} {
		t.Run(mode.String(), func(t *testing.T) {
			cp := startControl(t, t.TempDir(), "")
			remote, local := startFileServer(t), startFileServer(t)
			var docs []string
			for i, s := range []string{"files", "dfiles", "lfiles", "ldfiles"} {
				docs = append(docs, fmt.Sprintf(`apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: %s, namespace: demo}
spec: {ports: [{name: http, port: %d, protocol: http}]}`, s, 19671+i))
			}
			for _, s := range []string{"files", "lfiles"} {
				docs = append(docs, fmt.Sprintf(`apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: %s-public, namespace: demo}
spec: {service: %s, rules: [{to: [{paths: ["/public/*"]}]}]}`, s, s))
			}
			for _, s := range []string{"dfiles", "ldfiles"} {
				docs = append(docs, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %s-no-admin, namespace: demo}
spec:
  selector: {matchLabels: {app: %s}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]`, s, s))
			}
			apply(t, cp, strings.Join(docs, "\n---\n"))
			wl := func(svc string, port int) Workload {
				return Workload{Name: svc + "-1", Service: svc, Namespace: "demo", Ports: []api.EndpointPort{{Name: "http", Port: port}}}
			}
			octet := 244
			if mode != pathnorm.Base {
				octet = 246
			}
			srv := startAgentConfig(t, Config{Node: NodeConfig{Name: "srv", Site: "s1", Region: "r1"}, Control: []string{cp.SyncAddr()},
				VIPRange: fmt.Sprintf("127.%d.0.0/16", octet), PathNormalization: mode,
				Workloads: []Workload{wl("files", remote), wl("dfiles", remote)}})
			cli := startAgentConfig(t, Config{Node: NodeConfig{Name: "cli", Site: "s1", Region: "r1"}, Control: []string{cp.SyncAddr()},
				VIPRange: fmt.Sprintf("127.%d.0.0/16", octet+1), PathNormalization: mode,
				Workloads: []Workload{wl("lfiles", local), wl("ldfiles", local)}})
			for _, s := range []string{"demo/files", "demo/dfiles", "demo/lfiles", "demo/ldfiles"} {
				waitFor(t, s+" on the client node", func() bool {
					eps := endpointsOf(cli, s)
					return len(eps) == 1 && eps[0].Healthy
				})
			}
			waitFor(t, "policies on both nodes", func() bool {
				return cli.view.Load().authz.Len() == 4 && srv.view.Load().authz.Len() == 4
			})
			addr := map[string]string{}
			for i, s := range []string{"files", "dfiles", "lfiles", "ldfiles"} {
				r, ok := cli.LookupService("demo", s)
				if !ok {
					t.Fatalf("no VIP for %s", s)
				}
				addr[s] = fmt.Sprintf("%s:%d", r.V4, 19671+i)
			}
			waitFor(t, "VIP listeners", func() bool {
				for _, a := range addr {
					c, err := net.Dial("tcp", a)
					if err != nil {
						return false
					}
					c.Close()
				}
				return true
			})
			for _, at := range attacks {
				w := at.base
				if mode == pathnorm.DecodeAndMergeSlashes {
					w = at.dams
				}
				for _, where := range []string{"remote", "local"} {
					svc := at.svc
					if where == "local" {
						svc = "l" + svc
					}
					clients := map[string]func(*testing.T, string, string, string) pathResult{"HTTP/1.1": rawH1, "h2c": h2c}
					for proto, send := range clients {
						if proto == "h2c" && at.h1only {
							continue
						}
						r := send(t, addr[svc], "GET", at.target)
						if r.code != w.code || strings.Contains(r.body, "ADMIN SECRET") && w.code != 200 || w.code == 200 && r.got != w.got {
							t.Errorf("%s %s endpoint, %s %s: %d, workload got %q (%q); want %d, %q",
								proto, where, svc, at.target, r.code, r.got, r.body, w.code, w.got)
						}
						if w.code != 200 && r.got != "" {
							t.Errorf("%s %s endpoint, %s %s: reached the workload as %q", proto, where, svc, at.target, r.got)
						}
					}
				}
			}
			// A method must be upper case (Istio), or a DENY on GET could
			// be walked around with "get".
			for _, svc := range []string{"files", "lfiles"} {
				for proto, send := range map[string]func(*testing.T, string, string, string) pathResult{"HTTP/1.1": rawH1, "h2c": h2c} {
					if r := send(t, addr[svc], "get", "/public/a.txt"); r.code != 400 || r.got != "" {
						t.Errorf("%s %s: method get: %d, workload got %q; want 400", proto, svc, r.code, r.got)
					}
				}
			}
		})
	}
}

// TestRoutesMatchNormalisedPath: route rules match the normalised path,
// the one authorization matches and the workload gets, so a rule for
// /admin/ catches every spelling that reaches /admin/ (and "/public/..%2F"
// stays a /public path under BASE, for routes as for policies).
func TestRoutesMatchNormalisedPath(t *testing.T) {
	sv := &serviceView{route: &api.Route{Spec: api.RouteSpec{Rules: []api.RouteRule{
		{Name: "admin", Match: []api.RouteMatch{{Path: &api.StringMatch{Prefix: "/admin/"}}}},
		{Name: "public", Match: []api.RouteMatch{{Path: &api.StringMatch{Prefix: "/public/"}}}},
	}}}}
	for _, c := range []struct {
		target string
		mode   pathnorm.Mode
		rule   string
	}{
		{"/admin/x", pathnorm.Base, "admin"},
		{"/public/../admin/x", pathnorm.Base, "admin"},
		{"/public/%2e%2e/admin/x", pathnorm.Base, "admin"},
		{"http://h/public/../admin/x", pathnorm.Base, "admin"},
		{"/%61dmin/x", pathnorm.Base, "admin"},
		{"/public/..%2fadmin/x", pathnorm.Base, "public"},
		{"/public%2f..%2fadmin/x", pathnorm.Base, ""},
		{"/public%2f..%2fadmin/x", pathnorm.DecodeAndMergeSlashes, "admin"},
		{"//admin/x", pathnorm.Base, ""},
		{"//admin/x", pathnorm.MergeSlashes, "admin"},
	} {
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + c.target + " HTTP/1.1\r\nHost: h\r\n\r\n")))
		if err != nil {
			t.Fatal(err)
		}
		a := &Agent{cfg: Config{PathNormalization: c.mode}}
		if err := a.normalizeRequest(req); err != nil {
			t.Fatalf("%s: %v", c.target, err)
		}
		got := ""
		if r := sv.matchRule(req); r != nil {
			got = r.Name
		}
		if got != c.rule {
			t.Errorf("%v %s (normalised %s): rule %q, want %q", c.mode, c.target, authzPath(req), got, c.rule)
		}
	}
}

// TestNormalizePathCleanNoAlloc: the common request, whose path is
// already normal, costs the fast path no allocation to normalise.
func TestNormalizePathCleanNoAlloc(t *testing.T) {
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET /api/v1/orders/42?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{}
	if n := testing.AllocsPerRun(100, func() {
		if err := a.normalizeRequest(req); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("%v allocations", n)
	}
}
