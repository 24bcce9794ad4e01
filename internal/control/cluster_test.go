package control

import (
	"strings"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

func clusterObjs() []api.Object {
	lbl := func() map[string]string { return map[string]string{api.LabelSource: api.SourceKubernetes} }
	return []api.Object{
		&api.Service{APIVersion: api.APIVersion, Kind: api.KindService, Meta: api.Meta{Name: "web", Namespace: "shop", Labels: lbl()}, Spec: api.ServiceSpec{Ports: []api.ServicePort{{Name: "http", Port: 80, Protocol: "http"}}}},
		&api.Endpoint{APIVersion: api.APIVersion, Kind: api.KindEndpoint, Meta: api.Meta{Name: "web-1", Namespace: "shop", Labels: lbl()}, Spec: api.EndpointSpec{Service: "web", Node: "n1", Address: "10.0.0.1",
			Ports: []api.EndpointPort{{Name: "http", Port: 8080}}}, Status: api.EndpointStatus{Healthy: true}},
	}
}

// TestSyncClusterSourceRules: a cluster's objects are written once, kept
// when the agent of their node syncs its own workloads, deleted when the
// cluster drops them; an applied object of the same key is a conflict
// either way; a node's cluster labels place it whatever its agent says.
func TestSyncClusterSourceRules(t *testing.T) {
	s := startServer(t, t.TempDir())
	st := ClusterState{Source: api.SourceKubernetes, Objects: clusterObjs(), Nodes: map[string]NodeTopology{"n1": {Site: "k-site", Region: "k-region"}}}
	if c, err := s.SyncCluster(st); err != nil || len(c) != 0 {
		t.Fatalf("sync: %v %v", c, err)
	}
	rev, _ := s.st.Rev()
	st.Objects = clusterObjs()
	if _, err := s.SyncCluster(st); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.st.Rev(); again != rev {
		t.Fatalf("an unchanged cluster state wrote to the store (revision %d → %d)", rev, again)
	}

	// The agent of n1 registers another place and no workloads: the
	// labels place it, and the cluster's pod on n1 stays.
	dialAgent(t, s, "n1")
	testenv.WaitFor(t, 5*time.Second, "n1 placed by its labels", func() bool {
		nodes, _, _ := s.reg.list(api.KindNode)
		return len(nodes) == 1 && nodes[0].(*api.Node).Spec.Site == "k-site" && nodes[0].(*api.Node).Spec.Region == "k-region"
	})
	if err := s.reg.syncLocalEndpoints("n1", nil); err != nil {
		t.Fatal(err)
	}
	if eps, _, _ := s.reg.list(api.KindEndpoint); len(eps) != 1 {
		t.Fatalf("the agent's sync deleted the cluster's endpoint on its node: %v", eps)
	}

	// Applying over the cluster's object is refused, saying why.
	code, body := applyDoc(t, s, "apiVersion: fogmesh.io/v1alpha1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports: [{name: http, port: 81}]\n")
	if code < 400 || !strings.Contains(body, "kept by another source") {
		t.Fatalf("apply over a cluster object: %d %s", code, body)
	}
	// An applied object first: the cluster's of that key is the conflict.
	if code, body := applyDoc(t, s, helloSvc); code != 200 {
		t.Fatal(body)
	}
	hello := &api.Service{APIVersion: api.APIVersion, Kind: api.KindService, Meta: api.Meta{Name: "hello", Namespace: "demo", Labels: map[string]string{api.LabelSource: api.SourceKubernetes}},
		Spec: api.ServiceSpec{Ports: []api.ServicePort{{Name: "grpc", Port: 9000}}}}
	st.Objects = append(clusterObjs(), hello)
	c, err := s.SyncCluster(st)
	if err != nil || len(c) != 1 || !strings.Contains(c[0], "Service/demo/hello: applied with fogmesh apply and also in the cluster") {
		t.Fatalf("conflicts %v, %v", c, err)
	}
	if got := s.ClusterStatus().Conflicts; len(got) != 1 {
		t.Fatalf("status conflicts %v", got)
	}
	svcs, _, _ := s.reg.list(api.KindService)
	for _, o := range svcs {
		if o.GetMeta().Name == "hello" && o.(*api.Service).Spec.Ports[0].Port != 8080 {
			t.Fatalf("the applied service was replaced: %+v", o)
		}
	}

	// The cluster drops everything: its objects go, the applied stays.
	st.Objects = nil
	if _, err := s.SyncCluster(st); err != nil {
		t.Fatal(err)
	}
	all, _, _ := s.reg.list("")
	var keys []string
	for _, o := range all {
		if o.GetKind() != api.KindNode {
			keys = append(keys, api.ObjectKey(o))
		}
	}
	if strings.Join(keys, ",") != "Service/demo/hello" {
		t.Fatalf("left after the cluster dropped its objects: %v", keys)
	}
}
