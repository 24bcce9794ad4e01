package agent

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/outlier"
)

// istioCase is one conformance case: Istio documents for one service (the
// placeholders SVC and PORT are filled in), and requests with the outcome
// Istio's documentation gives for them.
type istioCase struct {
	name string
	docs string
	reqs []istioReq
	// v2Status, when set, is the status of every answer of the case's own
	// v2 endpoint (default: the shared v2 server, 200).
	v2Status int
	// h1Only sends the requests over HTTP/1.1 only, once: for cases whose
	// outcome depends on what came before.
	h1Only bool
}

// istioReq is sent n times (default 1). want is "v1", "v2" (every answer
// from that version), "v1|v2" (at least one of each), or a status code
// ("200": any version; "404", "403", "400"), or "grpc-N" (that
// grpc-status), for every answer.
type istioReq struct {
	// from: the source address; callerIP is the workload "productpage"
	// (labels app: productpage, version: v1) on the client's node.
	from           string
	method, target string
	header         http.Header
	n              int
	want           string
	// wait, when set, is waited for (10 s at most) before the requests.
	wait func(o *confObs) bool
	// check, when set, replaces want: it says what is wrong with the
	// answers counted in got (or "").
	check func(got map[string]int, o *confObs) string
}

// confObs is what a case observes besides the answers: its own v2
// endpoint's hits (v2Status cases) and the client agent's outlier state.
type confObs struct {
	client *Agent
	v2Key  string
	v2Hits atomic.Int64
	batch  int64 // v2 hits during the requests being checked
}

func (o *confObs) v2Ejected() bool { return o.client.isEjectedAnywhere(o.v2Key) }

// v2 is v2's state in the service's detector (the cases' policies are
// top-level only).
func (o *confObs) v2() outlier.HostState {
	return o.client.outliers.State(strings.TrimSuffix(o.v2Key, "-v2"), o.v2Key, time.Now())
}

// subsetsDR is the DestinationRule every routing case uses.
const subsetsDR = `
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: SVC, namespace: demo}
spec:
  host: SVC
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`

func vsDoc(spec string) string {
	return `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: SVC, namespace: demo}
spec:
  hosts: [SVC.demo.svc.cluster.local]
` + spec + subsetsDR
}

// istioConformanceCases follow Istio's task pages (request routing,
// traffic shifting, authorization for HTTP traffic) for the cases where
// fogmesh used to match more than the documents say (issue 11).
var istioConformanceCases = []istioCase{
	{name: "no default route answers 404", docs: vsDoc(`  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: SVC, subset: v2}}]
`), reqs: []istioReq{
		{target: "/", n: 10, want: "404"},
		{target: "/pkg.Svc/Call", header: http.Header{"Content-Type": {"application/grpc"}}, want: "grpc-12"}, // UNIMPLEMENTED
		{target: "/", header: http.Header{"End-User": {"jason"}}, n: 5, want: "v2"},
	}},
	{name: "queryParams exact and regex", docs: vsDoc(`  http:
  - match: [{queryParams: {flag: {exact: "on"}}}, {queryParams: {id: {regex: "[0-9]+"}}}]
    route: [{destination: {host: SVC, subset: v2}}]
  - route: [{destination: {host: SVC, subset: v1}}]
`), reqs: []istioReq{
		{target: "/?flag=on", n: 5, want: "v2"},
		{target: "/?id=42", n: 5, want: "v2"},
		{target: "/?flag=off", n: 5, want: "v1"},
		{target: "/?id=4x2", n: 5, want: "v1"},
		{target: "/", n: 5, want: "v1"},
	}},
	{name: "queryParams prefix and empty exact", docs: vsDoc(`  http:
  - match: [{queryParams: {debug: {exact: ""}}}, {queryParams: {user: {prefix: "test-"}}}]
    route: [{destination: {host: SVC, subset: v2}}]
  - route: [{destination: {host: SVC, subset: v1}}]
`), reqs: []istioReq{
		{target: "/?debug", n: 5, want: "v2"},
		{target: "/?debug=1", n: 5, want: "v1"},
		{target: "/?user=test-7", n: 5, want: "v2"},
		{target: "/?user=prod-7", n: 5, want: "v1"},
	}},
	{name: "withoutHeaders", docs: vsDoc(`  http:
  - match: [{withoutHeaders: {x-canary: {exact: "no"}}}]
    route: [{destination: {host: SVC, subset: v2}}]
  - route: [{destination: {host: SVC, subset: v1}}]
`), reqs: []istioReq{
		{target: "/", n: 5, want: "v2"},
		{target: "/", header: http.Header{"X-Canary": {"yes"}}, n: 5, want: "v2"},
		{target: "/", header: http.Header{"X-Canary": {"no"}}, n: 5, want: "v1"},
	}},
	{name: "unsupported match field skips the rule, never widened", docs: vsDoc(`  http:
  - match: [{port: 80}]
    route: [{destination: {host: SVC, subset: v2}}]
  - route: [{destination: {host: SVC, subset: v1}}]
`), reqs: []istioReq{
		{target: "/", n: 20, want: "v1"},
	}},
	{name: "sourceLabels match the caller's labels", docs: vsDoc(`  http:
  - match: [{sourceLabels: {app: productpage}}]
    route: [{destination: {host: SVC, subset: v2}}]
  - route: [{destination: {host: SVC, subset: v1}}]
`), reqs: []istioReq{
		{from: callerIP, target: "/", n: 10, want: "v2"},
		{target: "/", n: 10, want: "v1"}, // an anonymous client: no labels
	}},
	{name: "sourceLabels all of them", docs: vsDoc(`  http:
  - match: [{sourceLabels: {app: productpage, version: v2}}]
    route: [{destination: {host: SVC, subset: v2}}]
  - route: [{destination: {host: SVC, subset: v1}}]
`), reqs: []istioReq{
		{from: callerIP, target: "/", n: 10, want: "v1"},
	}},
	{name: "sourceNamespace", docs: vsDoc(`  http:
  - match: [{sourceNamespace: other}]
    route: [{destination: {host: SVC, subset: v1}}]
  - match: [{sourceNamespace: demo}]
    route: [{destination: {host: SVC, subset: v2}}]
`), reqs: []istioReq{
		{from: callerIP, target: "/", n: 10, want: "v2"},
		{target: "/", n: 3, want: "404"},
	}},
	{name: "match bound to a gateway is skipped", docs: vsDoc(`  http:
  - match: [{gateways: [bookinfo-gateway], uri: {prefix: /}}]
    route: [{destination: {host: SVC, subset: v2}}]
  - route: [{destination: {host: SVC, subset: v1}}]
`), reqs: []istioReq{
		{target: "/", n: 20, want: "v1"},
	}},
	{name: "gateway-only VirtualService does not apply to mesh traffic", docs: `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: SVC, namespace: demo}
spec:
  hosts: [SVC.demo.svc.cluster.local]
  gateways: [bookinfo-gateway]
  http:
  - route: [{destination: {host: SVC, subset: v2}}]
` + subsetsDR, reqs: []istioReq{
		{target: "/", n: 40, want: "v1|v2"},
	}},
	{name: "unweighted destination beside a weighted one gets nothing", docs: vsDoc(`  http:
  - route:
    - {destination: {host: SVC, subset: v1}, weight: 70}
    - {destination: {host: SVC, subset: v2}}
`), reqs: []istioReq{
		{target: "/", n: 300, want: "v1"},
	}},
	{name: "root namespace DENY applies mesh-wide", docs: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: SVC-no-delete, namespace: istio-system}
spec:
  selector: {matchLabels: {app: SVC}}
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
`, reqs: []istioReq{
		{method: "DELETE", target: "/", n: 3, want: "403"},
		{method: "delete", target: "/", n: 3, want: "400"},
		{target: "/", n: 3, want: "200"},
	}},
	{name: "header condition matches values joined with a comma", docs: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: SVC-token, namespace: demo}
spec:
  selector: {matchLabels: {app: SVC}}
  rules: [{when: [{key: "request.headers[x-token]", values: ["a,b", "c"]}]}]
`, reqs: []istioReq{
		{target: "/", header: http.Header{"X-Token": {"a", "b"}}, n: 3, want: "200"},
		{target: "/", header: http.Header{"X-Token": {"c"}}, n: 3, want: "200"},
		{target: "/", header: http.Header{"X-Token": {"c", "d"}}, n: 3, want: "403"},
		{target: "/", header: http.Header{"X-Token": {"a"}}, n: 3, want: "403"},
	}},
	// Outlier detection (issue 11, item 5), v2 always answering 500.
	{name: "no outlierDetection: an always-500 endpoint is never ejected", docs: subsetsDR, v2Status: 500, reqs: []istioReq{
		{target: "/", n: 60, check: func(got map[string]int, o *confObs) string {
			if o.batch < 24 || o.v2Ejected() {
				return fmt.Sprintf("v2 got %d of 60 requests (ejected: %v); want about half, never ejected", o.batch, o.v2Ejected())
			}
			return ""
		}},
	}},
	{name: "consecutive5xxErrors 2 beside consecutiveGatewayErrors 10 ejects after two 500s", v2Status: 500,
		docs: outlierDR("{consecutive5xxErrors: 2, consecutiveGatewayErrors: 10}"), reqs: []istioReq{
			{target: "/", n: 40, check: func(got map[string]int, o *confObs) string {
				if o.batch > 2 || !o.v2Ejected() {
					return fmt.Sprintf("v2 got %d of 40 requests (ejected: %v); want at most 2, then ejected", o.batch, o.v2Ejected())
				}
				return ""
			}},
		}},
	{name: "ejection time backoff grows and decays", v2Status: 500, h1Only: true,
		docs: outlierDR("{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 100ms}"), reqs: []istioReq{
			// A clean start: back, multiplier decayed (the listener probe may have hit v2).
			{wait: func(o *confObs) bool { return !o.v2Ejected() && o.v2().Multiplier == 0 },
				target: "/", n: 4, check: ejectedOnce(1)},
			// Back at the next sweep and failing again before the one
			// after: ejected for twice the base.
			{wait: func(o *confObs) bool { return !o.v2Ejected() },
				target: "/", n: 4, check: ejectedOnce(2)},
			// Back for two sweeps: the multiplier decayed to 0, so the next
			// ejection is for the base time again.
			{wait: func(o *confObs) bool { return !o.v2Ejected() && o.v2().Multiplier == 0 },
				target: "/", n: 4, check: ejectedOnce(1)},
		}},
}

// outlierDR is subsetsDR with a trafficPolicy.outlierDetection.
func outlierDR(od string) string {
	return subsetsDR + "  trafficPolicy:\n    outlierDetection: " + od + "\n"
}

// ejectedOnce checks that v2 answered one request and is ejected with the
// given ejection time multiplier.
func ejectedOnce(multiplier int) func(map[string]int, *confObs) string {
	return func(got map[string]int, o *confObs) string {
		if st := o.v2(); o.batch != 1 || !st.Ejected || st.Multiplier != multiplier {
			return fmt.Sprintf("v2 got %d requests, state %+v; want 1, then ejected with multiplier %d", o.batch, st, multiplier)
		}
		return ""
	}
}

// startStatusServer serves "v2" with status to every request, counting
// them in hits.
func startStatusServer(t *testing.T, status int, hits *atomic.Int64) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(status)
		io.WriteString(w, "v2")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// callerIP is the address of the calling workload of the conformance cases.
const callerIP = "127.0.0.61"

// TestIstioConformance: each case's documents applied to a control plane,
// its service served by v1 and v2 on one agent, requested through another
// agent; the outcome is what Istio's documentation says.
func TestIstioConformance(t *testing.T) {
	runIstioConformance(t, istioConformanceCases)
}

func runIstioConformance(t *testing.T, cases []istioCase) {
	runIstioConformanceOn(t, confNet{srvOctet: 244, cliOctet: 245, basePort: 19400}, cases)
}

// confNet keeps a run's listeners apart from other tests': the agents'
// VIP ranges (127.<octet>.0.0/16) and the services' ports (basePort+i).
type confNet struct{ srvOctet, cliOctet, basePort int }

func runIstioConformanceOn(t *testing.T, cn confNet, cases []istioCase) {
	p1, _ := startHTTP(t, "v1")
	p2, _ := startHTTP(t, "v2")
	cp := startControl(t, t.TempDir(), "")
	var workloads []Workload
	obs := make([]*confObs, len(cases))
	policies := 0
	for i, c := range cases {
		svc := fmt.Sprintf("conf%d", i)
		policies += strings.Count(c.docs, "kind: AuthorizationPolicy")
		apply(t, cp, httpSvcDocLB(svc, cn.basePort+i, "http", "round-robin"))
		apply(t, cp, strings.ReplaceAll(c.docs, "SVC", svc))
		obs[i] = &confObs{v2Key: "demo/" + svc + "-v2"}
		v2 := p2
		if c.v2Status != 0 {
			v2 = startStatusServer(t, c.v2Status, &obs[i].v2Hits)
		}
		w1, w2 := webWorkload(svc, svc+"-v1", p1), webWorkload(svc, svc+"-v2", v2)
		w1.Labels, w2.Labels = map[string]string{"version": "v1"}, map[string]string{"version": "v2"}
		workloads = append(workloads, w1, w2)
	}
	srv := startAgent(t, agentOpts{name: "srv", site: "s1", region: "r1", vipOctet: cn.srvOctet, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: workloads})
	apply(t, cp, `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"productpage","namespace":"demo"},"spec":{"ports":[{"name":"x","port":19499}]}}`)
	client := startAgent(t, agentOpts{name: "cli", site: "s1", region: "r1", vipOctet: cn.cliOctet, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{{Name: "productpage-1", Service: "productpage", Namespace: "demo", Address: callerIP,
			Labels: map[string]string{"app": "productpage", "version": "v1"}, Ports: []api.EndpointPort{{Name: "x", Port: 1}}, Check: Check{Type: "none"}}}})
	waitFor(t, "every service's endpoints and the policies", func() bool {
		v := client.view.Load()
		for i := range cases {
			if sv := v.services[fmt.Sprintf("demo/conf%d", i)]; sv == nil || len(sv.endpoints) != 2 {
				return false
			}
		}
		return srv.view.Load().authz.Len() == policies
	})
	waitFor(t, "the caller's identity", func() bool { return client.view.Load().ids[netip.MustParseAddr(callerIP)] != "" })
	// One client per protocol and source address.
	clients := map[string]*http.Client{}
	clientFor := func(proto, from string) *http.Client {
		if c := clients[proto+" "+from]; c != nil {
			return c
		}
		ip := from
		if ip == "" {
			ip = "127.0.0.1"
		}
		tr := &http.Transport{DialContext: dialFrom(ip)}
		if proto == "h2c" {
			var protos http.Protocols
			protos.SetUnencryptedHTTP2(true)
			tr.Protocols = &protos
		}
		t.Cleanup(tr.CloseIdleConnections)
		c := &http.Client{Timeout: 5 * time.Second, Transport: tr}
		clients[proto+" "+from] = c
		return c
	}
	c := clientFor("HTTP/1.1", "")
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vip := api.VIPFor(netip.MustParsePrefix(fmt.Sprintf("127.%d.0.0/16", cn.cliOctet)), client.view.Load().services[fmt.Sprintf("demo/conf%d", i)].svc.Status.VIPIndex)
			base := fmt.Sprintf("http://%s:%d", vip, cn.basePort+i)
			waitFor(t, "listener", func() bool {
				resp, err := c.Get(base + "/")
				if err == nil {
					resp.Body.Close()
				}
				return err == nil
			})
			protos := []string{"HTTP/1.1", "h2c"}
			if tc.h1Only {
				protos = protos[:1]
			}
			o := obs[i]
			o.client = client
			for _, proto := range protos {
				for _, rq := range tc.reqs {
					if rq.wait != nil {
						waitFor(t, "the case's precondition", func() bool { return rq.wait(o) })
					}
					hits := o.v2Hits.Load()
					cl := clientFor(proto, rq.from)
					n, method := max(rq.n, 1), rq.method
					if method == "" {
						method = "GET"
					}
					got := map[string]int{}
					for j := 0; j < n; j++ {
						req, err := http.NewRequest(method, base+rq.target, nil)
						if err != nil {
							t.Fatal(err)
						}
						for k, vs := range rq.header {
							req.Header[k] = vs
						}
						if h := rq.header.Get("Host"); h != "" { // net/http sends req.Host, not Header["Host"]
							req.Host = h
						}
						resp, err := cl.Do(req)
						if err != nil {
							t.Fatalf("%s: %s %s: %v", proto, method, rq.target, err)
						}
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						if strings.HasPrefix(rq.want, "grpc-") {
							got["grpc-"+resp.Header.Get("Grpc-Status")]++
						} else if resp.StatusCode == 200 && rq.want != "200" {
							got[strings.Fields(string(b) + " ?")[0]]++
						} else {
							got[fmt.Sprint(resp.StatusCode)]++
						}
					}
					o.batch = o.v2Hits.Load() - hits
					if rq.check != nil {
						if msg := rq.check(got, o); msg != "" {
							t.Errorf("%s: %s (answers %v)", proto, msg, got)
						}
						continue
					}
					ok := got[rq.want] == n
					if rq.want == "v1|v2" {
						ok = got["v1"] > 0 && got["v2"] > 0 && got["v1"]+got["v2"] == n
					}
					if !ok {
						t.Errorf("%s from %q: %s %s %v ×%d: got %v, want %s", proto, rq.from, method, rq.target, rq.header, n, got, rq.want)
					}
				}
			}
			// Requests answered 404 for want of a route are counted.
			want := 0
			for _, rq := range tc.reqs {
				if rq.want == "404" || rq.want == "grpc-12" {
					want += 2 * max(rq.n, 1) // HTTP/1.1 and h2c
				}
			}
			name := fmt.Sprintf(`fogmesh_agent_no_route_total{service="demo/conf%d"}`, i)
			if got := client.cfg.Metrics.GetOrCreateCounter(name).Get(); want > 0 && got < uint64(want) {
				t.Errorf("%s = %d, want at least %d", name, got, want)
			}
		})
	}
}
