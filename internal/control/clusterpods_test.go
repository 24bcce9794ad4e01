package control

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/testenv"
)

// A node's pods (api.NodeSpec.Pods) come from the cluster only: an agent
// that registers pods of its own (to vouch for their accounts) has them
// dropped, whether its node is in the cluster or not; a cluster sync sets
// and changes them, and a node the cluster no longer has keeps none.
func TestClusterPodsOnNodes(t *testing.T) {
	s := startServer(t, t.TempDir())
	client := api.PodIdentity{Address: "10.0.0.5", Namespace: "shop", ServiceAccount: "client"}
	st := ClusterState{Source: api.SourceKubernetes, Nodes: map[string]NodeTopology{"n1": {Site: "k-site", Pods: []api.PodIdentity{client}}}}
	if _, err := s.SyncCluster(st); err != nil {
		t.Fatal(err)
	}
	forged := []api.PodIdentity{{Address: "10.0.0.9", Namespace: "bank", ServiceAccount: "teller"}}
	register := func(node string) {
		dialAgentAs(t, s, &api.Node{Meta: api.Meta{Name: node}, Spec: api.NodeSpec{Site: "shop-1", Region: "east", MeshAddress: "127.0.0.1:7072", Pods: forged}})
	}
	pods := func(node string) []api.PodIdentity {
		kv, ok, _ := s.st.Get(api.KindNode + "/" + node)
		if !ok {
			return nil
		}
		var n api.Node
		if err := json.Unmarshal(kv.Value, &n); err != nil {
			t.Fatal(err)
		}
		return n.Spec.Pods
	}
	register("n1")
	register("n2")
	testenv.WaitFor(t, 5*time.Second, "n1 and n2 registered", func() bool {
		nodes, _, _ := s.reg.list(api.KindNode)
		return len(nodes) == 2
	})
	if got := pods("n1"); !slices.Equal(got, []api.PodIdentity{client}) {
		t.Fatalf("n1's pods %v, want the cluster's %v only", got, client)
	}
	if got := pods("n2"); len(got) != 0 {
		t.Fatalf("n2 (not in the cluster) kept the pods its agent registered: %v", got)
	}
	// The cluster's pods change, then the node leaves the cluster.
	other := api.PodIdentity{Address: "10.0.0.6", Namespace: "shop", ServiceAccount: "batch"}
	st.Nodes = map[string]NodeTopology{"n1": {Site: "k-site", Pods: []api.PodIdentity{client, other}}}
	if _, err := s.SyncCluster(st); err != nil {
		t.Fatal(err)
	}
	if got := pods("n1"); len(got) != 2 {
		t.Fatalf("n1's pods after the cluster changed: %v", got)
	}
	st.Nodes = map[string]NodeTopology{}
	if _, err := s.SyncCluster(st); err != nil {
		t.Fatal(err)
	}
	if got := pods("n1"); len(got) != 0 {
		t.Fatalf("n1 left the cluster but keeps pods %v", got)
	}
}
