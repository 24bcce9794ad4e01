package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/testenv/kubeapi"
)

// linkProxy stands between the source and a real apiserver (plain HTTP
// in, HTTPS out) to break the link the ways an edge link breaks: it cuts
// the open watches, refuses everything while down, and can answer the
// next watch of each resource with 410 Gone in the stream, as an
// apiserver does for a resourceVersion it compacted away.
type linkProxy struct {
	ln net.Listener
	rp *httputil.ReverseProxy

	mu      sync.Mutex // guards the following
	down    bool
	gone    map[string]bool // resource paths whose next watch gets 410
	cancels map[*http.Request]context.CancelFunc
	goneN   int
}

func startLinkProxy(t *testing.T, k *kubeapi.Server) *linkProxy {
	t.Helper()
	target, _ := url.Parse(k.URL)
	ca, err := os.ReadFile(k.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	// Like KubeEdge's metaServer, plain HTTP without authentication in,
	// the credentials added on the way out.
	direct := rp.Director
	rp.Director = func(r *http.Request) {
		direct(r)
		r.Header.Set("Authorization", "Bearer "+k.Token)
	}
	rp.FlushInterval = -1 // watches stream
	rp.ErrorLog = nil
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &linkProxy{ln: ln, rp: rp, gone: map[string]bool{}, cancels: map[*http.Request]context.CancelFunc{}}
	srv := &http.Server{Handler: p}
	go srv.Serve(ln)
	t.Cleanup(func() { p.cut(); srv.Close() })
	return p
}

func (p *linkProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	watch := r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1"
	p.mu.Lock()
	down := p.down
	gone := watch && p.gone[r.URL.Path]
	if gone {
		delete(p.gone, r.URL.Path)
		p.goneN++
	}
	ctx, cancel := context.WithCancel(r.Context())
	p.cancels[r] = cancel
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.cancels, r)
		p.mu.Unlock()
		cancel()
	}()
	if down { // a dead apiserver: the connection drops
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
			}
		}
		return
	}
	if gone {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, `{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 1 (99)","reason":"Expired","code":410}}`+"\n")
		return
	}
	p.rp.ServeHTTP(w, r.WithContext(ctx))
}

// cut ends every open request (the watches).
func (p *linkProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.cancels {
		c()
	}
}

func (p *linkProxy) setDown(down bool) {
	p.mu.Lock()
	p.down = down
	p.mu.Unlock()
	p.cut()
}

// goneNext answers the next watch of each path with 410, and cuts the
// open ones so that they come.
func (p *linkProxy) goneNext(paths ...string) {
	p.mu.Lock()
	for _, x := range paths {
		p.gone[x] = true
	}
	p.mu.Unlock()
	p.cut()
}

func (p *linkProxy) goneSent() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.goneN
}

// harness is a control plane fed by a Source through a linkProxy.
type harness struct {
	t     *testing.T
	k     *kubeapi.Server
	proxy *linkProxy
	ctl   *control.Server
	ms    *metrics.Set
	logs  *testenv.Buffer
}

func startHarness(t *testing.T) *harness { return startHarnessWith(t, 0) }

// startHarnessWith looks for custom resource kinds every crdPoll (0: the
// default).
func startHarnessWith(t *testing.T, crdPoll time.Duration) *harness {
	t.Helper()
	k := kubeapi.Start(t)
	h := &harness{t: t, k: k, proxy: startLinkProxy(t, k), ms: metrics.NewSet(), logs: &testenv.Buffer{}}
	log := slog.New(slog.NewTextHandler(h.logs, nil))
	ctl, err := control.New(control.Config{StateDir: t.TempDir(), Insecure: true, AdminAddr: "127.0.0.1:0", SyncAddr: "127.0.0.1:0", Metrics: h.ms, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	h.ctl = ctl
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); ctl.Serve(ctx) }()
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	os.WriteFile(kc, []byte(k.KubeconfigFor("http://"+h.proxy.ln.Addr().String())), 0o600)
	src, err := New(Config{Kubeconfig: kc, Logger: log, Metrics: h.ms, Debounce: 20 * time.Millisecond, CRDPoll: crdPoll}, ctl)
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan struct{})
	go func() { defer close(ran); src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-ran
		ctl.Close()
		<-served
		if t.Failed() {
			t.Logf("logs:\n%s", h.logs)
		}
	})
	return h
}

// stored returns the control plane's objects of a kind (plural) as JSON.
func (h *harness) stored(kind string) string {
	resp, err := http.Get("http://" + h.ctl.AdminAddr() + "/v1/" + kind)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func (h *harness) counter(name string) uint64 {
	var buf bytes.Buffer
	h.ms.WritePrometheus(&buf)
	var total uint64
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(l, name) {
			var v uint64
			fmt.Sscan(l[strings.LastIndexByte(l, ' ')+1:], &v)
			total += v
		}
	}
	return total
}

func (h *harness) warnings() string {
	return strings.Join(h.ctl.ClusterStatus().Warnings, "\n")
}

func manyPorts(name string, n int) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}}
	for i := range n {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: fmt.Sprintf("p%d", i), Port: int32(1000 + i)})
	}
	return s
}

func slice(name, svc string, port int32, eps ...[2]string) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: ptr("p0"), Port: ptr(port)}}}
	for _, e := range eps {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{e[0]}, NodeName: ptr(e[1])})
	}
	return sl
}

// TestSourceBadInputAndLinkLoss: bad objects are logged, counted and
// shown, and the last good state keeps serving; a watch answered 410
// Gone and an apiserver that stops are counted, the state seen last
// stays, and the relist after the link returns brings what changed
// meanwhile.
func TestSourceBadInputAndLinkLoss(t *testing.T) {
	h := startHarness(t)
	c := h.k.Client
	ctx := context.Background()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1",
		Labels: map[string]string{LabelSite: "a", LabelOpenYurtPool: "b"}}}, metav1.CreateOptions{}))
	must(c.CoreV1().Services("default").Create(ctx, manyPorts("good", 1), metav1.CreateOptions{}))
	must(c.DiscoveryV1().EndpointSlices("default").Create(ctx, slice("good-1", "good", 8080, [2]string{"10.1.0.1", "n1"}, [2]string{"10.1.0.2", "ghost"}), metav1.CreateOptions{}))
	must(c.CoreV1().Services("default").Create(ctx, manyPorts("huge", 3000), metav1.CreateOptions{}))
	must(c.DiscoveryV1().EndpointSlices("default").Create(ctx, slice("orphan-1", "nosuch", 1, [2]string{"10.1.0.3", "n1"}), metav1.CreateOptions{}))

	wants := []string{
		"service default/huge: 3000 ports, more than the limit of 256",
		`names node "ghost", which the cluster does not have`,
		`node n1: labels fogmesh.io/site="a" and apps.openyurt.io/nodepool="b" name different sites`,
		"endpointslices of default/nosuch: the cluster has no such Service",
	}
	testenv.WaitFor(t, 30*time.Second, "service good, its endpoint on n1 and a warning for each bad object", func() bool {
		ok := strings.Contains(h.stored("services"), `"name": "good"`) && strings.Contains(h.stored("endpoints"), `"10.1.0.1"`)
		w := h.warnings()
		for _, want := range wants {
			ok = ok && strings.Contains(w, want)
		}
		return ok
	})
	if strings.Contains(h.stored("services"), `"huge"`) || strings.Contains(h.stored("endpoints"), "10.1.0.2") {
		t.Fatal("bad input was stored")
	}
	if h.counter("fogmesh_kube_bad_objects_total") == 0 {
		t.Fatal("bad objects not counted")
	}
	if !strings.Contains(h.logs.String(), "kube: bad input") {
		t.Fatal("bad input not logged")
	}

	// good turns bad (too many ports): its last good version serves.
	g, err := c.CoreV1().Services("default").Get(ctx, "good", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g.Spec.Ports = manyPorts("good", 400).Spec.Ports
	must(c.CoreV1().Services("default").Update(ctx, g, metav1.UpdateOptions{}))
	testenv.WaitFor(t, 30*time.Second, "the last good version of good to be served", func() bool {
		w := h.warnings()
		return strings.Contains(w, "service default/good: 400 ports, more than the limit of 256") && strings.Contains(w, "its last good version")
	})
	if s := h.stored("services"); !strings.Contains(s, `"name": "good"`) || strings.Contains(s, `"p1"`) {
		t.Fatalf("good is not served as last seen:\n%s", s)
	}

	// 410 Gone in the watch of services and endpointslices: counted,
	// relisted, and a change made meanwhile arrives.
	before := h.counter(`fogmesh_kube_watch_errors_total{resource="services",reason="gone"}`)
	h.proxy.goneNext("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices")
	must(c.CoreV1().Services("default").Create(ctx, manyPorts("after-gone", 1), metav1.CreateOptions{}))
	testenv.WaitFor(t, 30*time.Second, "a 410 counted and the relist done", func() bool {
		return h.proxy.goneSent() > 0 && h.counter(`fogmesh_kube_watch_errors_total{resource="services",reason="gone"}`) > before &&
			strings.Contains(h.stored("services"), `"after-gone"`)
	})

	// The apiserver stops answering: what was seen keeps serving; a
	// change made meanwhile (through the apiserver directly) arrives
	// with the relist once the link is back.
	h.proxy.setDown(true)
	must(c.CoreV1().Services("default").Create(ctx, manyPorts("while-down", 1), metav1.CreateOptions{}))
	must(nil, c.CoreV1().Services("default").Delete(ctx, "after-gone", metav1.DeleteOptions{}))
	sl, err := c.DiscoveryV1().EndpointSlices("default").Get(ctx, "good-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sl.Endpoints = sl.Endpoints[1:] // 10.1.0.1 leaves
	must(c.DiscoveryV1().EndpointSlices("default").Update(ctx, sl, metav1.UpdateOptions{}))
	errsBefore := h.counter("fogmesh_kube_watch_errors_total")
	testenv.WaitFor(t, 30*time.Second, "the broken link to be counted and shown", func() bool {
		return h.counter("fogmesh_kube_watch_errors_total") > errsBefore && h.ctl.ClusterStatus().Link != ""
	})
	if s, e := h.stored("services"), h.stored("endpoints"); !strings.Contains(s, `"after-gone"`) || strings.Contains(s, "while-down") || !strings.Contains(e, "10.1.0.1") {
		t.Fatalf("the last state seen is not what serves while the link is down:\n%s\n%s", s, e)
	}
	h.proxy.setDown(false)
	testenv.WaitFor(t, 60*time.Second, "the relist after the link returned", func() bool {
		s, e := h.stored("services"), h.stored("endpoints")
		return strings.Contains(s, "while-down") && !strings.Contains(s, `"after-gone"`) && !strings.Contains(e, "10.1.0.1")
	})
	if _, ok := any(h.ctl).(Sink); !ok {
		t.Fatal("control.Server is no Sink")
	}
	_ = api.LabelSource
}

// TestSourceCustomResources: fogmesh's CRDs (deploy/crds), installed
// after the source started, are found; a Route from the cluster is
// stored with the source label, and one fogmesh apply would refuse is
// refused here too, with the same message.
func TestSourceCustomResources(t *testing.T) {
	h := startHarnessWith(t, 200*time.Millisecond)
	dyn, err := dynamic.NewForConfig(h.k.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	b, err := os.ReadFile("../../deploy/crds/fogmesh.io.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		if _, err := dyn.Resource(crdGVR).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.k.Client.CoreV1().Services("default").Create(ctx, manyPorts("web", 1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	routes := schema.GroupVersionResource{Group: "fogmesh.io", Version: "v1alpha1", Resource: "routes"}
	route := func(name string, spec map[string]any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "fogmesh.io/v1alpha1", "kind": "Route",
			"metadata": map[string]any{"name": name, "namespace": "default"}, "spec": spec}}
	}
	// The CRD may be established a moment after it is created.
	testenv.WaitFor(t, 60*time.Second, "a Route to be created", func() bool {
		_, err := dyn.Resource(routes).Namespace("default").Create(ctx, route("canary", map[string]any{"service": "web",
			"rules": []any{map[string]any{"backends": []any{map[string]any{"subset": "a", "weight": 1}}}}}), metav1.CreateOptions{})
		return err == nil
	})
	if _, err := dyn.Resource(routes).Namespace("default").Create(ctx, route("typo", map[string]any{"service": "web", "rulez": []any{}}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A new kind's informer may back off after 429s while the
	// apiserver installs it: minutes are not needed, but 30 s can be.
	testenv.WaitFor(t, 90*time.Second, "the Route stored and the bad one warned about", func() bool {
		r := h.stored("routes")
		return strings.Contains(r, `"name": "canary"`) && strings.Contains(r, `"fogmesh.io/source": "kubernetes"`) &&
			strings.Contains(h.warnings(), "Route default/typo: document 1 (Route default/typo): spec.rulez: unknown field")
	})
	if strings.Contains(h.stored("routes"), "typo") {
		t.Fatal("the bad Route was stored")
	}
}
