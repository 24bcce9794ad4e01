package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// Istio task conformance (issue 11, "Tests"): each row follows one of
// Istio's task pages (request routing, fault injection, traffic shifting,
// request timeouts, mirroring, authorization for HTTP traffic) with
// documents of our own for a bookinfo of our own, in its own namespace,
// and checks the outcome the task page describes, within a stated
// tolerance, over HTTP/1.1 and h2c. The bookinfo backends behave as the
// sample's: productpage calls details and reviews (3 s timeout, reviews
// tried twice), reviews v2 and v3 call ratings (10 s timeout), and every
// call passes the end-user header on. productpage runs on the client's
// node, the rest on the server's. VIP ranges 127.206/16 (server) and
// 127.207/16 (client); backends listen on 127.208.<row>.<n>.

// taskRow is one row: Istio documents (NS is the row's namespace) and
// requests with the outcome the task page gives.
type taskRow struct {
	task, name string
	docs       string
	steps      []taskStep
}

// taskStep sends n requests (default 1) to svc (default productpage) and
// checks each answer. An answer is observed as its body when 200 (a page:
// "productpage-v1 details=details-v1 reviews=reviews-v2
// ratings=ratings-v1"; "-": not called, "unavailable": the call failed),
// else as its status code.
type taskStep struct {
	svc    string
	from   string // "" (an anonymous client) or "productpage" (from its address)
	method string
	user   string // the end-user header
	cookie string // the Cookie header
	n      int
	// want gives each observed answer's share of the n answers, within
	// tol; an answer not in want fails the step.
	want map[string]float64
	tol  float64
	// minTime, maxTime bound each answer's time (0: no bound).
	minTime, maxTime time.Duration
	// mirrored is the count of copies a backend ("httpbin-v2") gets of
	// the step's requests (waited for, then exact), each with a Host
	// ending in "-shadow".
	mirrored map[string]int
}

// bookinfoBackend is one version of a service of the sample; it runs on
// node "cli" (the client's) or "srv".
type bookinfoBackend struct{ svc, version, node string }

var bookinfoBackends = []bookinfoBackend{
	{"productpage", "v1", "cli"}, {"details", "v1", "srv"}, {"reviews", "v1", "srv"}, {"reviews", "v2", "srv"},
	{"reviews", "v3", "srv"}, {"ratings", "v1", "srv"}, {"httpbin", "v1", "srv"}, {"httpbin", "v2", "srv"},
}

// taskApp is one row's bookinfo: its backends and what they saw.
type taskApp struct {
	ns       string
	svcs     []string // the row's services
	ips      map[string]string
	cli, srv atomic.Pointer[Agent]

	mu    sync.Mutex
	hits  map[string]int      // backend ("httpbin-v2") -> requests
	hosts map[string][]string // backend -> the Host of each request
}

const taskProbe = "/probe" // the readiness probes' path: not counted, no calls

// vipURL is svc's URL through agent a.
func (app *taskApp) vipURL(a *Agent, svc string) string {
	return fmt.Sprintf("http://%s:9080/", a.view.Load().services[app.ns+"/"+svc].vip4)
}

// call GETs url (svc's VIP) over c, passing user on, as bookinfo's
// services call each other: up to tries attempts, each within timeout. It
// answers the body of the first 200, else "unavailable".
func call(c *http.Client, url, svc, user string, tries int, timeout time.Duration) string {
	for range tries {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		req.Host = svc + ":9080"
		if user != "" {
			req.Header.Set("End-User", user)
		}
		resp, err := c.Do(req)
		if err == nil {
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == 200 {
				cancel()
				return string(b)
			}
		}
		cancel()
	}
	return unavail
}

// startBackend serves b on app's address for it, over HTTP/1.1 and h2c.
func (app *taskApp) startBackend(t *testing.T, b bookinfoBackend) int {
	name := b.svc + "-" + b.version
	ip := app.ips[name]
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	out := &http.Client{Transport: &http.Transport{DialContext: dialFrom(ip)}}
	t.Cleanup(out.CloseIdleConnections)
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == taskProbe {
			io.WriteString(w, name)
			return
		}
		app.mu.Lock()
		app.hits[name]++
		app.hosts[name] = append(app.hosts[name], r.Host)
		app.mu.Unlock()
		user := r.Header.Get("End-User")
		switch name {
		case "productpage-v1":
			cli := app.cli.Load()
			details := call(out, app.vipURL(cli, "details"), "details", user, 1, 3*time.Second)
			reviews := call(out, app.vipURL(cli, "reviews"), "reviews", user, 2, 3*time.Second)
			ratings := "-"
			if i := strings.Index(reviews, " ratings="); i >= 0 {
				reviews, ratings = reviews[:i], reviews[i+len(" ratings="):]
			}
			io.WriteString(w, page(details, reviews, ratings))
		case "reviews-v2", "reviews-v3":
			fmt.Fprintf(w, "%s ratings=%s", name, call(out, app.vipURL(app.srv.Load(), "ratings"), "ratings", user, 1, 10*time.Second))
		default:
			io.WriteString(w, name)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// TestIstioTasks runs istioTaskRows: each row's documents and bookinfo in
// its own namespace, served on a server agent and requested through a
// client agent; the rows run in parallel.
func TestIstioTasks(t *testing.T) {
	runIstioTasks(t, istioTaskRows)
}

func runIstioTasks(t *testing.T, rows []taskRow) {
	cp := startControl(t, t.TempDir(), "")
	byNode := map[string][]Workload{}
	apps := make([]*taskApp, len(rows))
	policies := 0
	for i, row := range rows {
		app := &taskApp{ns: fmt.Sprintf("bookinfo%d", i), ips: map[string]string{}, hits: map[string]int{}, hosts: map[string][]string{}}
		apps[i] = app
		app.svcs = []string{"productpage", "details", "reviews", "ratings"}
		if strings.Contains(row.docs, "httpbin") {
			app.svcs = []string{"httpbin"}
		}
		for _, svc := range app.svcs {
			// Each service runs as bookinfo's service account for it.
			apply(t, cp, fmt.Sprintf(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":%q,"namespace":%q},
	"spec":{"ports":[{"name":"http","port":9080,"protocol":"http"}],"balancer":"round-robin","identity":{"serviceAccounts":["bookinfo-%s"]}}}`,
				svc, app.ns, svc))
		}
		apply(t, cp, strings.ReplaceAll(row.docs, "NS", app.ns))
		policies += strings.Count(row.docs, "kind: AuthorizationPolicy")
		for k, b := range bookinfoBackends {
			if !slices.Contains(app.svcs, b.svc) {
				continue
			}
			name := b.svc + "-" + b.version
			app.ips[name] = fmt.Sprintf("127.208.%d.%d", i, k+1)
			// Workload names are unique per agent, whatever their namespace.
			w := Workload{Name: name + "-" + app.ns, Service: b.svc, Namespace: app.ns, ServiceAccount: "bookinfo-" + b.svc, Address: app.ips[name],
				Labels: map[string]string{"version": b.version}, Ports: []api.EndpointPort{{Name: "http", Port: app.startBackend(t, b)}}}
			byNode[b.node] = append(byNode[b.node], w)
		}
	}
	srv := startAgent(t, agentOpts{name: "srv", site: "s1", region: "r1", vipOctet: 206, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: byNode["srv"]})
	cli := startAgent(t, agentOpts{name: "cli", site: "s1", region: "r1", vipOctet: 207, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: byNode["cli"]})
	for _, app := range apps {
		app.cli.Store(cli)
		app.srv.Store(srv)
	}
	start := time.Now()
	waitLong(t, "every row's services, healthy endpoints, routes, policies and identities", func() bool {
		for i, app := range apps {
			for _, a := range []*Agent{cli, srv} {
				v := a.view.Load()
				for _, svc := range app.svcs {
					sv := v.services[app.ns+"/"+svc]
					n := 0
					for _, b := range bookinfoBackends {
						if b.svc == svc {
							n++
						}
					}
					if sv == nil || len(sv.endpoints) != n || !sv.vip4.IsValid() {
						return false
					}
					for _, ev := range sv.endpoints {
						if !ev.healthy {
							return false
						}
					}
					if strings.Contains(rows[i].docs, "kind: VirtualService\nmetadata: {name: "+svc+",") && sv.route == nil {
						return false
					}
				}
				if v.authz.Len() != policies {
					return false
				}
			}
			for name, ip := range app.ips {
				a := srv
				if name == "productpage-v1" {
					a = cli
				}
				if a.view.Load().ids[netip.MustParseAddr(ip)] == "" {
					return false
				}
			}
		}
		return true
	})
	t.Logf("the mesh is ready after %v", time.Since(start).Round(time.Millisecond))
	for i, row := range rows {
		app := apps[i]
		t.Run(row.task+": "+row.name, func(t *testing.T) {
			t.Parallel()
			for _, proto := range []string{"HTTP/1.1", "h2c"} {
				for j, st := range row.steps {
					runTaskStep(t, app, fmt.Sprintf("step %d %s", j+1, proto), proto, st)
				}
			}
		})
	}
}

// waitLong is waitFor with 60 s: the rows' many services take a while to
// be known, healthy, by both agents on a busy machine.
func waitLong(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, 60*time.Second, what, cond)
}

// runTaskStep sends st's requests over proto and checks the answers;
// errors start with step.
func runTaskStep(t *testing.T, app *taskApp, step, proto string, st taskStep) {
	t.Helper()
	svc, method := st.svc, st.method
	if svc == "" {
		svc = "productpage"
	}
	if method == "" {
		method = "GET"
	}
	from := "127.0.0.1"
	if st.from != "" {
		from = app.ips[st.from+"-v1"]
	}
	tr := &http.Transport{DialContext: dialFrom(from)}
	if proto == "h2c" {
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		tr.Protocols = &protos
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Timeout: 20 * time.Second, Transport: tr}
	url := app.vipURL(app.cli.Load(), svc)
	waitFor(t, "the listener of "+svc, func() bool {
		resp, err := c.Get(url + taskProbe[1:])
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	app.mu.Lock()
	before := map[string]int{}
	for b, n := range app.hits {
		before[b] = n
	}
	hostsFrom := map[string]int{}
	for b, hs := range app.hosts {
		hostsFrom[b] = len(hs)
	}
	app.mu.Unlock()
	n := max(st.n, 1)
	got := map[string]int{}
	desc := fmt.Sprintf("%s: %s %s from %q user %q", step, method, svc, st.from, st.user)
	for range n {
		req, err := http.NewRequest(method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = svc + ":9080"
		if st.user != "" {
			req.Header.Set("End-User", st.user)
		}
		if st.cookie != "" {
			req.Header.Set("Cookie", st.cookie)
		}
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", desc, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		ans := string(b)
		if resp.StatusCode != 200 {
			ans = fmt.Sprint(resp.StatusCode)
		}
		got[ans]++
		if took < st.minTime || (st.maxTime > 0 && took > st.maxTime) {
			t.Errorf("%s: answered %q after %v, want within [%v, %v]", desc, ans, took.Round(time.Millisecond), st.minTime, st.maxTime)
		}
	}
	for ans, k := range got {
		if _, ok := st.want[ans]; !ok {
			t.Errorf("%s: %d of %d answers %q, want none; all: %v", desc, k, n, ans, got)
		}
	}
	for ans, share := range st.want {
		if s := float64(got[ans]) / float64(n); math.Abs(s-share) > st.tol+1e-9 {
			t.Errorf("%s: %d of %d answers %q (%.3f), want %.3f ± %.2f; all: %v", desc, got[ans], n, ans, s, share, st.tol, got)
		}
	}
	if len(st.mirrored) == 0 {
		return
	}
	delta := func(b string) int {
		app.mu.Lock()
		defer app.mu.Unlock()
		return app.hits[b] - before[b]
	}
	defer func() {
		if t.Failed() { // what the copies became (a wait that ran out says only how many came)
			var buf bytes.Buffer
			app.cli.Load().cfg.Metrics.WritePrometheus(&buf)
			for _, l := range strings.Split(buf.String(), "\n") {
				if strings.HasPrefix(l, "fogmesh_http_mirror_requests_total") {
					t.Logf("%s: %s", desc, l)
				}
			}
		}
	}()
	for b, want := range st.mirrored {
		if want > 0 {
			waitFor(t, fmt.Sprintf("%d requests at %s", want, b), func() bool { return delta(b) >= want })
		}
	}
	for b, want := range st.mirrored {
		if d := delta(b); d != want {
			t.Errorf("%s: %s got %d requests, want %d", desc, b, d, want)
		}
		if b == "httpbin-v1" {
			continue
		}
		app.mu.Lock()
		for _, h := range app.hosts[b][hostsFrom[b]:] {
			if host, _, _ := net.SplitHostPort(h); !strings.HasSuffix(host, "-shadow") {
				t.Errorf("%s: a copy at %s has Host %q, want its host with -shadow appended", desc, b, h)
			}
		}
		app.mu.Unlock()
	}
}
