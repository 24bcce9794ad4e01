package deploy_test

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/deploy"
	"github.com/fogmesh/fogmesh/internal/testenv/kubeapi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

func keys(objs []deploy.Object) []string {
	var out []string
	for _, o := range objs {
		md, _ := o["metadata"].(map[string]any)
		out = append(out, fmt.Sprintf("%s/%s/%s", o["kind"], md["namespace"], md["name"]))
	}
	sort.Strings(out)
	return out
}

// TestKustomizeBaseIsTheInstallOutput: `kubectl kustomize deploy/` and
// `fogmesh install` with no flags give the same objects, so the base and
// the CLI cannot drift apart (a file missing from kustomization.yaml or
// from deploy.Files fails here).
func TestKustomizeBaseIsTheInstallOutput(t *testing.T) {
	out, err := exec.Command("kubectl", "kustomize", ".").Output()
	if err != nil {
		t.Fatalf("kubectl kustomize deploy/: %v", err)
	}
	var kobjs []deploy.Object
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var o deploy.Object
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatal(err)
		}
		kobjs = append(kobjs, o)
	}
	objs, err := deploy.Objects(deploy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if a, b := strings.Join(keys(kobjs), "\n"), strings.Join(keys(objs), "\n"); a != b {
		t.Fatalf("kustomize base:\n%s\n\nfogmesh install:\n%s", a, b)
	}
}

// TestRenderOptions: the options reach the objects, and bad ones are refused.
func TestRenderOptions(t *testing.T) {
	objs, err := deploy.Objects(deploy.Options{Namespace: "mesh", Sites: []string{"default", "north"}, NoCapture: true,
		ControlAddr: "10.0.0.1:7071", JoinSecret: "tokens"})
	if err != nil {
		t.Fatal(err)
	}
	var ds, cm []deploy.Object
	for _, o := range objs {
		switch o["kind"] {
		case "DaemonSet":
			ds = append(ds, o)
		case "ConfigMap":
			cm = append(cm, o)
		}
	}
	if len(ds) != 2 || len(cm) != 1 {
		t.Fatalf("%d DaemonSets, %d ConfigMaps", len(ds), len(cm))
	}
	b, _ := yaml.Marshal(ds[1])
	s := string(b)
	for _, want := range []string{"name: fogmesh-agent-north", "fogmesh.io/site: north", "-site=north", "-control=10.0.0.1:7071",
		"-capture=off", "runAsUser: 65532", "secretName: tokens"} {
		if !strings.Contains(s, want) {
			t.Errorf("north DaemonSet lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "NET_ADMIN") || strings.Contains(s, "site: default") {
		t.Errorf("north DaemonSet keeps NET_ADMIN or the default site:\n%s", s)
	}
	b, _ = yaml.Marshal(cm[0])
	if !strings.Contains(string(b), "fogmesh-control.mesh.svc.cluster.local") || strings.Contains(string(b), "fogmesh-control.fogmesh") {
		t.Errorf("control server names not in namespace mesh:\n%s", b)
	}
	for _, bad := range []deploy.Options{{Namespace: "UPPER"}, {Sites: []string{"a b"}}, {AgentImage: "x y"}, {JoinSecret: "-x"}} {
		if _, err := deploy.Objects(bad); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}

// TestDryRunServer: a real kube-apiserver accepts `fogmesh install`'s
// output with kubectl apply --dry-run=server (strict field validation:
// a misspelt field fails). The namespace is created for real first, as
// the server dry run of namespaced objects needs it.
func TestDryRunServer(t *testing.T) {
	start := time.Now()
	s := kubeapi.Start(t)
	t.Logf("kube-apiserver ready in %v", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := s.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "mesh"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := deploy.Render(&buf, deploy.Options{Namespace: "mesh", Sites: []string{"default", "north"}}); err != nil {
		t.Fatal(err)
	}
	n := strings.Count(buf.String(), "\n---\n") + 1
	cmd := exec.CommandContext(ctx, "kubectl", "--kubeconfig", s.Kubeconfig, "apply", "--dry-run=server", "--validate=strict", "-f", "-")
	cmd.Stdin = &buf
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server: %v\n%s", err, out)
	}
	if got := strings.Count(string(out), "(server dry run)"); got != n {
		t.Fatalf("%d of %d objects accepted:\n%s", got, n, out)
	}
	t.Logf("%d objects accepted:\n%s", n, out)
}
