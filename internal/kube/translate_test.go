package kube

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/fogmesh/fogmesh/internal/api"
)

func ptr[T any](v T) *T { return &v }

func TestTopology(t *testing.T) {
	var m Mapper
	for _, tc := range []struct {
		name               string
		labels             map[string]string
		site, region, zone string
		warn               string
	}{
		{"fogmesh labels", map[string]string{LabelSite: "shop-1", LabelRegion: "eu", LabelZone: "eu-a"}, "shop-1", "eu", "eu-a", ""},
		{"openyurt pool", map[string]string{LabelOpenYurtPool: "pool-a"}, "pool-a", "", "", ""},
		{"kubeedge group", map[string]string{LabelKubeEdgeNodeGroup: "hangzhou"}, "hangzhou", "", "", ""},
		{"contradictory site labels", map[string]string{LabelSite: "a", LabelOpenYurtPool: "b"}, "a", "", "", "name different sites"},
		{"not a name", map[string]string{LabelSite: "Shop_1", LabelRegion: "eu"}, "", "eu", "", "not a DNS label"},
		{"none", nil, "", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: tc.labels}}
			got, warns := m.Topology(n)
			if got.Site != tc.site || got.Region != tc.region || got.Zone != tc.zone {
				t.Fatalf("got %+v, want %s/%s/%s", got, tc.site, tc.region, tc.zone)
			}
			if w := strings.Join(warns, "\n"); (tc.warn == "") != (w == "") || !strings.Contains(w, tc.warn) {
				t.Fatalf("warnings %q, want one containing %q", w, tc.warn)
			}
		})
	}
	custom := Mapper{SiteLabels: []string{"example.com/site"}}
	got, _ := custom.Topology(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{"example.com/site": "x", LabelSite: "y"}}})
	if got.Site != "x" {
		t.Fatalf("custom site label: got %q", got.Site)
	}
}

func TestProtocol(t *testing.T) {
	for _, tc := range []struct {
		p    corev1.ServicePort
		want string
		warn bool
	}{
		{corev1.ServicePort{Name: "web", Protocol: corev1.ProtocolTCP, AppProtocol: ptr("http")}, "http", false},
		{corev1.ServicePort{Name: "web", AppProtocol: ptr("kubernetes.io/h2c")}, "http2", false},
		{corev1.ServicePort{Name: "x", AppProtocol: ptr("grpc")}, "grpc", false},
		{corev1.ServicePort{Name: "x", AppProtocol: ptr("example.com/custom")}, "tcp", true},
		{corev1.ServicePort{Name: "grpc-api"}, "grpc", false},
		{corev1.ServicePort{Name: "http"}, "http", false},
		{corev1.ServicePort{Name: "mqtt-broker"}, "mqtt", false},
		{corev1.ServicePort{Name: "httpx"}, "tcp", false},
		{corev1.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP}, "udp", false},
	} {
		got, w := Protocol(tc.p)
		if got != tc.want || (w != "") != tc.warn {
			t.Errorf("%+v: got %q warning %q, want %q (warning %v)", tc.p, got, w, tc.want, tc.warn)
		}
	}
}

func svcWithPorts(n int) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "many", Namespace: "ns"}}
	for i := range n {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: fmt.Sprintf("p%d", i), Port: int32(1000 + i), Protocol: corev1.ProtocolTCP})
	}
	return s
}

func TestServiceBadInput(t *testing.T) {
	var m Mapper
	for _, tc := range []struct {
		name string
		svc  *corev1.Service
		err  string
	}{
		{"thousands of ports", svcWithPorts(3000), "3000 ports, more than the limit of 256"},
		{"external name", &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "ns"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}}, "ExternalName"},
		{"no ports", &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "ns"}}, "no ports"},
		{"sctp", &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "ns"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "s", Port: 9, Protocol: corev1.ProtocolSCTP}}}}, "SCTP"},
		{"same port twice", &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "x", Namespace: "ns"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "a", Port: 80}, {Name: "a", Port: 81}}}}, "duplicate port name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := m.Service(tc.svc)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want an error containing %q", err, tc.err)
			}
		})
	}
	if s, _, err := m.Service(svcWithPorts(256)); err != nil || len(s.Spec.Ports) != 256 {
		t.Fatalf("256 ports: %v", err)
	}
}

func TestServiceAndEndpoints(t *testing.T) {
	var m Mapper
	k := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, AppProtocol: ptr("http"), TargetPort: intstr.FromString("web")},
			{Name: "metrics", Port: 9090, Protocol: corev1.ProtocolTCP}}}}
	svc, warns, err := m.Service(k)
	if err != nil || len(warns) != 0 {
		t.Fatal(err, warns)
	}
	if svc.Meta.Labels[api.LabelHeadless] != "true" || svc.Meta.Labels[api.LabelSource] != api.SourceKubernetes {
		t.Fatalf("labels %v", svc.Meta.Labels)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "shop", Labels: map[string]string{"version": "v1"}},
		Spec: corev1.PodSpec{ServiceAccountName: "web-sa", Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 8080}}}}}}
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "web-abc", Namespace: "shop"}, AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{Name: ptr("http")}, {Name: ptr("metrics"), Port: ptr(int32(9090))}, {Name: ptr("gone"), Port: ptr(int32(1))}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.1"}, NodeName: ptr("n1"), Hostname: ptr("web-1"), TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "web-1"}},
			{Addresses: []string{"10.0.0.5"}, NodeName: ptr("n1"), Hostname: ptr("Bad_Host")},
			{Addresses: []string{"10.0.0.2"}, NodeName: ptr("ghost")},
			{Addresses: []string{"10.0.0.3"}},
			{Addresses: []string{"10.0.0.4"}, NodeName: ptr("n1"), Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}},
			{Addresses: []string{"not-an-ip"}, NodeName: ptr("n1")},
		}}
	eps, warns := Endpoints(k, svc, []*discoveryv1.EndpointSlice{sl}, Cluster{Nodes: map[string]bool{"n1": true}, Pods: map[string]*corev1.Pod{"shop/web-1": pod}})
	w := strings.Join(warns, "\n")
	for _, want := range []string{`names node "ghost", which the cluster does not have`, "names no node", `port "gone" is not a port`, `"not-an-ip"`, "10.0.0.4: port http resolves to no port number", `endpoint 10.0.0.5: hostname "Bad_Host" is not a DNS label; ignored`} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings lack %q:\n%s", want, w)
		}
	}
	byAddr := map[string]*api.Endpoint{}
	for _, e := range eps {
		byAddr[e.Spec.Address] = e
	}
	e1 := byAddr["10.0.0.1"]
	if e1 == nil || e1.Spec.Node != "n1" || e1.Spec.ServiceAccount != "web-sa" || !e1.Status.Healthy || e1.Meta.Labels["version"] != "v1" {
		t.Fatalf("10.0.0.1: %+v", e1)
	}
	if e1.Spec.Hostname != "web-1" {
		t.Fatalf("10.0.0.1: hostname %q, want web-1 (the slice endpoint's)", e1.Spec.Hostname)
	}
	if e5 := byAddr["10.0.0.5"]; e5 == nil || e5.Spec.Hostname != "" {
		t.Fatalf("10.0.0.5: want it kept without its invalid hostname: %+v", e5)
	}
	if p, _ := e1.Port("http"); p != 8080 {
		t.Fatalf("named target port: http → %d, want 8080", p)
	}
	if p, _ := e1.Port("metrics"); p != 9090 {
		t.Fatalf("metrics → %d", p)
	}
	e4 := byAddr["10.0.0.4"]
	if e4 == nil || e4.Status.Healthy {
		t.Fatalf("a not-ready endpoint is kept, unhealthy: %+v", e4)
	}
	if len(eps) != 3 {
		t.Fatalf("%d endpoints, want 3", len(eps))
	}
	if svc.Spec.Identity == nil || strings.Join(svc.Spec.Identity.ServiceAccounts, ",") != "default,web-sa" {
		t.Fatalf("identity %+v", svc.Spec.Identity)
	}
	if EndpointName("web", "10.0.0.1") != e1.Meta.Name || EndpointName("web", "10.0.0.1") == EndpointName("web", "10.0.0.2") {
		t.Fatal("endpoint names are not stable and distinct")
	}
	if long := EndpointName(strings.Repeat("a", 63), "::1"); len(long) > 63 {
		t.Fatalf("name %q is longer than a DNS label", long)
	}
}

func TestCustomIstioAndFogmesh(t *testing.T) {
	var m Mapper
	vs := `{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"web","namespace":"shop","uid":"1234","resourceVersion":"99","managedFields":[{}],"annotations":{"a":"b"}},
	"spec":{"hosts":["web"],"http":[{"route":[{"destination":{"host":"web","subset":"v1"},"weight":90},{"destination":{"host":"web","subset":"v2"},"weight":10}]}]},"status":{"x":1}}`
	objs, warns, err := m.Custom([]byte(vs))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range warns {
		if strings.Contains(w, "uid") || strings.Contains(w, "resourceVersion") || strings.Contains(w, "status") {
			t.Fatalf("the apiserver's fields are warned about: %v", warns)
		}
	}
	if len(objs) == 0 || objs[0].GetKind() != api.KindRoute || objs[0].GetMeta().Labels[api.LabelSource] != api.SourceKubernetes {
		t.Fatalf("objects %+v", objs)
	}
	fr := `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Route","metadata":{"name":"r","namespace":"shop","uid":"x","annotations":{"k":"v"}},"spec":{"service":"web","rules":[{"backends":[{"subset":"a","weight":1}]}]}}`
	objs, _, err = m.Custom([]byte(fr))
	if err != nil || len(objs) != 1 || api.ObjectKey(objs[0]) != "Route/shop/r" {
		t.Fatalf("fogmesh Route: %v %v", objs, err)
	}
	for _, bad := range []string{`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"s"},"spec":{"ports":[{"name":"a","port":1}]}}`,
		`{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"x"}}`, `not json`} {
		if _, _, err := m.Custom([]byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// FuzzCustom: no custom resource, however malformed, crashes the mapping.
func FuzzCustom(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"web","namespace":"shop"},"spec":{"hosts":["web"],"http":[{"route":[{"destination":{"host":"web"}}]}]}}`))
	f.Add([]byte(`{"apiVersion":"networking.istio.io/v1","kind":"DestinationRule","metadata":{"name":"web"},"spec":{"host":"web","subsets":[{"name":"v1","labels":{"v":"1"}}]}}`))
	f.Add([]byte(`{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"a","namespace":"shop"},"spec":{"action":"DENY","rules":[{}]}}`))
	f.Add([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"Session","metadata":{"name":"s"},"spec":{}}`))
	f.Add([]byte(`{"metadata":null,"spec":[]}`))
	var m Mapper
	f.Fuzz(func(t *testing.T, b []byte) {
		objs, _, err := m.Custom(b)
		if err == nil {
			for _, o := range objs {
				if o.GetMeta().Labels[api.LabelSource] != api.SourceKubernetes {
					t.Fatalf("%s lacks the source label", api.ObjectKey(o))
				}
			}
		}
	})
}

// TestServiceClusterIPs: a Service's ClusterIPs reach fogmesh's service
// (agents that capture redirect them); a headless one has none.
func TestServiceClusterIPs(t *testing.T) {
	var m Mapper
	for _, tc := range []struct {
		name string
		spec corev1.ServiceSpec
		want []string
	}{
		{"dual stack", corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10", "fd00::10"}}, []string{"10.96.0.10", "fd00::10"}},
		{"clusterIP only", corev1.ServiceSpec{ClusterIP: "10.96.0.11"}, []string{"10.96.0.11"}},
		{"headless", corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, ClusterIPs: []string{corev1.ClusterIPNone}}, nil},
		{"none allocated", corev1.ServiceSpec{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.spec.Ports = []corev1.ServicePort{{Name: "http", Port: 80}}
			s, _, err := m.Service(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"}, Spec: tc.spec})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, a := range s.ClusterAddrs() {
				got = append(got, a.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("ClusterAddrs %v, want %v", got, tc.want)
			}
		})
	}
	bad := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.1", ClusterIPs: []string{"10.96.0.2"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	if _, _, err := m.Service(bad); err == nil || !strings.Contains(err.Error(), "clusterIP") {
		t.Fatalf("contradictory clusterIP and clusterIPs: %v", err)
	}
}

// TestCustomStaysInItsNamespace: a custom resource written by a user of
// namespace tenant configures tenant only. An Istio VirtualService or
// DestinationRule naming a host of another namespace, or a fogmesh
// AuthorizationPolicy claiming meshWide outside the root namespace, would
// otherwise route, or deny, another namespace's service for every client.
func TestCustomStaysInItsNamespace(t *testing.T) {
	var m Mapper
	for name, doc := range map[string]string{
		"VirtualService for another namespace": `{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"steal","namespace":"tenant"},
		"spec":{"hosts":["pay.bank.svc.cluster.local"],"http":[{"match":[{"uri":{"exact":"/none"}}],"route":[{"destination":{"host":"pay.bank.svc.cluster.local"}}]}]}}`,
		"DestinationRule for another namespace": `{"apiVersion":"networking.istio.io/v1","kind":"DestinationRule","metadata":{"name":"dr","namespace":"tenant"},
		"spec":{"host":"pay.bank.svc.cluster.local","subsets":[{"name":"none","labels":{"no":"such"}}]}}`,
		"meshWide fogmesh AuthorizationPolicy": `{"apiVersion":"fogmesh.io/v1alpha1","kind":"AuthorizationPolicy","metadata":{"name":"deny-all","namespace":"tenant"},
		"spec":{"meshWide":true,"action":"ALLOW"}}`,
	} {
		objs, _, err := m.Custom([]byte(doc))
		if err == nil {
			var keys []string
			for _, o := range objs {
				keys = append(keys, api.ObjectKey(o))
			}
			t.Errorf("%s: accepted as %v", name, keys)
			continue
		}
		if !strings.Contains(err.Error(), "namespace") {
			t.Errorf("%s: the refusal does not say why: %v", name, err)
		}
	}
	// The same kinds within their own namespace, and a root namespace
	// policy (mesh-wide, as in Istio), still map.
	for _, doc := range []string{
		`{"apiVersion":"networking.istio.io/v1","kind":"VirtualService","metadata":{"name":"web","namespace":"tenant"},
		"spec":{"hosts":["web.tenant.svc.cluster.local"],"http":[{"route":[{"destination":{"host":"web"}}]}]}}`,
		`{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"name":"all","namespace":"istio-system"},"spec":{"action":"DENY","rules":[{"to":[{"operation":{"paths":["/admin"]}}]}]}}`,
		`{"apiVersion":"fogmesh.io/v1alpha1","kind":"AuthorizationPolicy","metadata":{"name":"own","namespace":"tenant"},"spec":{"action":"ALLOW","rules":[{}]}}`,
	} {
		if _, _, err := m.Custom([]byte(doc)); err != nil {
			t.Errorf("refused: %v\n%s", err, doc)
		}
	}
}

// TestEndpointsStayInTheirNamespace: a hand-written EndpointSlice (a
// Service without selector) of namespace tenant that names a pod of
// namespace bank, by targetRef or by its address, made bank's pod an
// endpoint of tenant's Service: tenant's clients reached it through a
// service whose authorization policies tenant writes, not bank's, and the
// endpoint took the pod's labels and account.
func TestEndpointsStayInTheirNamespace(t *testing.T) {
	var m Mapper
	k := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "proxy", Namespace: "tenant"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
	svc, _, err := m.Service(k)
	if err != nil {
		t.Fatal(err)
	}
	bank := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "pay-1", Namespace: "bank", Labels: map[string]string{"app": "pay"}},
		Spec:   corev1.PodSpec{NodeName: "n1", ServiceAccountName: "pay"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.7", PodIPs: []corev1.PodIP{{IP: "10.0.0.7"}, {IP: "fd00::7"}}}}
	own := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "own-1", Namespace: "tenant"},
		Spec:   corev1.PodSpec{NodeName: "n1", ServiceAccountName: "own"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.8"}}
	hostNet := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: "kube-system"},
		Spec:   corev1.PodSpec{NodeName: "n1", HostNetwork: true},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "192.168.1.1"}}
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "proxy-manual", Namespace: "tenant"}, AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.7"}, NodeName: ptr("n1")},
			{Addresses: []string{"::ffff:10.0.0.7"}, NodeName: ptr("n1")},
			{Addresses: []string{"10.0.0.9"}, NodeName: ptr("n1"), TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "bank", Name: "pay-1"}},
			{Addresses: []string{"10.0.0.8"}, NodeName: ptr("n1"), TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "own-1"}},
			{Addresses: []string{"192.168.1.1"}, NodeName: ptr("n1")}, // the node's address: not bank's pod
			{Addresses: []string{"10.0.0.50"}, NodeName: ptr("n1")},   // outside any pod: a selectorless Service's own choice
		}}
	c := Cluster{Nodes: map[string]bool{"n1": true}, Pods: map[string]*corev1.Pod{"bank/pay-1": bank, "tenant/own-1": own, "kube-system/agent": hostNet}}
	eps, warns := Endpoints(k, svc, []*discoveryv1.EndpointSlice{sl}, c)
	var got []string
	for _, e := range eps {
		got = append(got, e.Spec.Address)
		if e.Spec.ServiceAccount == "pay" || e.Meta.Labels["app"] == "pay" {
			t.Errorf("endpoint %s took bank's pod's account or labels: %+v", e.Spec.Address, e)
		}
	}
	slices.Sort(got)
	if strings.Join(got, ",") != "10.0.0.50,10.0.0.8,192.168.1.1" {
		t.Errorf("endpoints %v, want 10.0.0.50, 10.0.0.8 and 192.168.1.1\nwarnings: %v", got, warns)
	}
	if w := strings.Join(warns, "\n"); strings.Count(w, "bank/pay-1") != 3 {
		t.Errorf("warnings do not name bank's pod thrice:\n%s", w)
	}
	if strings.Join(svc.Spec.Identity.ServiceAccounts, ",") != "default,own" {
		t.Errorf("identity %v", svc.Spec.Identity.ServiceAccounts)
	}
}
