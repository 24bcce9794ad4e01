package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// startHTTP serves "name proto" on a loopback port, over HTTP/1.1 and h2c.
func startHTTP(t *testing.T, name string) (port int, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", name, r.Proto)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port, func() { srv.Close() }
}

// startDelayed serves its name after delay on a loopback port (HTTP/1.1).
func startDelayed(t *testing.T, name string, delay time.Duration) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(delay)
		io.WriteString(w, name)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

func httpSvcDoc(name string, port int, proto string) string {
	return httpSvcDocLB(name, port, proto, "round-robin")
}

func httpSvcDocLB(name string, port int, proto, balancer string) string {
	return fmt.Sprintf(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":%q,"namespace":"demo"},
	"spec":{"ports":[{"name":"web","port":%d,"protocol":%q}],"balancer":%q}}`, name, port, proto, balancer)
}

func webWorkload(service, name string, port int) Workload {
	return Workload{Name: name, Service: service, Namespace: "demo",
		Ports: []api.EndpointPort{{Name: "web", Port: port}}}
}

// inFront says what agentInFront starts.
type inFront struct {
	node    string       // the agent's node name
	octet   int          // the agent's VIP range: 127.<octet>.0.0/16
	svc     string       // the service, in namespace demo
	vipPort int          // the service's port on its VIP
	port    int          // the endpoint's port on 127.0.0.1; its workload is svc+"-1"
	proto   string       // the port's protocol in httpSvcDoc; "" is "http"
	doc     string       // the service's config; "" is httpSvcDoc(svc, vipPort, proto)
	client  *http.Client // what waits for the first 200; nil is http.DefaultClient
	ready   string       // the path of that first 200; "" is "/"
	// noRequest: wait instead until the agent lists the endpoint and the
	// VIP accepts a connection (waitListening): no request reaches the
	// endpoint before the test's own.
	noRequest bool
}

// front is an agent in front of one HTTP endpoint, as agentInFront
// returns it.
type front struct {
	agent *Agent
	addr  string // the service's VIP and port: "127.<octet>.0.1:<vipPort>"
	base  string // "http://" + addr
}

// agentInFront starts a control plane that knows the service o.svc and an
// agent whose one workload is the endpoint on o.port, and returns once a GET
// of o.ready through the service's VIP answers 200 (waitGet200), or with
// o.noRequest once the VIP listens.
func agentInFront(t testing.TB, o inFront) front {
	t.Helper()
	if o.proto == "" {
		o.proto = "http"
	}
	if o.doc == "" {
		o.doc = httpSvcDoc(o.svc, o.vipPort, o.proto)
	}
	if o.ready == "" {
		o.ready = "/"
	}
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, o.doc)
	a := startAgent(t, agentOpts{name: o.node, site: "s1", region: "r1", vipOctet: o.octet, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload(o.svc, o.svc+"-1", o.port)}})
	f := front{agent: a, addr: fmt.Sprintf("127.%d.0.1:%d", o.octet, o.vipPort)}
	f.base = "http://" + f.addr
	if o.noRequest {
		waitFor(t, "endpoint", func() bool { return len(endpointsOf(a, "demo/"+o.svc)) == 1 })
		waitListening(t, f.addr)
		return f
	}
	waitGet200(t, o.client, f.base+o.ready)
	return f
}

// l7Setup: endpoints "near-1" and "near-2" on node a (same site as the
// client node c, reached over the mesh), "far" on node b in another region.
func l7Setup(t *testing.T, svc string, vipPort int, proto string, octet int) (client *Agent, stops map[string]func()) {
	t.Helper()
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc(svc, vipPort, proto))
	stops = map[string]func(){}
	p1, s1 := startHTTP(t, "near-1")
	p2, s2 := startHTTP(t, "near-2")
	p3, s3 := startHTTP(t, "far")
	stops["near-1"], stops["near-2"], stops["far"] = s1, s2, s3
	ctl := []string{cp.SyncAddr()}
	startAgent(t, agentOpts{name: "a", site: "s1", region: "r1", vipOctet: octet, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload(svc, svc+"-near-1", p1), webWorkload(svc, svc+"-near-2", p2)}})
	startAgent(t, agentOpts{name: "b", site: "s9", region: "r9", vipOctet: octet + 1, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload(svc, svc+"-far", p3)}})
	client = startAgent(t, agentOpts{name: "c", site: "s1", region: "r1", vipOctet: octet + 2, control: ctl, stateDir: t.TempDir()})
	waitFor(t, "client to learn 3 endpoints", func() bool { return len(endpointsOf(client, "demo/"+svc)) == 3 })
	return client, stops
}

// TestHTTPPerRequestBalancing: one keep-alive connection (HTTP/1.1, then
// h2c) spreads its requests over both same-site endpoints; when both die the
// next request goes to the far one with no failed request.
func TestHTTPPerRequestBalancing(t *testing.T) {
	_, stops := l7Setup(t, "web", 19010, "http", 163)
	url := "http://127.165.0.1:19010/"
	waitFor(t, "listener", func() bool { _, err := http.Get(url); return err == nil })
	for _, h2 := range []bool{false, true} {
		var protos http.Protocols
		if h2 {
			protos.SetUnencryptedHTTP2(true)
		} else {
			protos.SetHTTP1(true)
		}
		tr := &http.Transport{Protocols: &protos, MaxConnsPerHost: 1}
		c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		seen := map[string]int{}
		for i := 0; i < 10; i++ {
			resp, err := c.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			f := strings.Fields(string(b))
			seen[f[0]]++
			if want := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[h2]; resp.Proto != want {
				t.Fatalf("client spoke %s, want %s", resp.Proto, want)
			}
		}
		tr.CloseIdleConnections()
		if seen["near-1"] == 0 || seen["near-2"] == 0 || seen["far"] != 0 {
			t.Fatalf("h2=%v: one connection's requests went to %v; want both same-site endpoints, not the far one", h2, seen)
		}
	}
	stops["near-1"]()
	stops["near-2"]()
	c := &http.Client{Timeout: 5 * time.Second}
	for i := 0; i < 5; i++ {
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "far ") {
			t.Fatalf("after the site tier died: %d %q", resp.StatusCode, b)
		}
	}
}

// TestHTTPWithCurl uses curl over HTTP/1.1 and HTTP/2 prior knowledge.
func TestHTTPWithCurl(t *testing.T) {
	testenv.NeedTool(t, "curl")
	_, _ = l7Setup(t, "curlweb", 19011, "http2", 166)
	url := "http://127.168.0.1:19011/"
	waitFor(t, "listener", func() bool { _, err := http.Get(url); return err == nil })
	for _, args := range [][]string{{"--http1.1"}, {"--http2-prior-knowledge"}} {
		// One curl per request: Debian's curl 7.88 with prior knowledge
		// fails to reuse a connection to Go's cleartext HTTP/2 server
		// (seen with a bare net/http server too, without fogmesh).
		var out []byte
		for i := 0; i < 4; i++ {
			o, err := exec.Command("curl", append(args, "-sS", "--max-time", "5", "-w", "\n", url)...).CombinedOutput()
			if err != nil {
				t.Fatalf("curl %v: %v %s", args, err, o)
			}
			out = append(out, o...)
		}
		// The upstream port is http2: the agent speaks h2c to the endpoint
		// whatever the client speaks.
		if !strings.Contains(string(out), "near-1 HTTP/2.0") || !strings.Contains(string(out), "near-2 HTTP/2.0") {
			t.Fatalf("curl %v: %s", args, out)
		}
	}
}

// TestHTTPNoEndpoint: a service with no endpoint answers 503, not a hang.
func TestHTTPNoEndpoint(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("empty", 19012, "http"))
	a := startAgent(t, agentOpts{name: "lonely", site: "s1", region: "r1", vipOctet: 169, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	waitFor(t, "service", func() bool { return hasService(a, "demo/empty") })
	waitFor(t, "listener", func() bool { _, err := http.Get("http://127.169.0.1:19012/"); return err == nil })
	resp, err := http.Get("http://127.169.0.1:19012/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("got %s", resp.Status)
	}
}

// TestGRPCPerRequestBalancing: one grpc-go ClientConn to the VIP; its RPCs
// reach both same-site servers (per-connection balancing would pin them all
// to one). A server that dies is routed around; with none left the client
// gets UNAVAILABLE.
func TestGRPCPerRequestBalancing(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("grpcsvc", 19013, "grpc"))
	var workloads []Workload
	servers := map[string]*grpc.Server{}
	var healths []*health.Server
	for _, name := range []string{"g1", "g2"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		name := name
		s := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			grpc.SetHeader(ctx, metadata.Pairs("x-server", name))
			return h(ctx, req)
		}))
		hs := health.NewServer()
		healths = append(healths, hs)
		healthpb.RegisterHealthServer(s, hs)
		go s.Serve(ln)
		t.Cleanup(s.Stop)
		servers[name] = s
		workloads = append(workloads, webWorkload("grpcsvc", "grpcsvc-"+name, ln.Addr().(*net.TCPAddr).Port))
	}
	startAgent(t, agentOpts{name: "gs", site: "s1", region: "r1", vipOctet: 170, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(), workloads: workloads})
	client := startAgent(t, agentOpts{name: "gc", site: "s1", region: "r1", vipOctet: 171, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	waitFor(t, "endpoints", func() bool { return len(endpointsOf(client, "demo/grpcsvc")) == 2 })

	conn, err := grpc.NewClient("127.171.0.1:19013", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	call := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var md metadata.MD
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md))
		if err != nil {
			return "", err
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			return "", fmt.Errorf("status %v", resp.Status)
		}
		return strings.Join(md.Get("x-server"), ""), nil
	}
	seen := map[string]int{}
	for i := 0; i < 10; i++ {
		s, err := call()
		if err != nil {
			t.Fatal(err)
		}
		seen[s]++
	}
	if seen["g1"] == 0 || seen["g2"] == 0 {
		t.Fatalf("one gRPC connection's calls went to %v; want both servers", seen)
	}
	// Server streaming passes through: Watch sends SERVING, then each change.
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer wcancel()
	stream, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch first message: %v %v", m, err)
	}
	for _, hs := range healths {
		hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	}
	if m, err := stream.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("watch did not stream the change: %v %v", m, err)
	}
	for _, hs := range healths {
		hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	}
	wcancel()
	// A status from the server (NOT_FOUND for an unknown health service)
	// and the successes show up in the metrics by gRPC code.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "no-such-service"})
	cancel()
	if status.Code(err) != codes.NotFound {
		t.Fatalf("unknown health service: %v", err)
	}
	// The agent records a call's status when it has read the response to
	// its end, which may come a moment after the client has the status.
	waitFor(t, "grpc_status 0 and 5 in the metrics", func() bool {
		var mbuf strings.Builder
		client.cfg.Metrics.WritePrometheus(&mbuf)
		return strings.Contains(mbuf.String(), `grpc_status="0"`) && strings.Contains(mbuf.String(), `grpc_status="5"`)
	})
	servers["g1"].Stop()
	// A call already on its way to g1's pooled connection as it closes is
	// not retried: a gRPC call is a POST with a body, and the agent cannot
	// know whether g1 processed it. Once the failure is seen (g1's agent's
	// health check, reported through the control plane), g1 gets nothing.
	waitFor(t, "g1 seen unhealthy", func() bool {
		for _, e := range endpointsOf(client, "demo/grpcsvc") {
			if e.Name == "grpcsvc-g1" {
				return !e.Healthy || e.Ejected
			}
		}
		return false
	})
	for i := 0; i < 5; i++ {
		if s, err := call(); err != nil || s != "g2" {
			t.Fatalf("after g1 died: %q %v", s, err)
		}
	}
	servers["g2"].Stop()
	_, err = call()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("no servers left: got %v, want UNAVAILABLE", err)
	}
}

// TestEdgeAwareAvoidsSlowEndpoint: with one endpoint 50 ms slower than the
// other, the edge-aware balancer sends it clearly less traffic than round
// robin does, under the same concurrent load.
func TestEdgeAwareAvoidsSlowEndpoint(t *testing.T) {
	fast, slow := startDelayed(t, "fast", 0), startDelayed(t, "slow", 50*time.Millisecond)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, "["+httpSvcDocLB("rr", 19020, "http", "round-robin")+","+httpSvcDocLB("ea", 19021, "http", "edge-aware")+"]")
	var wls []Workload
	for _, svc := range []string{"rr", "ea"} {
		wls = append(wls, webWorkload(svc, svc+"-fast", fast), webWorkload(svc, svc+"-slow", slow))
	}
	a := startAgent(t, agentOpts{name: "lb", site: "s1", region: "r1", vipOctet: 174, stateDir: t.TempDir(), control: []string{cp.SyncAddr()}, workloads: wls})
	waitFor(t, "services", func() bool { return hasService(a, "demo/rr") && hasService(a, "demo/ea") })
	share := func(url string) float64 {
		waitFor(t, "listener", func() bool { _, err := http.Get(url); return err == nil })
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
		var mu sync.Mutex
		counts := map[string]int{}
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 40; i++ {
					resp, err := c.Get(url)
					if err != nil {
						t.Error(err)
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					mu.Lock()
					counts[string(b)]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return float64(counts["slow"]) / float64(counts["slow"]+counts["fast"])
	}
	rr := share("http://127.174.0.1:19020/")
	ea := share("http://127.174.0.2:19021/")
	t.Logf("share of requests sent to the slow endpoint: round-robin %.0f%%, edge-aware %.0f%%", rr*100, ea*100)
	if rr < 0.4 || rr > 0.6 {
		t.Fatalf("round robin sent %.0f%% to slow; want about half", rr*100)
	}
	if ea >= 0.20 { // README: edge-aware sends it under 20%
		t.Fatalf("edge-aware sent %.0f%% to the slow endpoint (round robin %.0f%%); README promises under 20%%", ea*100, rr*100)
	}
}

// TestRetryIdempotentOnly: an endpoint that reads each request and hangs up
// without answering. GETs are retried on the other endpoint (fogmesh's
// retry: Go's transport only retries on reused connections); a POST with a
// body reached the endpoint, so it is not retried and fails with 502.
func TestRetryIdempotentOnly(t *testing.T) {
	bad := serveConns(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		c.Read(buf) // the request arrives...
		c.(*net.TCPConn).SetLinger(0)
		c.Close() // ...and the endpoint dies without answering
	}).Port
	good, _ := startHTTP(t, "good")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("flaky", 19031, "http"))
	a := startAgent(t, agentOpts{name: "rt", site: "s1", region: "r1", vipOctet: 178, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("flaky", "flaky-bad", bad), webWorkload("flaky", "flaky-good", good)}})
	url := "http://127.178.0.1:19031/"
	waitFor(t, "service", func() bool { return len(endpointsOf(a, "demo/flaky")) == 2 })
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	waitFor(t, "listener", func() bool { _, err := c.Get(url); return err == nil })
	// reset puts the bad endpoint back in rotation: outlier detection may
	// have ejected it (its connection resets count as errors).
	reset := func() {
		waitFor(t, "both endpoints healthy", func() bool {
			a.outliers.Reset()
			eps := endpointsOf(a, "demo/flaky")
			return len(eps) == 2 && eps[0].Healthy && eps[1].Healthy
		})
	}
	reset()
	for i := 0; i < 6; i++ {
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "good") {
			t.Fatalf("GET %d: %s %q", i, resp.Status, b)
		}
		reset()
	}
	posted502 := false
	for i := 0; i < 6 && !posted502; i++ {
		reset()
		resp, err := c.Post(url, "text/plain", strings.NewReader("order #1"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		posted502 = resp.StatusCode == http.StatusBadGateway
	}
	if !posted502 {
		t.Fatal("a POST that reached the dying endpoint was retried (or never went there)")
	}
}

// TestL7ConnectionsAreReleased: the agent's in-flight gauge returns to zero
// once HTTP clients close their keep-alive connections.
func TestL7ConnectionsAreReleased(t *testing.T) {
	cl, _ := l7Setup(t, "rel", 19032, "http", 184)
	url := "http://127.186.0.1:19032/"
	probe := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	waitFor(t, "listener", func() bool { _, err := probe.Get(url); return err == nil })
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	c := &http.Client{Transport: tr}
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				resp, err := c.Get(url)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
	}
	wg.Wait()
	if n := cl.active.Load(); n == 0 {
		t.Fatal("no connection counted while keep-alive connections are open")
	}
	tr.CloseIdleConnections()
	waitFor(t, "active connections back to 0", func() bool { return cl.active.Load() == 0 })
}

// TestIstioCanaryEndToEnd: Istio VirtualService + DestinationRule applied
// to the control plane; the client agent splits requests 80/20 between
// subsets by endpoint labels, and a header sends a user to v2 only.
func TestIstioCanaryEndToEnd(t *testing.T) {
	p1, _ := startHTTP(t, "v1")
	p2, _ := startHTTP(t, "v2")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: reviews, namespace: demo}
spec: {ports: [{name: web, port: 19050, protocol: http}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: demo}
spec:
  hosts: [reviews.demo.svc.cluster.local]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: demo}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`)
	w1, w2 := webWorkload("reviews", "reviews-v1", p1), webWorkload("reviews", "reviews-v2", p2)
	w1.Labels, w2.Labels = map[string]string{"version": "v1"}, map[string]string{"version": "v2"}
	startAgent(t, agentOpts{name: "srv", site: "s1", region: "r1", vipOctet: 187, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{w1, w2}})
	client := startAgent(t, agentOpts{name: "cli", site: "s1", region: "r1", vipOctet: 188, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	waitFor(t, "route and subsets", func() bool {
		sv := client.view.Load().services["demo/reviews"]
		return sv != nil && sv.route != nil && len(sv.subsets) == 2 && len(sv.endpoints) == 2
	})
	url := "http://127.188.0.1:19050/"
	c := &http.Client{Timeout: 5 * time.Second}
	waitFor(t, "listener", func() bool { _, err := c.Get(url); return err == nil })
	get := func(user string) string {
		req, _ := http.NewRequest("GET", url, nil)
		if user != "" {
			req.Header.Set("End-User", user)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Fields(string(b))[0]
	}
	n := map[string]int{}
	for i := 0; i < 500; i++ {
		n[get("")]++
	}
	share := float64(n["v2"]) / 500
	t.Logf("canary: v1 %d, v2 %d (%.1f%% to v2, want 20%%)", n["v1"], n["v2"], share*100)
	if share < 0.13 || share > 0.28 {
		t.Fatalf("v2 got %.1f%% of requests, want about 20%%", share*100)
	}
	for i := 0; i < 20; i++ {
		if got := get("jason"); got != "v2" {
			t.Fatalf("jason's request %d went to %s", i, got)
		}
	}
}

// TestOutlierEjectionAndCircuitBreaker: an endpoint answering 500 is
// ejected after 3 in a row; a service limited to 2 requests in flight
// answers 503 with X-Fogmesh-Overflow beyond that.
func TestOutlierEjectionAndCircuitBreaker(t *testing.T) {
	var mu sync.Mutex
	badHits := 0
	bad := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		badHits++
		mu.Unlock()
		http.Error(w, "broken", 500)
	})}
	bln, _ := net.Listen("tcp", "127.0.0.1:0")
	go bad.Serve(bln)
	t.Cleanup(func() { bad.Close() })
	good, _ := startHTTP(t, "good")
	slowPort := startDelayed(t, "slow", 300*time.Millisecond)

	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: od, namespace: demo}
spec:
  ports: [{name: web, port: 19060, protocol: http}]
  balancer: round-robin
  outlierDetection: {consecutiveErrors: 3, baseEjectionTime: 30s}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: cb, namespace: demo}
spec:
  ports: [{name: web, port: 19061, protocol: http}]
  circuitBreaker: {maxRequests: 2}
`)
	a := startAgent(t, agentOpts{name: "odcb", site: "s1", region: "r1", vipOctet: 189, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("od", "od-bad", bln.Addr().(*net.TCPAddr).Port), webWorkload("od", "od-good", good),
			webWorkload("cb", "cb-slow", slowPort)}})
	waitFor(t, "services", func() bool { return len(endpointsOf(a, "demo/od")) == 2 && len(endpointsOf(a, "demo/cb")) == 1 })
	c := &http.Client{Timeout: 5 * time.Second}
	odURL := "http://127.189.0.1:19060/"
	waitFor(t, "listener", func() bool { _, err := c.Get(odURL); return err == nil })
	mu.Lock()
	badHits = 0
	mu.Unlock()
	errors500 := 0
	for i := 0; i < 30; i++ {
		resp, err := c.Get(odURL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 500 {
			errors500++
		}
	}
	mu.Lock()
	hits := badHits
	mu.Unlock()
	if hits > 3 || errors500 > 3 {
		t.Fatalf("the failing endpoint got %d requests (%d 500s reached clients); want it ejected after 3", hits, errors500)
	}
	if a.m.outlierEjections.Get() == 0 {
		t.Fatal("no ejection counted")
	}

	cbURL := "http://127.189.0.2:19061/"
	waitFor(t, "listener", func() bool { _, err := c.Get(cbURL); return err == nil })
	var wg sync.WaitGroup
	var ok, overflow int
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(cbURL)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			switch {
			case resp.StatusCode == 200:
				ok++
			case resp.StatusCode == 503 && resp.Header.Get("X-Fogmesh-Overflow") == "true":
				overflow++
			}
		}()
	}
	wg.Wait()
	if ok < 2 || overflow < 3 || ok+overflow != 6 {
		t.Fatalf("6 concurrent requests with maxRequests 2: %d ok, %d overflow", ok, overflow)
	}
}

// TestTrafficClassesShedLowestFirst: with the agent saturated by mmtc
// traffic, urllc requests are still admitted and meet their timeout, and
// the overload is shed from mmtc.
func TestTrafficClassesShedLowestFirst(t *testing.T) {
	slicePort := startDelayed(t, "ok", 100*time.Millisecond)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: slice, namespace: demo}
spec:
  ports: [{name: web, port: 19070, protocol: http}]
  classes:
  - {name: urllc, priority: 3, timeout: 1s}
  - {name: embb, priority: 2, timeout: 5s}
  - {name: mmtc, priority: 1, timeout: 10s, retries: {attempts: -1}}
  defaultClass: mmtc
`)
	a := startAgent(t, agentOpts{name: "ran", site: "s1", region: "r1", vipOctet: 190, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		maxRequests: 10, workloads: []Workload{webWorkload("slice", "slice-1", slicePort)}})
	waitFor(t, "service", func() bool { return len(endpointsOf(a, "demo/slice")) == 1 })
	url := "http://127.190.0.1:19070/"
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	waitFor(t, "listener", func() bool { _, err := c.Get(url); return err == nil })

	var mu sync.Mutex
	var mmtcOK, mmtcShed int
	var mmtcErr error
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 30; w++ { // mmtc flood: 30 concurrent senders, agent limit 10
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := c.Get(url)
				if err != nil {
					mu.Lock()
					if mmtcErr == nil {
						mmtcErr = err
					}
					mu.Unlock()
					continue
				}
				resp.Body.Close()
				mu.Lock()
				if resp.StatusCode == 200 {
					mmtcOK++
				} else if resp.Header.Get("X-Fogmesh-Shed") == "true" {
					mmtcShed++
				} else if mmtcErr == nil {
					mmtcErr = fmt.Errorf("unexpected %s", resp.Status)
				}
				mu.Unlock()
			}
		}()
	}
	waitFor(t, "the mmtc flood to overload the agent", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return mmtcShed > 0
	})
	var worst time.Duration
	for i := 0; i < 10; i++ {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("X-Fogmesh-Class", "urllc")
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		d := time.Since(start)
		worst = max(worst, d)
		if resp.StatusCode != 200 || d > time.Second {
			t.Fatalf("urllc request %d under mmtc overload: %s after %v (shed=%s)", i, resp.Status, d, resp.Header.Get("X-Fogmesh-Shed"))
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("under mmtc overload: urllc 10/10 ok, slowest %v; mmtc %d ok, %d shed (first error: %v)", worst, mmtcOK, mmtcShed, mmtcErr)
	if mmtcShed == 0 {
		t.Fatal("the agent was never overloaded: the test proves nothing")
	}
}

// TestSessionFollowsMovingClient: a session starts at site 1 and is pinned
// to site 1's instance; the client moves (its requests now enter through
// site 2's agent, as after a 5G handover) and still reaches the same
// instance; moving the binding through the control plane moves the
// session; the binding survives a restart of the agent.
func TestSessionFollowsMovingClient(t *testing.T) {
	p1, _ := startHTTP(t, "inst-1")
	p2, _ := startHTTP(t, "inst-2")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: v2x, namespace: demo}
spec:
  ports: [{name: web, port: 19080, protocol: http}]
  session: {header: x-session-id}
`)
	ctl := []string{cp.SyncAddr()}
	// Site 1: node n1 runs inst-1 and is also the client's first entry.
	a1 := startAgent(t, agentOpts{name: "n1", site: "s1", region: "r1", vipOctet: 191, control: ctl, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("v2x", "v2x-1", p1)}})
	bDir := t.TempDir()
	a2 := startAgent(t, agentOpts{name: "n2", site: "s2", region: "r1", vipOctet: 192, control: ctl, stateDir: bDir,
		workloads: []Workload{webWorkload("v2x", "v2x-2", p2)}})
	waitFor(t, "endpoints", func() bool { return len(endpointsOf(a1, "demo/v2x")) == 2 && len(endpointsOf(a2, "demo/v2x")) == 2 })
	c := &http.Client{Timeout: 5 * time.Second}
	get := func(vip, session string) string {
		req, _ := http.NewRequest("GET", "http://"+vip+":19080/", nil)
		req.Header.Set("X-Session-Id", session)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Fields(string(b))[0]
	}
	site1, site2 := "127.191.0.1", "127.192.0.1"
	waitFor(t, "listeners", func() bool {
		_, e1 := c.Get("http://" + site1 + ":19080/")
		_, e2 := c.Get("http://" + site2 + ":19080/")
		return e1 == nil && e2 == nil
	})
	if got := get(site1, "car-7"); got != "inst-1" {
		t.Fatalf("first request at site 1 went to %s", got)
	}
	// Without a session, site 2's agent prefers its own node's instance.
	if got := get(site2, ""); got != "inst-2" {
		t.Fatalf("sessionless request at site 2 went to %s", got)
	}
	waitFor(t, "binding to reach site 2", func() bool {
		sv := a2.view.Load().services["demo/v2x"]
		return sv != nil && sv.sessions["car-7"] == "v2x-1"
	})
	for i := 0; i < 5; i++ { // handover: same session, new entry point
		if got := get(site2, "car-7"); got != "inst-1" {
			t.Fatalf("after handover request %d went to %s, want the session's inst-1", i, got)
		}
	}
	// An operator moves the session (what `fogmesh session move` applies).
	apply(t, cp, `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Session","metadata":{"namespace":"demo"},"spec":{"service":"v2x","key":"car-7","endpoint":"v2x-2"}}`)
	waitFor(t, "move to reach both agents", func() bool {
		s1, s2 := a1.view.Load().services["demo/v2x"], a2.view.Load().services["demo/v2x"]
		return s1.sessions["car-7"] == "v2x-2" && s2.sessions["car-7"] == "v2x-2"
	})
	if got1, got2 := get(site1, "car-7"), get(site2, "car-7"); got1 != "inst-2" || got2 != "inst-2" {
		t.Fatalf("after move: site 1 -> %s, site 2 -> %s; want inst-2", got1, got2)
	}
	// The binding survives a restart of the agent, even with no control plane.
	a2.Close()
	cp.Close()
	a2b := startAgent(t, agentOpts{name: "n2", site: "s2", region: "r1", vipOctet: 192, control: ctl, stateDir: bDir,
		workloads: []Workload{webWorkload("v2x", "v2x-2", p2)}})
	if sv := a2b.view.Load().services["demo/v2x"]; sv == nil || sv.sessions["car-7"] != "v2x-2" {
		t.Fatal("session binding lost across the agent restart")
	}
}

// TestMalformedHTTPGetsProtocolErrors: malformed HTTP/1 gets 400, a broken
// HTTP/2 frame after the preface gets GOAWAY, and the agent keeps serving.
func TestMalformedHTTPGetsProtocolErrors(t *testing.T) {
	cl, _ := l7Setup(t, "mal", 19090, "http", 193)
	addr := "127.195.0.1:19090"
	waitFor(t, "listener", func() bool { _, err := http.Get("http://" + addr + "/"); return err == nil })
	send := func(b []byte) []byte {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(b)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		out, _ := io.ReadAll(c)
		return out
	}
	for _, b := range []string{"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n", "\x00\x01garbage garbage garbage garbage\r\n\r\n", "GET / HTTP/9.9\r\n\r\n"} {
		if out := send([]byte(b)); !strings.HasPrefix(string(out), "HTTP/1.1 400") && !strings.HasPrefix(string(out), "HTTP/1.1 505") {
			t.Errorf("%q: got %q, want a 400", b, out)
		}
	}
	// HTTP/2 preface, then a frame of an absurd length: the server must
	// answer with a GOAWAY frame (type 0x7) and close.
	frame := append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0xff, 0xff, 0xff, 0x04, 0x00, 0, 0, 0, 0)
	out := send(frame)
	goaway := false
	for i := 0; i+9 <= len(out); {
		n := int(out[i])<<16 | int(out[i+1])<<8 | int(out[i+2])
		if out[i+3] == 0x7 {
			goaway = true
		}
		i += 9 + n
	}
	if !goaway {
		t.Errorf("broken HTTP/2 frame: no GOAWAY in % x", out)
	}
	if _, err := http.Get("http://" + addr + "/"); err != nil {
		t.Fatalf("agent stopped serving: %v", err)
	}
	// HTTP/1.0 without Host is the client's business: it is answered, and
	// no endpoint is ejected for it (review finding: it used to eject all).
	for i := 0; i < 3; i++ {
		if out := send([]byte("GET / HTTP/1.0\r\n\r\n")); !strings.Contains(string(out), " 200 ") {
			t.Fatalf("HTTP/1.0 without Host: %q", out)
		}
	}
	for _, e := range endpointsOf(cl, "demo/mal") {
		if e.Ejected || !e.Healthy {
			t.Fatalf("endpoint %s ejected/unhealthy after Host-less requests", e.Name)
		}
	}
}

// TestConsistentHashByHeader: each key always reaches the same endpoint and
// the keys spread over the endpoints.
func TestConsistentHashByHeader(t *testing.T) {
	p1, _ := startHTTP(t, "h1")
	p2, _ := startHTTP(t, "h2")
	p3, _ := startHTTP(t, "h3")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: ch, namespace: demo}
spec:
  ports: [{name: web, port: 19095, protocol: http}]
  balancer: consistent-hash
  hashKey: {header: x-user}
`)
	a := startAgent(t, agentOpts{name: "chn", site: "s1", region: "r1", vipOctet: 196, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("ch", "ch-1", p1), webWorkload("ch", "ch-2", p2), webWorkload("ch", "ch-3", p3)}})
	waitFor(t, "endpoints", func() bool { return len(endpointsOf(a, "demo/ch")) == 3 })
	url := "http://127.196.0.1:19095/"
	c := &http.Client{Timeout: 5 * time.Second}
	waitFor(t, "listener", func() bool { _, err := c.Get(url); return err == nil })
	used := map[string]bool{}
	for k := 0; k < 30; k++ {
		first := ""
		for i := 0; i < 4; i++ {
			req, _ := http.NewRequest("GET", url, nil)
			req.Header.Set("X-User", fmt.Sprintf("user-%d", k))
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			got := strings.Fields(string(b))[0]
			if first == "" {
				first = got
			} else if got != first {
				t.Fatalf("user-%d went to %s then %s", k, first, got)
			}
		}
		used[first] = true
	}
	if len(used) < 3 {
		t.Fatalf("30 keys used only %v", used)
	}
}

// TestProtocolAutoDetection: one port declared auto serves HTTP/1.1, h2c
// and a raw TCP line protocol, each to the right path: HTTP requests are
// balanced per request (they show in the L7 metrics); the TCP bytes read to
// decide are replayed to the endpoint.
func TestProtocolAutoDetection(t *testing.T) {
	webPort, _ := startHTTP(t, "web")
	echo := startEcho(t, "tcp", "127.0.0.1:0")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: anyweb, namespace: demo}
spec: {ports: [{name: web, port: 19100, protocol: auto}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: anytcp, namespace: demo}
spec: {ports: [{name: web, port: 19101, protocol: auto}]}
`)
	a := startAgent(t, agentOpts{name: "auto", site: "s1", region: "r1", vipOctet: 199, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{webWorkload("anyweb", "anyweb-1", webPort), webWorkload("anytcp", "anytcp-1", echo.port())}})
	waitFor(t, "services", func() bool {
		return len(endpointsOf(a, "demo/anyweb")) == 1 && len(endpointsOf(a, "demo/anytcp")) == 1
	})
	webURL := "http://127.199.0.1:19100/"
	waitFor(t, "listener", func() bool { _, err := http.Get(webURL); return err == nil })
	for _, h2 := range []bool{false, true} {
		var protos http.Protocols
		if h2 {
			protos.SetUnencryptedHTTP2(true)
		} else {
			protos.SetHTTP1(true)
		}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Protocols: &protos}}
		resp, err := c.Get(webURL)
		if err != nil {
			t.Fatalf("h2=%v: %v", h2, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "web ") {
			t.Fatalf("h2=%v: %s %q", h2, resp.Status, b)
		}
	}
	var m strings.Builder
	a.cfg.Metrics.WritePrometheus(&m)
	if !strings.Contains(m.String(), `fogmesh_http_requests_total{service="demo/anyweb"`) {
		t.Fatal("HTTP on an auto port did not take the L7 path")
	}
	mustRoundTrip(t, "127.199.0.2:19101", "tcp: ping") // raw TCP: detected, replayed, spliced
}

// TestEdgeAwareAvoidsEndpointLoadedByOthers: agent a keeps 24 slow requests
// in flight on its local endpoint ld-1; agent c (same site, no load of its
// own) learns that load through the control plane's heartbeat answers and
// sends ld-1 clearly less than round robin does, although ld-1 answers c's
// requests as fast as ld-2.
func TestEdgeAwareAvoidsEndpointLoadedByOthers(t *testing.T) {
	mk := func(name string) int {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/hold" {
				select {
				case <-r.Context().Done():
				case <-time.After(20 * time.Second):
				}
			}
			io.WriteString(w, name)
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return ln.Addr().(*net.TCPAddr).Port
	}
	p1, p2 := mk("ld-1"), mk("ld-2")
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, "["+httpSvcDocLB("ldrr", 19024, "http", "round-robin")+","+httpSvcDocLB("ldea", 19025, "http", "edge-aware")+"]")
	ctl := []string{cp.SyncAddr()}
	var wa, wb []Workload
	for _, svc := range []string{"ldrr", "ldea"} {
		wa = append(wa, webWorkload(svc, svc+"-1", p1))
		wb = append(wb, webWorkload(svc, svc+"-2", p2))
	}
	a := startAgent(t, agentOpts{name: "a", site: "s1", region: "r1", vipOctet: 181, control: ctl, stateDir: t.TempDir(), workloads: wa})
	startAgent(t, agentOpts{name: "b", site: "s1", region: "r1", vipOctet: 182, control: ctl, stateDir: t.TempDir(), workloads: wb})
	c := startAgent(t, agentOpts{name: "c", site: "s1", region: "r1", vipOctet: 183, control: ctl, stateDir: t.TempDir()})
	for _, ag := range []*Agent{a, c} {
		for _, svc := range []string{"demo/ldrr", "demo/ldea"} {
			waitFor(t, "endpoints", func() bool { return len(endpointsOf(ag, svc)) == 2 })
		}
	}
	// Load: a's clients go to ld-1, the endpoint on a's own node.
	ctx, cancel := context.WithCancel(context.Background())
	var hold sync.WaitGroup
	t.Cleanup(func() { cancel(); hold.Wait() })
	hc := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 64, MaxIdleConnsPerHost: 64}}
	for _, vip := range []string{"127.181.0.1:19024", "127.181.0.2:19025"} {
		waitListening(t, vip)
		for i := 0; i < 12; i++ {
			hold.Add(1)
			go func() {
				defer hold.Done()
				req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+vip+"/hold", nil)
				if resp, err := hc.Do(req); err == nil {
					resp.Body.Close()
				}
			}()
		}
	}
	waitFor(t, "c to learn ld-1's load", func() bool {
		return c.peerLoad("demo/ldea-1") >= 10 && c.peerLoad("demo/ldrr-1") >= 10
	})
	share := func(url string) float64 {
		waitFor(t, "c's listener", func() bool { _, err := http.Get(url); return err == nil })
		n := 0
		for i := 0; i < 60; i++ {
			resp, err := http.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) == "ld-1" {
				n++
			}
		}
		return float64(n) / 60
	}
	rr := share("http://127.183.0.1:19024/")
	ea := share("http://127.183.0.2:19025/")
	t.Logf("share of c's requests sent to ld-1 (24 requests in flight from agent a): round-robin %.0f%%, edge-aware %.0f%%", rr*100, ea*100)
	if rr < 0.35 || rr > 0.65 {
		t.Fatalf("round robin sent %.0f%% to ld-1; want about half", rr*100)
	}
	if ea >= 0.20 { // README: edge-aware sends it under 20%
		t.Fatalf("edge-aware sent %.0f%% to the loaded endpoint (round robin %.0f%%); README promises under 20%%", ea*100, rr*100)
	}
}
