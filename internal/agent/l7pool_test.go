package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/VictoriaMetrics/metrics"
	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/outlier"
	"github.com/fogmesh/fogmesh/internal/retry"
	"log/slog"
	"net/http/httptest"
)

// poolCase is one service of TestIstioConnectionPool: its Istio documents
// (SVC is the service's name) and its endpoints, by version.
type poolCase struct {
	svc      string
	proto    string
	docs     string
	backends map[string][]string // version -> backend names
}

// TestIstioConnectionPool runs Istio DestinationRules with connectionPool
// settings and subset traffic policies through a real agent, against
// backends that hold every request until the test opens their gate, so
// what is in flight is known without timing (issue 11, items 4 and 8).
func TestIstioConnectionPool(t *testing.T) {
	cases := []poolCase{
		// Istio's circuit breaking task: maxConnections 1,
		// http1MaxPendingRequests 1, maxRequestsPerConnection 1.
		{svc: "cbex", proto: "http", docs: `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: SVC, namespace: demo}
spec:
  host: SVC
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}
`, backends: map[string][]string{"v1": {"cbex-1"}}},
		// http2MaxRequests on an http2 port; maxConnections does not
		// bound multiplexed requests there.
		{svc: "h2max", proto: "http2", docs: `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: SVC, namespace: demo}
spec:
  host: SVC
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http2MaxRequests: 3}}
`, backends: map[string][]string{"v1": {"h2max-1"}}},
		// A subset's connectionPool overrides the DestinationRule's (v2
		// limited, v1 not); a subset's loadBalancer overrides the
		// DestinationRule's (v2 round robin, v1 hashed by x-user).
		{svc: "subpol", proto: "http", docs: `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: SVC, namespace: demo}
spec:
  hosts: [SVC]
  http:
  - match: [{headers: {x-v: {exact: "2"}}}]
    route: [{destination: {host: SVC, subset: v2}}]
  - route: [{destination: {host: SVC, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: SVC, namespace: demo}
spec:
  host: SVC
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
      connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
`, backends: map[string][]string{"v1": {"subpol-v1a", "subpol-v1b"}, "v2": {"subpol-v2a", "subpol-v2b"}}},
		// A top-level pool is counted per subset, as Istio's per-subset
		// clusters: one in flight to each.
		{svc: "subcnt", proto: "http", docs: `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: SVC, namespace: demo}
spec:
  hosts: [SVC]
  http:
  - match: [{headers: {x-v: {exact: "2"}}}]
    route: [{destination: {host: SVC, subset: v2}}]
  - route: [{destination: {host: SVC, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: SVC, namespace: demo}
spec:
  host: SVC
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 1}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`, backends: map[string][]string{"v1": {"subcnt-v1"}, "v2": {"subcnt-v2"}}},
		// maxRequestsPerConnection and idleTimeout of the upstream pool.
		{svc: "perconn", proto: "http", docs: `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: SVC, namespace: demo}
spec:
  host: SVC
  trafficPolicy:
    connectionPool: {http: {maxRequestsPerConnection: 2}}
`, backends: map[string][]string{"v1": {"perconn-1"}}},
		{svc: "idle", proto: "http", docs: `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: SVC, namespace: demo}
spec:
  host: SVC
  trafficPolicy:
    connectionPool: {http: {idleTimeout: 200ms}}
`, backends: map[string][]string{"v1": {"idle-1"}}},
		// Envoy's max_requests refuses at once, pending requests wait
		// only for a connection.
		{svc: "reqcap", proto: "http", docs: `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: SVC, namespace: demo}
spec:
  host: SVC
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 2, http1MaxPendingRequests: 5}}
`, backends: map[string][]string{"v1": {"reqcap-1"}}},
		// No http1MaxPendingRequests: Istio's default, no bound.
		{svc: "nopend", proto: "http", docs: `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: SVC, namespace: demo}
spec:
  host: SVC
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}}
`, backends: map[string][]string{"v1": {"nopend-1"}}},
		{svc: "keepalive", proto: "http", docs: `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: SVC, namespace: demo}
spec:
  host: SVC
  trafficPolicy:
    connectionPool: {tcp: {tcpKeepalive: {time: 7s, interval: 3s, probes: 4}}}
`, backends: map[string][]string{"v1": {"keepalive-1"}}},
		// portLevelSettings: the port's pool applies to it.
		{svc: "portlvl", proto: "http", docs: `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: SVC, namespace: demo}
spec:
  host: SVC
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 10}}
    portLevelSettings:
    - port: {number: PORT}
      connectionPool: {http: {http2MaxRequests: 1}}
`, backends: map[string][]string{"v1": {"portlvl-1"}}},
	}
	cp := startControl(t, t.TempDir(), "")
	backends := map[string]*gateBackend{}
	var workloads []Workload
	for i, c := range cases {
		apply(t, cp, httpSvcDocLB(c.svc, 19520+i, c.proto, "round-robin"))
		apply(t, cp, strings.NewReplacer("SVC", c.svc, "PORT", fmt.Sprint(19520+i)).Replace(c.docs))
		for version, names := range c.backends {
			for _, name := range names {
				b := startGateBackend(t, name)
				backends[name] = b
				w := webWorkload(c.svc, name, b.port)
				w.Labels = map[string]string{"version": version}
				workloads = append(workloads, w)
			}
		}
	}
	a := startAgent(t, agentOpts{name: "pool", site: "s1", region: "r1", vipOctet: 222, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: workloads})
	waitFor(t, "endpoints and policies", func() bool {
		v := a.view.Load()
		for _, c := range cases {
			n := 0
			for _, names := range c.backends {
				n += len(names)
			}
			sv := v.services["demo/"+c.svc]
			if sv == nil || len(sv.endpoints) != n || sv.subsets == nil {
				return false
			}
		}
		return true
	})
	url := func(i int) string {
		vip := api.VIPFor(netip.MustParsePrefix("127.222.0.0/16"), a.view.Load().services["demo/"+cases[i].svc].svc.Status.VIPIndex)
		return fmt.Sprintf("http://%s:%d/", vip, 19520+i)
	}
	newClient := func() *http.Client {
		tr := &http.Transport{MaxIdleConnsPerHost: 16}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Timeout: 10 * time.Second, Transport: tr}
	}
	c := newClient()
	// Listeners up (a connection, no request: the backends count
	// requests).
	for i := range cases {
		addr := strings.TrimSuffix(strings.TrimPrefix(url(i), "http://"), "/")
		waitFor(t, "listener "+addr, func() bool {
			conn, err := net.Dial("tcp", addr)
			if err == nil {
				conn.Close()
			}
			return err == nil
		})
	}
	for _, name := range []string{"perconn-1", "idle-1"} {
		backends[name].open()
	}
	metric := func(name string) string {
		var sb strings.Builder
		a.cfg.Metrics.WritePrometheus(&sb)
		for _, l := range strings.Split(sb.String(), "\n") {
			if strings.HasPrefix(l, name+" ") {
				return strings.TrimPrefix(l, name+" ")
			}
		}
		return "0"
	}

	t.Run("istio circuit breaking example", func(t *testing.T) {
		b := backends["cbex-1"]
		defer b.open() // a failed wait lets the requests end
		// 4 concurrent clients: one request in flight (one connection),
		// one pending, two overflow at once.
		r := fireBurst(t, c, url(0), nil, 4)
		waitFor(t, "1 in flight at the backend and 2 overflows", func() bool {
			in, _, _ := b.stats()
			return in == 1 && r.overflows() == 2
		})
		b.open()
		codes, _ := r.done()
		if _, most, _ := b.stats(); most != 1 || codes[200] != 2 || codes[503] != 2 {
			t.Fatalf("got %v with at most %d in flight at the backend; want 2×200, 2×503 and 1", codes, most)
		}
		// 20 more from 4 clients: never more than 1 in flight, every
		// answer 200 or the overflow 503, and overflows counted.
		before := metric(`fogmesh_agent_circuit_breaker_rejections_total{service="demo/cbex",subset="",reason="pending_full"}`)
		var wg sync.WaitGroup
		var mu sync.Mutex
		all := map[int]int{}
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < 5; j++ {
					resp, err := c.Get(url(0))
					if err != nil {
						t.Error(err)
						return
					}
					resp.Body.Close()
					mu.Lock()
					all[resp.StatusCode]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if _, most, _ := b.stats(); most != 1 || all[200]+all[503] != 20 || all[200] == 0 {
			t.Fatalf("20 requests: %v, at most %d in flight at the backend", all, most)
		}
		after := metric(`fogmesh_agent_circuit_breaker_rejections_total{service="demo/cbex",subset="",reason="pending_full"}`)
		if before != "2" || after != fmt.Sprint(2+all[503]) {
			t.Errorf("pending_full overflows counted %s then %s, want 2 then %d", before, after, 2+all[503])
		}
	})

	t.Run("http2MaxRequests on an http2 port", func(t *testing.T) {
		b := backends["h2max-1"]
		defer b.open()
		r := fireBurst(t, c, url(1), nil, 6)
		waitFor(t, "3 in flight at the backend and 3 overflows", func() bool {
			in, _, _ := b.stats()
			return in == 3 && r.overflows() == 3
		})
		b.open()
		codes, _ := r.done()
		if _, most, _ := b.stats(); most != 3 || codes[200] != 3 || codes[503] != 3 {
			t.Fatalf("got %v with at most %d in flight; want 3×200, 3×503 and 3", codes, most)
		}
	})

	t.Run("subset connectionPool and loadBalancer override the top level", func(t *testing.T) {
		v2 := http.Header{"X-V": {"2"}}
		for _, name := range []string{"subpol-v1a", "subpol-v1b", "subpol-v2a", "subpol-v2b"} {
			defer backends[name].open()
		}
		// v2: maxConnections 1, 1 pending: 2 of 4 overflow.
		r2 := fireBurst(t, c, url(2), v2, 4)
		// v1: no limit: all 4 reach its backends.
		r1 := fireBurst(t, c, url(2), http.Header{"X-User": {"u1"}}, 4)
		waitFor(t, "v2: 1 in flight and 2 overflows; v1: 4 in flight", func() bool {
			a, _, _ := backends["subpol-v2a"].stats()
			b, _, _ := backends["subpol-v2b"].stats()
			c, _, _ := backends["subpol-v1a"].stats()
			d, _, _ := backends["subpol-v1b"].stats()
			return a+b == 1 && r2.overflows() == 2 && c+d == 4
		})
		for _, b := range backends {
			if strings.HasPrefix(b.name, "subpol-") {
				b.open()
			}
		}
		if codes, _ := r2.done(); codes[200] != 2 || codes[503] != 2 {
			t.Errorf("v2: %v", codes)
		}
		codes, bodies := r1.done()
		if codes[200] != 4 || len(bodies) != 1 {
			t.Errorf("v1, hashed by x-user: %v from %v, want 4×200 from one endpoint", codes, bodies)
		}
		if got := metric(`fogmesh_agent_circuit_breaker_rejections_total{service="demo/subpol",subset="v2",reason="pending_full"}`); got != "2" {
			t.Errorf("v2 overflows counted %s, want 2", got)
		}
		// One user, one at a time: v1 keeps its endpoint (the DestinationRule's
		// consistent hash), v2 goes round robin over both of its.
		seen := map[string]map[string]int{}
		for _, hdr := range []http.Header{{"X-User": {"u7"}}, {"X-User": {"u7"}, "X-V": {"2"}}} {
			for j := 0; j < 20; j++ {
				req, _ := http.NewRequest("GET", url(2), nil)
				req.Header = hdr
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				v := hdr.Get("X-V")
				if seen[v] == nil {
					seen[v] = map[string]int{}
				}
				seen[v][fmt.Sprintf("%d %s", resp.StatusCode, body)]++
			}
		}
		if len(seen[""]) != 1 || len(seen["2"]) != 2 {
			t.Errorf("v1 (hashed) got %v, want one endpoint; v2 (round robin) got %v, want both", seen[""], seen["2"])
		}
	})

	t.Run("a top-level pool counts per subset", func(t *testing.T) {
		defer backends["subcnt-v1"].open()
		defer backends["subcnt-v2"].open()
		r1 := fireBurst(t, c, url(3), nil, 3)
		r2 := fireBurst(t, c, url(3), http.Header{"X-V": {"2"}}, 3)
		waitFor(t, "1 in flight at each subset, 2 overflows each", func() bool {
			a, _, _ := backends["subcnt-v1"].stats()
			b, _, _ := backends["subcnt-v2"].stats()
			return a == 1 && b == 1 && r1.overflows() == 2 && r2.overflows() == 2
		})
		backends["subcnt-v1"].open()
		backends["subcnt-v2"].open()
		r1.done()
		r2.done()
	})

	t.Run("http2MaxRequests refuses at once on an http port", func(t *testing.T) {
		b := backends["reqcap-1"]
		defer b.open()
		r := fireBurst(t, c, url(6), nil, 5)
		waitFor(t, "2 in flight at the backend and 3 overflows", func() bool {
			in, _, _ := b.stats()
			return in == 2 && r.overflows() == 3
		})
		b.open()
		if codes, _ := r.done(); codes[200] != 2 || codes[503] != 3 {
			t.Fatalf("got %v, want 2×200 and 3×503", codes)
		}
	})

	t.Run("no http1MaxPendingRequests: no bound", func(t *testing.T) {
		b := backends["nopend-1"]
		defer b.open()
		r := fireBurst(t, c, url(7), nil, 4)
		waitFor(t, "1 in flight at the backend and 3 pending", func() bool {
			in, _, _ := b.stats()
			v, ok := a.l7.limiters.Load("demo/nopend")
			if !ok {
				return false
			}
			l := v.(*reqLimiter)
			l.mu.Lock()
			defer l.mu.Unlock()
			return in == 1 && len(l.waiters) == 3
		})
		b.open()
		codes, _ := r.done()
		if _, most, _ := b.stats(); most != 1 || codes[200] != 4 {
			t.Fatalf("got %v with at most %d in flight, want 4×200 one at a time", codes, most)
		}
	})

	t.Run("maxRequestsPerConnection", func(t *testing.T) {
		for j := 0; j < 6; j++ {
			resp, err := c.Get(url(4))
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
		}
		// The listener check above sent none: 6 requests, 2 a connection.
		if _, _, conns := backends["perconn-1"].stats(); conns != 3 {
			t.Fatalf("6 sequential requests used %d upstream connections, want 3", conns)
		}
	})

	t.Run("portLevelSettings", func(t *testing.T) {
		b := backends["portlvl-1"]
		defer b.open()
		r := fireBurst(t, c, url(9), nil, 3)
		waitFor(t, "1 in flight at the backend and 2 overflows", func() bool {
			in, _, _ := b.stats()
			return in == 1 && r.overflows() == 2
		})
		b.open()
		if codes, _ := r.done(); codes[200] != 1 || codes[503] != 2 {
			t.Fatalf("got %v, want 1×200 and 2×503", codes)
		}
	})

	t.Run("tcpKeepalive", func(t *testing.T) {
		sv := a.view.Load().services["demo/keepalive"]
		c, err := a.dialEndpoint(context.Background(), sv, sv.endpoints[0], "web")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rc, err := c.(syscall.Conn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		rc.Control(func(fd uintptr) {
			for name, opt := range map[string][2]int{"SO_KEEPALIVE": {unix.SOL_SOCKET, unix.SO_KEEPALIVE},
				"TCP_KEEPIDLE": {unix.IPPROTO_TCP, unix.TCP_KEEPIDLE}, "TCP_KEEPINTVL": {unix.IPPROTO_TCP, unix.TCP_KEEPINTVL},
				"TCP_KEEPCNT": {unix.IPPROTO_TCP, unix.TCP_KEEPCNT}} {
				got[name], _ = unix.GetsockoptInt(int(fd), opt[0], opt[1])
			}
		})
		if want := map[string]int{"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 7, "TCP_KEEPINTVL": 3, "TCP_KEEPCNT": 4}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("socket options %v, want %v", got, want)
		}
	})

	t.Run("idleTimeout", func(t *testing.T) {
		resp, err := c.Get(url(5))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		b := backends["idle-1"]
		waitFor(t, "the idle upstream connection closed", func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			for addr := range b.conns {
				if !b.closed[addr] {
					return false
				}
			}
			return len(b.conns) == 1
		})
	})
}

// TestPoolKeyKeepalive: views dialing with different tcpKeepalive settings
// get pools of their own (the dial sets it; reviewer's regression: the key
// left it out, so a pool dialled under one setting served the other).
func TestPoolKeyKeepalive(t *testing.T) {
	ep := &api.Endpoint{Meta: api.Meta{Name: "e", Namespace: "shop"}, Spec: api.EndpointSpec{Address: "10.0.0.1", Ports: []api.EndpointPort{{Name: "web", Port: 8080}}}}
	ev := &endpointView{key: "shop/e", ep: ep}
	mk := func(ka *api.TCPKeepalive) *serviceView {
		return &serviceView{svc: &api.Service{Meta: api.Meta{Name: "r", Namespace: "shop"}, Spec: api.ServiceSpec{
			CircuitBreaker: api.CircuitBreaker{TCPKeepalive: ka}}}}
	}
	a, b, c := mk(nil), mk(&api.TCPKeepalive{Time: api.Duration(10e9)}), mk(&api.TCPKeepalive{Time: api.Duration(20e9)})
	if poolKey(a, ev, "web", "") == poolKey(b, ev, "web", "") || poolKey(b, ev, "web", "") == poolKey(c, ev, "web", "") {
		t.Errorf("views dialing with different tcpKeepalive share one pool: %s", poolKey(b, ev, "web", ""))
	}
	if poolKey(b, ev, "web", "") != poolKey(mk(&api.TCPKeepalive{Time: api.Duration(10e9)}), ev, "web", "") {
		t.Error("equal settings got different pools")
	}
}

// TestPoolClosedIsNoConnectFailure: an attempt that finds its upstream
// pool closed (pruned by a view swap, here closed before the request)
// sent nothing and says nothing about the endpoint: it is not fed to
// outlier detection (no quarantine under fogmesh's connectFailure
// "eject") and is tried again for free on a fresh pool, so the request
// succeeds even with one endpoint and no retries.
func TestPoolClosedIsNoConnectFailure(t *testing.T) {
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go backend.Serve(ln)
	defer backend.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	a := &Agent{log: slog.New(slog.NewTextHandler(io.Discard, nil)), retries: retry.NewBudget()}
	a.cfg.Metrics = metrics.NewSet()
	a.cfg.EjectFor = Duration(time.Minute)
	a.initMetrics()
	s := &l7{a: a}
	s.h1 = newH1Path(s)
	svc := &api.Service{Meta: api.Meta{Name: "pc", Namespace: "shop"}, Spec: api.ServiceSpec{
		Ports: []api.ServicePort{{Name: "web", Port: 80, Protocol: "http"}}}}
	ep := &api.Endpoint{Meta: api.Meta{Name: "pc-1", Namespace: "shop"}, Spec: api.EndpointSpec{Service: "pc", Address: "127.0.0.1",
		Ports: []api.EndpointPort{{Name: "web", Port: port}}}}
	ev := &endpointView{key: ep.Meta.Key(), ep: ep, healthy: true}
	sv := &serviceView{svc: svc, limitKey: "shop/pc", endpoints: []*endpointView{ev}}
	v := &view{services: map[string]*serviceView{"shop/pc": sv}}
	a.view.Store(v)
	a.syncOutliers(v)

	closed := s.h1.poolFor(sv, ev, "web")
	closed.Close(false) // as prune does during a view swap
	req := httptest.NewRequest("GET", "http://pc/", nil)
	resp, err := s.h1.rt.roundTrip(req, sv, listenTarget{svc: "shop/pc", port: "web", proto: "http"}, []*endpointView{ev}, api.RetryPolicy{}, "", nil, nil)
	if err != nil {
		t.Fatalf("a closed pool failed the request: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "ok" {
		t.Errorf("got %d %q, want 200 ok", resp.StatusCode, b)
	}
	if a.isEjectedAnywhere(ev.key) || a.outliers.State("shop/pc", ev.key, time.Now()) != (outlier.HostState{}) {
		t.Errorf("the closed pool was counted against the endpoint: ejected %v, state %+v",
			a.isEjectedAnywhere(ev.key), a.outliers.State("shop/pc", ev.key, time.Now()))
	}
	s.h1.closeAll()
}
