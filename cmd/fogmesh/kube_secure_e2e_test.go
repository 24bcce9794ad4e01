package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/testenv/kubeapi"
)

// kubeJoinedAgent starts a secure agent for node name of site, joined
// with a join token of that site, with VIPs in 127.<octet>/16 and its
// state in dir (a later start on dir keeps the node key). extra are more
// flags.
func kubeJoinedAgent(t *testing.T, admin []string, syncAddr, name, site string, octet int, dir string, extra ...string) (*proc, map[string]string) {
	t.Helper()
	tok, code := run(t, append([]string{"token", "create", "-site", site, "-ttl", "5m"}, admin...)...)
	if code != 0 {
		t.Fatalf("token create: %s", tok)
	}
	args := append([]string{"agent", "-name", name, "-site", site, "-region", "r1", "-control", syncAddr, "-join-token", strings.TrimSpace(tok),
		"-state-dir", dir, "-admin-addr", any0, "-dns-addr", any0, "-mesh-addr", any0, "-vip-range", fmt.Sprintf("127.%d.0.0/16", octet)}, extra...)
	p, addrs := startAddrs(t, args...)
	waitProcHTTP(t, p, "http://"+addrs["admin"]+"/healthz")
	return p, addrs
}

// clientFrom is an HTTP client whose connections come from the address
// src: a pod of this node, as the agent sees it.
func clientFrom(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 3 * time.Second}
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

// podServerID serves its name and the caller identity the mesh vouched
// for (X-Fogmesh-Source-Id, "-" when none) on addr.
func podServerID(t *testing.T, addr, name string) int {
	t.Helper()
	ln, err := net.Listen("tcp", addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name+" "+cmpOr(r.Header.Get("X-Fogmesh-Source-Id"), "-"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// kubePod creates a pod of node with a service account and labels.
func kubePod(t *testing.T, c kubernetes.Interface, ns, name, node, sa string, labels map[string]string, port int) {
	t.Helper()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa, Containers: []corev1.Container{{Name: "c", Image: "example.invalid/c",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(port)}}}}}}
	if _, err := c.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestKubeRegistrySecure is TestKubeRegistry in secure mode, the default:
// a secure control plane watching a real kube-apiserver, agents joined
// with join tokens of their nodes' sites. Pods' service accounts are
// their SPIFFE identities (also of a pod in no Service): a client pod's
// requests, through its node's
// agent by the service's virtual IP and by its captured ClusterIP, reach
// the web pods on two other nodes over mutual TLS with the client's
// identity, and an Istio AuthorizationPolicy from the cluster allows one
// client pod's account and denies the other's (and an unknown caller).
// A node relabelled into another site than its certificate's is reported
// (get cluster, log, metrics) and keeps working in its certificate's
// site; joining again with a token of the new site moves it and
// deny-lists its identity at the old one.
func TestKubeRegistrySecure(t *testing.T) {
	if !inNetns(t) {
		return
	}
	dig := testenv.NeedTool(t, "dig")
	// The Services' ClusterIPs (the apiserver's 10.96.0.0/16) are local
	// addresses of this namespace, so a connection to one is routed and
	// then redirected by kn-a's capture rules, as a pod's is on a node.
	if out, err := exec.Command("ip", "route", "add", "local", "10.96.0.0/16", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip route add: %v: %s", err, out)
	}
	k := kubeapi.Start(t)
	c := k.Client
	ctx := context.Background()
	dyn, err := dynamic.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	installCRDs(t, dyn, istioCRDs...)
	state := t.TempDir()
	cp, ca := startAddrs(t, "control", "-state-dir", state, "-admin-addr", any0, "-sync-addr", any0,
		"-heartbeat-interval", "500ms", "-kube", k.Kubeconfig)
	admin := secureAdmin(t, cp, state, ca["admin"])
	adminCli, server := adminHTTP(t, admin)
	t.Cleanup(func() {
		if t.Failed() {
			for _, what := range []string{"cluster", "nodes", "services", "endpoints", "policies"} {
				out, _ := run(t, append([]string{"get", what}, admin...)...)
				t.Logf("fogmesh get %s:\n%s", what, out)
			}
			t.Logf("control plane:\n%s", cp.out)
		}
	})

	kubeNode(t, c, "kn-a", map[string]string{"fogmesh.io/site": "s1", "topology.kubernetes.io/region": "r1"})
	kubeNode(t, c, "kn-b", map[string]string{"fogmesh.io/site": "s2", "topology.kubernetes.io/region": "r1"})
	kubeNode(t, c, "kn-c", map[string]string{"fogmesh.io/site": "s3", "topology.kubernetes.io/region": "r1"})
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, sa := range []string{"web-sa", "client-ok", "client-bad"} {
		if _, err := c.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	portB, portC := podServerID(t, podAddrs[0], "pod-b"), podServerID(t, podAddrs[1], "pod-c")
	kubePod(t, c, "shop", "web-b", "kn-b", "web-sa", map[string]string{"app": "web"}, portB)
	kubePod(t, c, "shop", "web-c", "kn-c", "web-sa", map[string]string{"app": "web"}, portC)
	// The client pods, of a Service of their own, run on kn-a: their
	// node's agent knows them by their addresses.
	kubePod(t, c, "shop", "client-ok", "kn-a", "client-ok", map[string]string{"app": "client"}, 8080)
	kubePod(t, c, "shop", "client-bad", "kn-a", "client-bad", map[string]string{"app": "client"}, 8080)
	// A pod of client-ok's account in no Service (a batch job, say): its
	// node's agent knows it by the address in the pod's status.
	kubePod(t, c, "shop", "client-lone", "kn-a", "client-ok", map[string]string{"app": "batch"}, 8080)
	lone, err := c.CoreV1().Pods("shop").Get(ctx, "client-lone", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lone.Status.Phase, lone.Status.PodIP, lone.Status.PodIPs = corev1.PodRunning, podAddrs[4], []corev1.PodIP{{IP: podAddrs[4]}}
	if _, err := c.CoreV1().Pods("shop").UpdateStatus(ctx, lone, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	web := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": "web"},
		Ports:    []corev1.ServicePort{{Name: "http", Port: 80, AppProtocol: ptrTo("http"), TargetPort: intstr.FromString("http")}}}}
	web, err = c.CoreV1().Services("shop").Create(ctx, web, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	client := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: "shop"}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"app": "client"},
		Ports:    []corev1.ServicePort{{Name: "http", Port: 8080, AppProtocol: ptrTo("http")}}}}
	if _, err := c.CoreV1().Services("shop").Create(ctx, client, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, sl := range []struct {
		name, svc string
		port      int
		ep        [3]string
	}{
		{"web-b", "web", portB, [3]string{podAddrs[0], "kn-b", "web-b"}},
		{"web-c", "web", portC, [3]string{podAddrs[1], "kn-c", "web-c"}},
		{"client-ok", "client", 8080, [3]string{podAddrs[2], "kn-a", "client-ok"}},
		{"client-bad", "client", 8080, [3]string{podAddrs[3], "kn-a", "client-bad"}},
	} {
		if _, err := c.DiscoveryV1().EndpointSlices("shop").Create(ctx, kubeSlice("shop", sl.name, sl.svc, int32(sl.port), sl.ep), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Istio's AuthorizationPolicy, from the cluster: only client-ok's
	// account may call web.
	ap := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
		"metadata": map[string]any{"name": "web", "namespace": "shop"},
		"spec": map[string]any{"selector": map[string]any{"matchLabels": map[string]any{"app": "web"}}, "action": "ALLOW",
			"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"cluster.local/ns/shop/sa/client-ok"}}}}}}}}}
	apGVR := schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	if _, err := dyn.Resource(apGVR).Namespace("shop").Create(ctx, ap, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Each agent joins with a token of its node's site; kn-a captures
	// ClusterIPs.
	_, aa := kubeJoinedAgent(t, admin, ca["sync"], "kn-a", "s1", 16, t.TempDir(), "-capture", "required", "-capture-addr", any0, "-capture-addr6", "off")
	dirB := t.TempDir()
	pb, _ := kubeJoinedAgent(t, admin, ca["sync"], "kn-b", "s2", 17, dirB)
	kubeJoinedAgent(t, admin, ca["sync"], "kn-c", "s3", 18, t.TempDir())

	var vip string
	testenv.WaitFor(t, 30*time.Second, "web.shop.mesh to resolve at agent kn-a", func() bool {
		vip = digA(t, dig, aa["dns"], "web.shop.mesh")
		return strings.HasPrefix(vip, "127.16.")
	})
	const okID, badID = "spiffe://fogmesh.local/ns/shop/sa/client-ok", "spiffe://fogmesh.local/ns/shop/sa/client-bad"
	okCli, badCli, loneCli := clientFrom(podAddrs[2]), clientFrom(podAddrs[3]), clientFrom(podAddrs[4])
	for _, u := range []struct{ how, url string }{{"virtual IP", "http://" + vip + "/"}, {"captured ClusterIP", "http://" + web.Spec.ClusterIP + "/"}} {
		waitAnswersFrom(t, okCli, u.url, "client-ok by the "+u.how+": both pods, over mTLS, with its identity", "pod-b "+okID, "pod-c "+okID)
		waitAnswersFrom(t, loneCli, u.url, "client-lone (in no Service) by the "+u.how+": its account's identity", "pod-b "+okID, "pod-c "+okID)
		if got := answersFrom(badCli, u.url, 6); len(got) != 1 || got["status 403"] != 6 {
			t.Fatalf("client-bad by the %s: %v, want only 403 (its account %s is not allowed)", u.how, got, badID)
		}
		// The test's own address is no pod's: an unknown caller.
		if got := answersFrom(clientFrom("127.0.0.1"), u.url, 4); len(got) != 1 || got["status 403"] != 4 {
			t.Fatalf("an unknown caller by the %s: %v, want only 403", u.how, got)
		}
	}

	// kn-b relabelled into the client's site, which its certificate does
	// not name: it stays in s2, reported; traffic is not broken.
	nb, err := c.CoreV1().Nodes().Get(ctx, "kn-b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nb.Labels["fogmesh.io/site"] = "s1"
	if _, err := c.CoreV1().Nodes().Update(ctx, nb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 20*time.Second, "the site mismatch in get cluster", func() bool {
		out, _ := run(t, append([]string{"get", "cluster"}, admin...)...)
		return strings.Contains(out, "SITE node kn-b: its labels place it in site s1, its certificate names site s2; it stays in s2")
	})
	if m := metric(t, adminCli, server+"/metrics", "fogmesh_control_cluster_node_site_mismatches_total"); m != 1 {
		t.Fatalf("fogmesh_control_cluster_node_site_mismatches_total = %v, want 1", m)
	}
	if m := metric(t, adminCli, server+"/metrics", "fogmesh_control_cluster_node_site_mismatches"); m != 1 {
		t.Fatalf("fogmesh_control_cluster_node_site_mismatches = %v, want 1", m)
	}
	if !strings.Contains(cp.out.String(), "node's cluster labels name another site than its certificate") {
		t.Fatalf("the mismatch is not logged:\n%s", cp.out)
	}
	url := "http://" + vip + "/"
	waitAnswersFrom(t, okCli, url, "kn-b mislabelled: both pods still, kn-b in its certificate's site", "pod-b "+okID, "pod-c "+okID)

	// kn-b's agent runs again with -site s1 and a token of s1: it joins
	// again (its old certificate names s2), moves, and takes all traffic.
	pb.cmd.Process.Signal(syscall.SIGTERM)
	<-pb.done
	// A join cannot take over a node that is online: wait until the
	// control plane saw the stream close.
	testenv.WaitFor(t, 20*time.Second, "kn-b disconnected at the control plane", func() bool {
		out, _ := run(t, append([]string{"get", "nodes", "-o", "json"}, admin...)...)
		var nodes []struct {
			Meta struct {
				Name string `json:"name"`
			} `json:"metadata"`
			Status struct {
				Connected bool `json:"connected"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(out), &nodes); err != nil {
			t.Fatalf("get nodes -o json: %v\n%s", err, out)
		}
		for _, n := range nodes {
			if n.Meta.Name == "kn-b" {
				return !n.Status.Connected
			}
		}
		return false
	})
	kubeJoinedAgent(t, admin, ca["sync"], "kn-b", "s1", 17, dirB)
	if id := nodeCert(t, dirB).URIs[0].String(); id != "spiffe://fogmesh.local/site/s1/node/kn-b" {
		t.Fatalf("kn-b's certificate after joining again: %s", id)
	}
	waitAnswersFrom(t, okCli, url, "kn-b joined again in s1, the client's site", "pod-b "+okID)
	// Its certificate of s2, valid still, is deny-listed: agents refuse it.
	testenv.WaitFor(t, 20*time.Second, "kn-b's identity at s2 on the deny list", func() bool {
		return slices.Contains(readTrust(t, dirB).Revoked, "spiffe://fogmesh.local/site/s2/node/kn-b")
	})
	waitAnswersFrom(t, okCli, "http://"+web.Spec.ClusterIP+"/", "kn-b in s1, by the ClusterIP", "pod-b "+okID)
	testenv.WaitFor(t, 20*time.Second, "no site mismatch left", func() bool {
		out, _ := run(t, append([]string{"get", "cluster"}, admin...)...)
		return !strings.Contains(out, "SITE ") && metric(t, adminCli, server+"/metrics", "fogmesh_control_cluster_node_site_mismatches") == 0
	})
	if got := answersFrom(badCli, url, 4); len(got) != 1 || got["status 403"] != 4 {
		t.Fatalf("client-bad after the move: %v, want only 403", got)
	}
}
