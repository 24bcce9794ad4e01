package agent

import (
	"context"
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// The pods a cluster runs on a node (api.NodeSpec.Pods, from the control
// plane): this node's agent knows a connection from a pod's address as
// its account's identity, and a destination accepts that claim from the
// pod's node only. An address that a local endpoint names with another
// identity stays unknown.
func TestPodIdentitiesFromNodes(t *testing.T) {
	a := startAgent(t, agentOpts{name: "v", site: "s1", region: "r1", vipOctet: 186, stateDir: t.TempDir()})
	res := newResources()
	self := *a.self
	self.Spec.Pods = []api.PodIdentity{
		{Address: "10.1.0.5", Namespace: "shop", ServiceAccount: "batch"},
		{Address: "10.1.0.7", Namespace: "shop", ServiceAccount: "other"}, // also a local endpoint's, below
	}
	other := api.Node{APIVersion: api.APIVersion, Kind: api.KindNode, Meta: api.Meta{Name: "b"}, Spec: api.NodeSpec{Site: "s1", Region: "r1",
		Pods: []api.PodIdentity{{Address: "10.2.0.9", Namespace: "shop", ServiceAccount: "cron"}}}}
	res.put(&self)
	res.put(&other)
	local := []api.Endpoint{{Meta: api.Meta{Name: "web-v", Namespace: "shop"}, Spec: api.EndpointSpec{Service: "web", Node: "v", Address: "10.1.0.7", ServiceAccount: "web"}}}
	v := buildView(a.self, res, local, a.vip4, a.vip6, "fogmesh.local")
	if got := v.ids[netip.MustParseAddr("10.1.0.5")]; got != "spiffe://fogmesh.local/ns/shop/sa/batch" {
		t.Errorf("a pod on this node: identity %q", got)
	}
	if got, ok := v.ids[netip.MustParseAddr("10.1.0.7")]; !ok || got != "" {
		t.Errorf("an address of a pod and of an endpoint with another account: %q, want unknown", got)
	}
	if _, ok := v.ids[netip.MustParseAddr("10.2.0.9")]; ok {
		t.Error("another node's pod is known at this node's addresses")
	}
	a.view.Store(v)
	a.ident = &nodeIdentity{td: spiffeid.RequireTrustDomainFromString("fogmesh.local")}
	defer func() { a.ident = nil }()
	ctx := transport.ContextWithPeer(context.Background(), transport.Peer{ID: spiffeid.RequireFromString("spiffe://fogmesh.local/site/s1/node/b")})
	cron := "spiffe://fogmesh.local/ns/shop/sa/cron"
	if src, _ := a.vouch(ctx, transport.Header{Source: "b"}, cron); src != cron {
		t.Errorf("node b vouching for its pod's account: %q", src)
	}
	ctxV := transport.ContextWithPeer(context.Background(), transport.Peer{ID: spiffeid.RequireFromString("spiffe://fogmesh.local/site/s1/node/v")})
	if src, _ := a.vouch(ctxV, transport.Header{Source: "v"}, cron); src != "" {
		t.Errorf("node v vouching for b's pod's account: accepted as %q", src)
	}
}
