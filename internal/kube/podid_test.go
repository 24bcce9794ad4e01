package kube

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/fogmesh/fogmesh/internal/api"
)

// PodIdentities: a node's pods with an address of their own and not
// finished, by address, with their accounts ("default" if none); a
// hostNetwork pod (the node's address), a finished one (its address may
// be reused), one on an unknown node and one whose account is no DNS label
// are left out, the last with a warning.
func TestPodIdentities(t *testing.T) {
	pod := func(name, node, sa, ip string, mod func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop"},
			Spec:   corev1.PodSpec{NodeName: node, ServiceAccountName: sa},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip}}
		if mod != nil {
			mod(p)
		}
		return p
	}
	pods := map[string]*corev1.Pod{
		"shop/b":    pod("b", "n1", "", "10.0.0.2", nil),
		"shop/a":    pod("a", "n1", "client", "10.0.0.1", func(p *corev1.Pod) { p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}} }),
		"shop/host": pod("host", "n1", "agent", "192.0.2.1", func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
		"shop/done": pod("done", "n1", "job", "10.0.0.3", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }),
		"shop/away": pod("away", "n9", "x", "10.0.0.4", nil),
		"shop/dots": pod("dots", "n1", "sa.with.dots", "10.0.0.5", nil),
		"shop/noip": pod("noip", "n1", "x", "", nil),
	}
	got, warns := PodIdentities(pods, map[string]bool{"n1": true})
	want := []api.PodIdentity{
		{Address: "10.0.0.1", Namespace: "shop", ServiceAccount: "client"},
		{Address: "10.0.0.2", Namespace: "shop", ServiceAccount: "default"},
		{Address: "fd00::1", Namespace: "shop", ServiceAccount: "client"},
	}
	if len(got) != 1 || len(got["n1"]) != len(want) {
		t.Fatalf("got %v, want n1: %v", got, want)
	}
	for i := range want {
		if got["n1"][i] != want[i] {
			t.Errorf("pod %d: %+v, want %+v", i, got["n1"][i], want[i])
		}
	}
	if len(warns) != 1 || !strings.Contains(warns[0], "shop/dots") {
		t.Errorf("warnings %v, want one for shop/dots", warns)
	}
}
