package agent

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
)

// Retry conformance (issue 11 item 1): Istio's retry semantics end to end,
// through a client agent and the agent of the endpoints, against backends
// that fail on demand. VIP ranges 127.220/16 and 127.221/16.

// failScript is shared by the endpoints of one test: a request's attempts
// are counted by its X-Test-Id across every endpoint, so "fail once" means
// the first attempt fails wherever it lands.
type failScript struct {
	mu       sync.Mutex
	attempts map[string]int // X-Test-Id → attempts seen
}

func (s *failScript) attemptsOf(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts[id]
}

// startFailing serves on a loopback port (HTTP/1.1 and h2c). A request's
// headers say how its attempts fail: X-Fail (a status) for the first
// X-Fail-Times attempts (default 1; "all": every one), or X-Slow-First (a
// duration) before the first attempt's answer. Failures answer
// "upstream-fail NAME" with X-Upstream: NAME; successes "NAME body=BODY".
func startFailing(t *testing.T, name string, s *failScript) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		id := r.Header.Get("X-Test-Id")
		s.mu.Lock()
		s.attempts[id]++
		n := s.attempts[id]
		s.mu.Unlock()
		if d, err := time.ParseDuration(r.Header.Get("X-Slow-First")); err == nil && n == 1 {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(d):
			}
		}
		if g := r.Header.Get("X-Fail-Grpc"); g != "" && n == 1 {
			// A trailers-only gRPC answer: the status in the headers.
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Grpc-Status", g)
			return
		}
		if code, err := strconv.Atoi(r.Header.Get("X-Fail")); err == nil {
			times, err := strconv.Atoi(r.Header.Get("X-Fail-Times"))
			if err != nil {
				times = 1
			}
			if r.Header.Get("X-Fail-Times") == "all" || n <= times {
				w.Header().Set("X-Upstream", name)
				w.WriteHeader(code)
				fmt.Fprintf(w, "upstream-fail %s", name)
				return
			}
		}
		fmt.Fprintf(w, "%s body=%s", name, body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// retryMesh is a control plane, an agent serving each service by v1 and
// v2 (startFailing), and a client agent.
type retryMesh struct {
	script *failScript
	client *Agent
	ids    atomic.Int64
	http1  *http.Client
	h2c    *http.Client
}

// startRetryMesh applies each service's documents (SVC is replaced by the
// service's name) and waits until the client knows both endpoints.
func startRetryMesh(t *testing.T, port0 int, docs map[string]string) *retryMesh {
	m := &retryMesh{script: &failScript{attempts: map[string]int{}}}
	cp := startControl(t, t.TempDir(), "")
	var workloads []Workload
	i := 0
	for svc, d := range docs {
		apply(t, cp, httpSvcDocLB(svc, port0+i, "http", "round-robin"))
		if d != "" {
			apply(t, cp, strings.NewReplacer("SVC", svc, "PORT", fmt.Sprint(port0+i)).Replace(d))
		}
		w1 := webWorkload(svc, svc+"-v1", startFailing(t, "v1", m.script))
		w2 := webWorkload(svc, svc+"-v2", startFailing(t, "v2", m.script))
		w1.Labels, w2.Labels = map[string]string{"version": "v1"}, map[string]string{"version": "v2"}
		workloads = append(workloads, w1, w2)
		i++
	}
	startAgent(t, agentOpts{name: "srv", site: "s1", region: "r1", vipOctet: 220, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(), workloads: workloads})
	m.client = startAgent(t, agentOpts{name: "cli", site: "s1", region: "r1", vipOctet: 221, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	waitFor(t, "every service's endpoints and routes", func() bool {
		v := m.client.view.Load()
		for svc, d := range docs {
			sv := v.services["demo/"+svc]
			if sv == nil || len(sv.endpoints) != 2 || (d != "" && strings.Contains(d, "VirtualService") && sv.route == nil) {
				return false
			}
		}
		return true
	})
	tr1 := &http.Transport{}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr2 := &http.Transport{Protocols: &protos}
	t.Cleanup(tr1.CloseIdleConnections)
	t.Cleanup(tr2.CloseIdleConnections)
	m.http1 = &http.Client{Timeout: 10 * time.Second, Transport: tr1}
	m.h2c = &http.Client{Timeout: 10 * time.Second, Transport: tr2}
	return m
}

// url is the base URL of svc's VIP port.
func (m *retryMesh) url(t *testing.T, svc string, port int) string {
	sv := m.client.view.Load().services["demo/"+svc]
	vip := api.VIPFor(netip.MustParsePrefix("127.221.0.0/16"), sv.svc.Status.VIPIndex)
	base := fmt.Sprintf("http://%s:%d", vip, port)
	waitFor(t, "listener of "+svc, func() bool {
		resp, err := m.http1.Get(base + "/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	return base
}

// retryReq is one request and what Istio's documentation says it gets.
type retryReq struct {
	method, body string
	fail         string // X-Fail: the failing attempts' status
	failTimes    string // X-Fail-Times (default 1)
	slowFirst    string // X-Slow-First
	failGrpc     string // X-Fail-Grpc: the first attempt's grpc-status
	wantStatus   int
	wantBody     string        // a prefix of the answer's body (a 200's must end in " body=" and the request's body)
	wantAttempts int           // attempts the endpoints saw (0: not checked)
	within       time.Duration // bound on the answer's time (0: none)
}

// do sends rq over c and checks the answer.
func (m *retryMesh) do(t *testing.T, c *http.Client, url string, rq retryReq) {
	t.Helper()
	method := rq.method
	if method == "" {
		method = "GET"
	}
	var body io.Reader
	if rq.body != "" {
		body = strings.NewReader(rq.body)
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprint(m.ids.Add(1))
	req.Header.Set("X-Test-Id", id)
	for k, v := range map[string]string{"X-Fail": rq.fail, "X-Fail-Times": rq.failTimes, "X-Slow-First": rq.slowFirst, "X-Fail-Grpc": rq.failGrpc} {
		if v != "" {
			req.Header.Set(k, v)
		}
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	bodyLost := rq.body != "" && resp.StatusCode == 200 && !strings.HasSuffix(string(b), " body="+rq.body)
	if resp.StatusCode != rq.wantStatus || !strings.HasPrefix(string(b), rq.wantBody) || bodyLost {
		t.Errorf("%s %s fail=%s×%s: got %d %q, want %d %q…", method, url, rq.fail, rq.failTimes, resp.StatusCode, b, rq.wantStatus, rq.wantBody)
	}
	if rq.wantAttempts > 0 {
		if got := m.script.attemptsOf(id); got != rq.wantAttempts {
			t.Errorf("%s %s fail=%s×%s: endpoints saw %d attempts, want %d", method, url, rq.fail, rq.failTimes, got, rq.wantAttempts)
		}
	}
	if rq.within > 0 && took > rq.within {
		t.Errorf("%s %s slow first attempt: answered after %v, want within %v", method, url, took, rq.within)
	}
}

// retryVS is a VirtualService routing SVC to subset (all endpoints when
// ""), with the given retries field ("" for none), and the subsets.
func retryVS(subset, retries string) string {
	dest := "{host: SVC}"
	if subset != "" {
		dest = "{host: SVC, subset: " + subset + "}"
	}
	doc := "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: SVC, namespace: demo}\nspec:\n  hosts: [SVC.demo.svc.cluster.local]\n  http:\n  - route: [{destination: " + dest + "}]\n"
	if retries != "" {
		doc += "    retries: " + retries + "\n"
	}
	return doc + subsetsDR
}

// fogmeshRetries is SVC's fogmesh Service document with the given retry
// policy (JSON); PORT is the service's port.
func fogmeshRetries(policy string) string {
	return `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"SVC","namespace":"demo"},
	"spec":{"ports":[{"name":"web","port":PORT,"protocol":"http"}],"balancer":"round-robin","retries":` + policy + `}}`
}

type retryCase struct {
	name string
	docs string
	reqs []retryReq
}

var retryCases = []retryCase{
	{name: "5xx retries a 500", docs: retryVS("", "{attempts: 2, retryOn: 5xx}"), reqs: []retryReq{
		{fail: "500", wantStatus: 200, wantAttempts: 2},
		{fail: "501", wantStatus: 200, wantAttempts: 2},
	}},
	{name: "no retries block: Istio's default policy retries a 503", docs: retryVS("", ""), reqs: []retryReq{
		{fail: "503", wantStatus: 200, wantAttempts: 2},
		{fail: "503", failTimes: "2", wantStatus: 200, wantAttempts: 3},
		{fail: "500", wantStatus: 500, wantBody: "upstream-fail", wantAttempts: 1}, // not in the default policy
		{method: "POST", body: "order", fail: "503", wantStatus: 200, wantBody: "v", wantAttempts: 2},
		{failGrpc: "14", wantStatus: 200, wantBody: "v", wantAttempts: 2}, // UNAVAILABLE
		{failGrpc: "13", wantStatus: 200, wantBody: "", wantAttempts: 1},  // INTERNAL: not in the default policy
	}},
	{name: "attempts without retryOn: Istio's default conditions", docs: retryVS("", "{attempts: 3}"), reqs: []retryReq{
		{fail: "503", failTimes: "3", wantStatus: 200, wantAttempts: 4},
		{fail: "502", wantStatus: 502, wantAttempts: 1},
	}},
	{name: "attempts 0 disables retries", docs: retryVS("", "{attempts: 0, retryOn: 5xx}"), reqs: []retryReq{
		{fail: "503", wantStatus: 503, wantAttempts: 1},
	}},
	{name: "one-endpoint subset retries the same endpoint", docs: retryVS("v1", "{attempts: 2, retryOn: 5xx}"), reqs: []retryReq{
		{fail: "503", wantStatus: 200, wantBody: "v1", wantAttempts: 2},
		{fail: "500", failTimes: "2", wantStatus: 200, wantBody: "v1", wantAttempts: 3},
	}},
	{name: "retries exhausted return the upstream's last response", docs: retryVS("", ""), reqs: []retryReq{
		{fail: "503", failTimes: "all", wantStatus: 503, wantBody: "upstream-fail", wantAttempts: 3},
	}},
	{name: "POST with retryOn 5xx is retried with its body", docs: retryVS("", "{attempts: 2, retryOn: 5xx}"), reqs: []retryReq{
		{method: "POST", body: "order #1", fail: "500", wantStatus: 200, wantAttempts: 2},
		{method: "PUT", body: strings.Repeat("x", 64<<10), fail: "500", wantStatus: 200, wantAttempts: 2}, // the buffer's limit
		{method: "POST", body: strings.Repeat("x", 64<<10+1), fail: "500", wantStatus: 500, wantAttempts: 1},
	}},
	{name: "retriable status codes listed in retryOn", docs: retryVS("", "{attempts: 2, retryOn: '429,retriable-4xx'}"), reqs: []retryReq{
		{fail: "429", wantStatus: 200, wantAttempts: 2},
		{fail: "409", wantStatus: 200, wantAttempts: 2},
		{fail: "503", wantStatus: 503, wantAttempts: 1},
	}},
	{name: "perTryTimeout retries a slow attempt", docs: retryVS("", "{attempts: 2, perTryTimeout: 300ms, retryOn: 5xx}"), reqs: []retryReq{
		{slowFirst: "4s", wantStatus: 200, wantAttempts: 2, within: 2500 * time.Millisecond},
	}},
	{name: "perTryTimeout without a condition for it answers 504", docs: retryVS("", "{attempts: 2, perTryTimeout: 300ms, retryOn: connect-failure}"), reqs: []retryReq{
		{slowFirst: "4s", wantStatus: 504, wantAttempts: 1, within: 2500 * time.Millisecond},
	}},
	{name: "fogmesh default retries no POST", docs: fogmeshRetries(`{"attempts":2,"on5xx":true}`), reqs: []retryReq{
		{fail: "503", wantStatus: 200, wantAttempts: 2},
		{method: "POST", body: "order", fail: "503", wantStatus: 503, wantBody: "upstream-fail", wantAttempts: 1},
	}},
	{name: "fogmesh methods any retries a POST", docs: fogmeshRetries(`{"attempts":2,"on":"5xx","methods":"any"}`), reqs: []retryReq{
		{method: "POST", body: "order", fail: "500", wantStatus: 200, wantAttempts: 2},
	}},
}

// TestRetryConformance runs each case over HTTP/1.1 (the fast path) and
// h2c (the ReverseProxy path).
func TestRetryConformance(t *testing.T) {
	const port0 = 19720
	docs := map[string]string{}
	for i, c := range retryCases {
		docs[fmt.Sprintf("rt%d", i)] = c.docs
	}
	m := startRetryMesh(t, port0, docs)
	// startRetryMesh numbers ports in map order: find each service's.
	ports := map[string]int{}
	for svc := range docs {
		sv := m.client.view.Load().services["demo/"+svc]
		ports[svc] = sv.svc.Spec.Ports[0].Port
	}
	for i, c := range retryCases {
		t.Run(c.name, func(t *testing.T) {
			svc := fmt.Sprintf("rt%d", i)
			base := m.url(t, svc, ports[svc])
			for _, cl := range []*http.Client{m.http1, m.h2c} {
				for _, rq := range c.reqs {
					m.do(t, cl, base+"/", rq)
				}
			}
		})
	}
}

// TestRetryBudgetPerService: a service whose every request fails spends
// its own retry budget only; another service's requests that fail once
// are all retried as its own budget allows (issue 11: one agent-wide
// budget cut them to 4/20).
func TestRetryBudgetPerService(t *testing.T) {
	const port0 = 19760
	// No outlier ejection: details' endpoints stay in rotation, so every
	// one of its requests asks for retries.
	vs := strings.Replace(retryVS("", "{attempts: 2, retryOn: 5xx}"), "  host: SVC\n", "  host: SVC\n  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 0}}\n", 1)
	m := startRetryMesh(t, port0, map[string]string{"details": vs, "reviews": vs})
	ports := map[string]int{}
	for _, svc := range []string{"details", "reviews"} {
		ports[svc] = m.client.view.Load().services["demo/"+svc].svc.Spec.Ports[0].Port
	}
	details, reviews := m.url(t, "details", ports["details"]), m.url(t, "reviews", ports["reviews"])
	denied := m.client.m.retriesDenied.Get()
	for i := 0; i < 150; i++ {
		req, _ := http.NewRequest("GET", details+"/", nil)
		req.Header.Set("X-Test-Id", fmt.Sprint(m.ids.Add(1)))
		req.Header.Set("X-Fail", "503")
		req.Header.Set("X-Fail-Times", "all")
		resp, err := m.http1.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if m.client.m.retriesDenied.Get() == denied {
		t.Error("150 failing requests to details spent no more than its budget: the budget bounds nothing")
	}
	// reviews' own traffic earns its budget (20% of 50 requests and the
	// reserve of 10: 20 retries), which its 20 failing-once requests use.
	for i := 0; i < 50; i++ {
		m.do(t, m.http1, reviews+"/", retryReq{wantStatus: 200, wantAttempts: 1})
	}
	for i := 0; i < 20; i++ {
		m.do(t, m.http1, reviews+"/", retryReq{fail: "503", wantStatus: 200, wantAttempts: 2})
	}
}
