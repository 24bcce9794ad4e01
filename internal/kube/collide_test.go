package kube

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/control"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// TestCustomCollisionsStable: two custom resources whose translations
// share a key (VirtualService a with hosts x and x.shop gives Route a-x,
// as does VirtualService a-x) were handed to the control plane in the
// informer store's order, a map's, so the one used changed from sync to
// sync: x's route flapped, and every flap was a new configuration for
// every agent. The first by namespace/name is used, and the warning names
// both resources.
func TestCustomCollisionsStable(t *testing.T) {
	inf := func(o runtime.Object) cache.SharedIndexInformer {
		return cache.NewSharedIndexInformer(&cache.ListWatch{}, o, 0, cache.Indexers{})
	}
	vsGVR := schema.GroupVersionResource{Group: "networking.istio.io", Version: "v1", Resource: "virtualservices"}
	s := &Source{cfg: Config{Metrics: metrics.NewSet()}, svc: inf(&corev1.Service{}), slice: inf(&discoveryv1.EndpointSlice{}),
		node: inf(&corev1.Node{}), pod: inf(&corev1.Pod{}), good: map[string]goodObject{}, goodSvc: map[string]*corev1.Service{},
		custom: map[schema.GroupVersionResource]cache.SharedIndexInformer{vsGVR: inf(&unstructured.Unstructured{})}}
	vs := func(name, prefix string, hosts ...any) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
			"metadata": map[string]any{"name": name, "namespace": "shop", "resourceVersion": "1"},
			"spec": map[string]any{"hosts": hosts, "http": []any{map[string]any{
				"match": []any{map[string]any{"uri": map[string]any{"prefix": prefix}}},
				"route": []any{map[string]any{"destination": map[string]any{"host": "x"}}}}}}}}
	}
	for _, o := range []*unstructured.Unstructured{vs("a", "/from-a", "x", "x.shop.svc.cluster.local"), vs("a-x", "/from-a-x", "x")} {
		if err := s.custom[vsGVR].GetStore().Add(o); err != nil {
			t.Fatal(err)
		}
	}
	var first string
	for i := range 30 {
		st, warns := s.mapAll()
		var used string
		for _, o := range st.Objects {
			if api.ObjectKey(o) == "Route/shop/a-x" {
				b, _ := json.Marshal(o)
				used = string(b)
				break
			}
		}
		if !strings.Contains(used, "/from-a") {
			t.Fatalf("sync %d: Route shop/a-x is %s\n%v", i, used, warns)
		}
		if i == 0 {
			first = used
			if w := strings.Join(warns, "\n"); !strings.Contains(w, "VirtualService shop/a") || !strings.Contains(w, "VirtualService shop/a-x") || !strings.Contains(w, "Route shop/a-x") {
				t.Errorf("the collision is not reported with both resources:\n%s", w)
			}
		} else if used != first {
			t.Fatalf("sync %d uses another Route shop/a-x than sync 0:\n%s\n%s", i, used, first)
		}
	}
	if !strings.Contains(first, `"/from-a"`) {
		t.Errorf("Route shop/a-x is not VirtualService shop/a's (first by name): %s", first)
	}
}

// sinkStub takes syncs.
type sinkStub struct{ syncs int }

func (s *sinkStub) SyncCluster(control.ClusterState) ([]string, error) { s.syncs++; return nil, nil }
func (*sinkStub) SetClusterLink(string)                                {}

// TestBadInputLoggedOnce: every sync (one follows any change in the
// cluster, pod churn included) logged every bad object again, so one bad
// object a namespace user left behind wrote a log line per sync for good,
// and many flooded the log. A warning is logged when it first appears
// (and again if it comes back); it stays in the status and the gauge.
func TestBadInputLoggedOnce(t *testing.T) {
	inf := func(o runtime.Object) cache.SharedIndexInformer {
		return cache.NewSharedIndexInformer(&cache.ListWatch{}, o, 0, cache.Indexers{})
	}
	var logs testenv.Buffer
	sink := &sinkStub{}
	ms := metrics.NewSet()
	s := &Source{cfg: Config{Metrics: ms}, log: slog.New(slog.NewTextHandler(&logs, nil)), sink: sink, mSync: ms.NewCounter("syncs"),
		svc: inf(&corev1.Service{}), slice: inf(&discoveryv1.EndpointSlice{}), node: inf(&corev1.Node{}), pod: inf(&corev1.Pod{}),
		good: map[string]goodObject{}, goodSvc: map[string]*corev1.Service{}, custom: map[schema.GroupVersionResource]cache.SharedIndexInformer{}}
	bad := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ext", Namespace: "tenant"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName}}
	s.svc.GetStore().Add(bad)
	for range 5 {
		if err := s.syncOnce(); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(logs.String(), "tenant/ext"); n != 1 {
		t.Fatalf("the bad Service was logged %d times in 5 syncs:\n%s", n, logs.String())
	}
	s.svc.GetStore().Delete(bad)
	s.syncOnce()
	s.svc.GetStore().Add(bad)
	s.syncOnce()
	if n := strings.Count(logs.String(), "tenant/ext"); n != 2 {
		t.Fatalf("the bad Service, gone and back, was logged %d times, want 2:\n%s", n, logs.String())
	}
}
