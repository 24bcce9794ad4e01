package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fogmesh/fogmesh/deploy"
	"github.com/fogmesh/fogmesh/internal/cli"
	"github.com/fogmesh/fogmesh/internal/kube"
	"sigs.k8s.io/yaml"
)

func TestEnvTokenFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(p, []byte("fma1.x.y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FOGMESH_TOKEN", "")
	t.Setenv("FOGMESH_TOKEN_FILE", p)
	if got := envToken(); got != "fma1.x.y" {
		t.Fatalf("envToken() = %q from the file", got)
	}
	t.Setenv("FOGMESH_TOKEN", "fma1.env")
	if got := envToken(); got != "fma1.env" {
		t.Fatalf("envToken() = %q, want $FOGMESH_TOKEN first", got)
	}
}

// TestInstallPrintsManifests: `fogmesh install` prints YAML objects of the
// expected kinds, with its flags applied.
func TestInstallPrintsManifests(t *testing.T) {
	var out bytes.Buffer
	if err := install([]string{"-namespace", "edge", "-registry", "reg.example/fm", "-tag", "v9", "-sites", "default,site-b"}, &out); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	images := map[string]bool{}
	for _, doc := range strings.Split(out.String(), "\n---\n") {
		var obj struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name, Namespace string
			} `json:"metadata"`
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct{ Image string }
					}
				}
			}
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("not YAML: %v\n%s", err, doc)
		}
		kinds[obj.Kind]++
		clusterScoped := obj.Kind == "Namespace" || obj.Kind == "ClusterRole" || obj.Kind == "ClusterRoleBinding" || obj.Kind == "CustomResourceDefinition"
		if clusterScoped != (obj.Metadata.Namespace == "") || !clusterScoped && obj.Metadata.Namespace != "edge" {
			t.Errorf("%s %s in namespace %q, want edge", obj.Kind, obj.Metadata.Name, obj.Metadata.Namespace)
		}
		for _, c := range obj.Spec.Template.Spec.Containers {
			images[c.Image] = true
		}
	}
	want := map[string]int{"Namespace": 1, "ServiceAccount": 2, "ClusterRole": 1, "ClusterRoleBinding": 1, "ConfigMap": 1,
		"PersistentVolumeClaim": 1, "Deployment": 1, "Service": 1, "DaemonSet": 2, "CustomResourceDefinition": 4}
	for k, n := range want {
		if kinds[k] != n {
			t.Errorf("%d objects of kind %s, want %d (all: %v)", kinds[k], k, n, kinds)
		}
	}
	if !images["reg.example/fm/fogmesh:v9"] || !images["reg.example/fm/fogmesh-agent:v9"] {
		t.Errorf("images %v", images)
	}
	for _, bad := range [][]string{{"-namespace", "Bad_NS"}, {"-sites", "a,a"}, {"extra"}, {"-control-addr", "nohostport"}} {
		if err := install(bad, &bytes.Buffer{}); err == nil {
			t.Errorf("install %q: no error", bad)
		}
	}
}

// TestInstallControlConfigDecodes: the control plane's config file in the
// ConfigMap decodes strictly into the control plane's config, in-cluster.
func TestInstallControlConfigDecodes(t *testing.T) {
	objs, err := deploy.Objects(deploy.Options{Namespace: "edge"})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, o := range objs {
		if o["kind"] != "ConfigMap" {
			continue
		}
		data, _ := o["data"].(map[string]any)
		s, _ := data["control.yaml"].(string)
		var fc controlFile
		if err := cli.DecodeConfig([]byte(s), &fc); err != nil {
			t.Fatalf("control.yaml: %v\n%s", err, s)
		}
		if fc.Kube != kube.InCluster || fc.StateDir != "/var/lib/fogmesh/control" || !slices.Contains(fc.ServerNames, "fogmesh-control.edge.svc") {
			t.Errorf("control.yaml: %+v", fc)
		}
		n++
	}
	if n != 1 {
		t.Fatalf("%d ConfigMaps", n)
	}
}
