package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/testenv/kubeapi"
)

// These tests run a real kube-apiserver (internal/testenv/kubeapi), a
// control plane watching it (-kube) and real agents (VIPs in 127.16,
// 127.17 and 127.18), and check with dig and HTTP through the agents that
// traffic follows what is created in the cluster.

func ptrTo[T any](v T) *T { return &v }

// kubeNode creates a Node with labels.
func kubeNode(t *testing.T, c kubernetes.Interface, name string, labels map[string]string) {
	t.Helper()
	if _, err := c.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// kubeSlice is an EndpointSlice of service svc with one port "http"
// (number port, or none: the pod's named port) and one endpoint per
// (address, node, pod).
func kubeSlice(ns, name, svc string, port int32, eps ...[3]string) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: ptrTo("http"), Protocol: ptrTo(corev1.ProtocolTCP)}}}
	if port > 0 {
		sl.Ports[0].Port = ptrTo(port)
	}
	for _, e := range eps {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{e[0]}, NodeName: ptrTo(e[1]),
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: e[2]}})
	}
	return sl
}

// kubeAgent starts an insecure agent for node name with VIPs in
// 127.<octet>/16; it returns its DNS address.
func kubeAgent(t *testing.T, syncAddr, name, site string, octet int) string {
	t.Helper()
	p, addrs := startAddrs(t, "agent", "-insecure", "-name", name, "-site", site, "-region", "r1", "-control", syncAddr,
		"-state-dir", t.TempDir(), "-admin-addr", any0, "-dns-addr", any0, "-mesh-addr", any0, "-vip-range", fmt.Sprintf("127.%d.0.0/16", octet))
	waitProcHTTP(t, p, "http://"+addrs["admin"]+"/healthz")
	return addrs["dns"]
}

// digA resolves name at the DNS server addr with dig; "" if no answer.
func digA(t *testing.T, dig, addr, name string) string {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	out, err := exec.Command(dig, "@"+host, "-p", port, name, "A", "+short", "+time=2", "+tries=1").CombinedOutput()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// answers GETs url n times and returns the bodies seen and how often.
func answers(url string, n int) map[string]int {
	return answersFrom(&http.Client{Timeout: 3 * time.Second}, url, n)
}

// answersFrom is answers with the client cli; a response other than 200
// counts as "status N".
func answersFrom(cli *http.Client, url string, n int) map[string]int {
	got := map[string]int{}
	for range n {
		resp, err := cli.Get(url)
		if err != nil {
			got["error: "+err.Error()]++
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			got[fmt.Sprintf("status %d", resp.StatusCode)]++
			continue
		}
		got[string(b)]++
	}
	return got
}

// waitAnswers waits until n requests in a row to url are answered by
// exactly the set want (each of them at least once).
func waitAnswers(t *testing.T, url string, what string, want ...string) {
	t.Helper()
	waitAnswersFrom(t, &http.Client{Timeout: 3 * time.Second}, url, what, want...)
}

// waitAnswersFrom is waitAnswers with the client cli.
func waitAnswersFrom(t *testing.T, cli *http.Client, url string, what string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var got map[string]int
	for time.Now().Before(deadline) {
		got = answersFrom(cli, url, 12)
		ok := len(got) == len(want)
		for _, w := range want {
			ok = ok && got[w] > 0
		}
		if ok {
			return
		}
		time.Sleep(100 * time.Millisecond) // poll interval
	}
	t.Fatalf("%s: requests to %s were answered by %v, want exactly %v", what, url, got, want)
}

// TestKubeRegistry: Services, EndpointSlices, Nodes, Pods and Istio
// resources created in a real kube-apiserver route real requests through
// real agents: both pods answer; a VirtualService sends everything to one
// subset; a node relabelled into the client's site takes all traffic; an
// endpoint removed from its slice takes none. An applied object and a
// cluster object of the same key are reported, not resolved.
func TestKubeRegistry(t *testing.T) {
	if !inNetns(t) {
		return
	}
	dig := testenv.NeedTool(t, "dig")
	k := kubeapi.Start(t)
	c := k.Client
	ctx := context.Background()
	dyn, err := dynamic.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	installCRDs(t, dyn, append(istioCRDs, fogmeshCRDs...)...)
	state := t.TempDir()
	cp, ca := startAddrs(t, "control", "-insecure", "-state-dir", state, "-admin-addr", any0, "-sync-addr", any0,
		"-heartbeat-interval", "500ms", "-kube", k.Kubeconfig)
	server := "http://" + ca["admin"]
	waitProcHTTP(t, cp, server+"/healthz")
	t.Cleanup(func() {
		if t.Failed() {
			for _, what := range []string{"cluster", "nodes", "services", "endpoints", "routes"} {
				out, _ := run(t, "get", what, "-server", server)
				t.Logf("fogmesh get %s:\n%s", what, out)
			}
			t.Logf("control plane:\n%s", cp.out)
		}
	})

	kubeNode(t, c, "kn-a", map[string]string{"fogmesh.io/site": "s1", "topology.kubernetes.io/region": "r1"})
	kubeNode(t, c, "kn-b", map[string]string{"fogmesh.io/site": "s2", "topology.kubernetes.io/region": "r1"})
	// OpenYurt's node-pool label places c.
	kubeNode(t, c, "kn-c", map[string]string{"apps.openyurt.io/nodepool": "s3", "topology.kubernetes.io/region": "r1"})
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web-sa"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	portB, portC := podServer(t, podAddrs[0], "pod-b"), podServer(t, podAddrs[1], "pod-c")
	for _, p := range []struct {
		name, node, version string
		port                int
	}{{"web-b", "kn-b", "v1", portB}, {"web-c", "kn-c", "v2", portC}} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: "shop", Labels: map[string]string{"app": "web", "version": p.version}},
			Spec: corev1.PodSpec{NodeName: p.node, ServiceAccountName: "web-sa", Containers: []corev1.Container{{Name: "web", Image: "example.invalid/web",
				Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: int32(p.port)}}}}}}
		if _, err := c.CoreV1().Pods("shop").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": "web"},
		Ports:    []corev1.ServicePort{{Name: "http", Port: 80, AppProtocol: ptrTo("http"), TargetPort: intstr.FromString("web")}}}}
	if _, err := c.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// b's slice names no port number: the pod's named port "web" gives it.
	if _, err := c.DiscoveryV1().EndpointSlices("shop").Create(ctx, kubeSlice("shop", "web-b", "web", 0, [3]string{podAddrs[0], "kn-b", "web-b"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sliceC, err := c.DiscoveryV1().EndpointSlices("shop").Create(ctx, kubeSlice("shop", "web-c", "web", int32(portC), [3]string{podAddrs[1], "kn-c", "web-c"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	dnsA := kubeAgent(t, ca["sync"], "kn-a", "s1", 16)
	// b and c register another site than their labels: the labels win.
	kubeAgent(t, ca["sync"], "kn-b", "elsewhere", 17)
	kubeAgent(t, ca["sync"], "kn-c", "elsewhere", 18)

	var vip string
	testenv.WaitFor(t, 30*time.Second, "web.shop.mesh to resolve at agent kn-a", func() bool {
		vip = digA(t, dig, dnsA, "web.shop.mesh")
		return strings.HasPrefix(vip, "127.16.")
	})
	url := "http://" + vip + "/"
	waitAnswers(t, url, "both pods, in other sites of the region", "pod-b", "pod-c")
	out, _ := run(t, "get", "nodes", "-server", server)
	for _, want := range []string{"kn-b  s2", "kn-c  s3"} {
		if !strings.Contains(strings.Join(strings.Fields(out), "  "), want) {
			t.Fatalf("nodes not placed by their labels (%q):\n%s", want, out)
		}
	}

	// Istio from the cluster: a DestinationRule's subsets and a
	// VirtualService sending everything to v2 (pod c).
	dr := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
		"metadata": map[string]any{"name": "web", "namespace": "shop"},
		"spec": map[string]any{"host": "web", "subsets": []any{
			map[string]any{"name": "v1", "labels": map[string]any{"version": "v1"}},
			map[string]any{"name": "v2", "labels": map[string]any{"version": "v2"}}}}}}
	vs := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
		"metadata": map[string]any{"name": "web", "namespace": "shop"},
		"spec": map[string]any{"hosts": []any{"web"}, "http": []any{map[string]any{"route": []any{
			map[string]any{"destination": map[string]any{"host": "web", "subset": "v2"}}}}}}}}
	drGVR := schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "destinationrules"}
	vsGVR := schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}
	if _, err := dyn.Resource(drGVR).Namespace("shop").Create(ctx, dr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(vsGVR).Namespace("shop").Create(ctx, vs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitAnswers(t, url, "a VirtualService from the cluster routing to subset v2", "pod-c")
	if err := dyn.Resource(vsGVR).Namespace("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitAnswers(t, url, "the VirtualService deleted", "pod-b", "pod-c")

	// b relabelled into the client's site: the nearest tier, all traffic.
	nb, err := c.CoreV1().Nodes().Get(ctx, "kn-b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nb.Labels["fogmesh.io/site"] = "s1"
	if _, err := c.CoreV1().Nodes().Update(ctx, nb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitAnswers(t, url, "node kn-b relabelled into site s1", "pod-b")

	// Now b's endpoint leaves its slice: c takes it all.
	_ = sliceC
	sb, err := c.DiscoveryV1().EndpointSlices("shop").Get(ctx, "web-b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sb.Endpoints = nil
	if _, err := c.DiscoveryV1().EndpointSlices("shop").Update(ctx, sb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitAnswers(t, url, "b's endpoint removed from its EndpointSlice", "pod-c")

	// An applied Service and a cluster Service of the same key: the
	// first stays and the conflict shows in get cluster; applying over a
	// cluster object is refused.
	doc := filepath.Join(t.TempDir(), "api.yaml")
	os.WriteFile(doc, []byte("apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec:\n  ports: [{name: http, port: 8080, protocol: http}]\n"), 0o644)
	if out, code := run(t, "apply", "-server", server, "-f", doc); code != 0 {
		t.Fatalf("apply: %s", out)
	}
	api := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "shop"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 9000}}}}
	if _, err := c.CoreV1().Services("shop").Create(ctx, api, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 20*time.Second, "the conflict in get cluster", func() bool {
		out, _ := run(t, "get", "cluster", "-server", server)
		return strings.Contains(out, "CONFLICT Service/shop/api: applied with fogmesh apply and also in the cluster")
	})
	if out, _ := run(t, "get", "services", "-server", server, "-o", "json"); !strings.Contains(out, `"port": 8080`) || strings.Contains(out, `"port": 9000`) {
		t.Fatalf("the applied service was replaced:\n%s", out)
	}
	webDoc := filepath.Join(t.TempDir(), "web.yaml")
	os.WriteFile(webDoc, []byte("apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports: [{name: http, port: 81}]\n"), 0o644)
	if out, code := run(t, "apply", "-server", server, "-f", webDoc); code == 0 || !strings.Contains(out, "kept by another source") {
		t.Fatalf("apply over a cluster object: %d %s", code, out)
	}
	if m := scrape(t, server+"/metrics", "fogmesh_control_cluster_conflicts"); m != "1" {
		t.Fatalf("fogmesh_control_cluster_conflicts = %q, want 1", m)
	}
}

// scrape returns the value of the metric line that starts with name.
func scrape(t *testing.T, url, name string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return v
		}
	}
	return ""
}

var (
	istioCRDs   = []string{"testdata/istio-crds.yaml"}
	fogmeshCRDs = []string{"../../deploy/crds/fogmesh.io.yaml"}
)

// installCRDs creates the CustomResourceDefinitions in the YAML files
// and waits until each is established.
func installCRDs(t *testing.T, dyn dynamic.Interface, files ...string) {
	t.Helper()
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	var names []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(b), "\n---\n") {
			var obj map[string]any
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			u := &unstructured.Unstructured{Object: obj}
			if _, err := dyn.Resource(crdGVR).Create(context.Background(), u, metav1.CreateOptions{}); err != nil {
				t.Fatalf("%s: create %s: %v", f, u.GetName(), err)
			}
			names = append(names, u.GetName())
		}
	}
	for _, n := range names {
		testenv.WaitFor(t, 30*time.Second, "CRD "+n+" established", func() bool {
			u, err := dyn.Resource(crdGVR).Get(context.Background(), n, metav1.GetOptions{})
			if err != nil {
				return false
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return true
				}
			}
			return false
		})
	}
}

// e2eBinEnv hands the fogmesh binary built by TestMain to a test re-run
// in its own network namespace, so it is not built twice.
const e2eBinEnv = "FOGMESH_E2E_BIN"

// netnsEnv is set in a test re-run by inNetns.
const netnsEnv = "FOGMESH_E2E_NETNS"

// podAddrs are the "pod IPs" of the Kubernetes tests: the apiserver
// refuses loopback addresses in EndpointSlices, so the tests run in a
// network namespace of their own whose lo also has these.
var podAddrs = []string{"10.244.0.1", "10.244.0.2", "10.244.0.3", "10.244.0.4", "10.244.0.5"}

// inNetns reports whether the test runs in a network namespace it made
// for itself, with podAddrs on its loopback interface. If not, it runs
// the test again in a new one (unshare --net, as root), reports its
// output and outcome, and returns false: the caller returns at once.
func inNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv(netnsEnv) == "1" {
		return true
	}
	testenv.NeedRoot(t)
	unshare := testenv.NeedTool(t, "unshare")
	testenv.NeedTool(t, "ip")
	script := "ip link set lo up"
	for _, a := range podAddrs {
		script += " && ip addr add " + a + "/32 dev lo"
	}
	script += ` && exec "$0" "$@"`
	args := []string{"--net", "--", "sh", "-c", script, os.Args[0], "-test.run", "^" + t.Name() + "$", "-test.count=1", "-test.v"}
	if d, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout", time.Until(d).Round(time.Second).String())
	}
	cmd := exec.Command(unshare, args...)
	cmd.Env = append(os.Environ(), netnsEnv+"=1", e2eBinEnv+"="+fogmeshBin)
	out, err := cmd.CombinedOutput()
	t.Logf("in its own network namespace:\n%s", out)
	if err != nil {
		t.Fatalf("the test failed in its network namespace: %v", err)
	}
	return false
}

// podServer serves its name on addr (a port the kernel picks).
func podServer(t *testing.T, addr, name string) int {
	t.Helper()
	ln, err := net.Listen("tcp", addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}
