package agent

import (
	"context"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// A node of a federated trust domain whose node name equals a local
// node's name passes the mesh server's checkSource (it compares the bare
// node name, transport/peerauth.go) and was then vouched for as the local
// node: it could claim the local node's workload identities, and node
// rules naming the local node matched it. It is named by its full ID now,
// and vouched for its own domain's identities only (a review's finding,
// session 19).
func TestFederatedNodeIsNotTheLocalNodeOfItsName(t *testing.T) {
	a := startAgent(t, agentOpts{name: "v", site: "s1", region: "r1", vipOctet: 186, stateDir: t.TempDir()})
	res := newResources()
	objs, err := api.Decode([]byte(`[
{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"web","namespace":"demo"},"spec":{"ports":[{"name":"http","port":80}],"identity":{"serviceAccounts":["frontend"]}}},
{"apiVersion":"fogmesh.io/v1alpha1","kind":"Endpoint","metadata":{"name":"web-a","namespace":"demo"},"spec":{"service":"web","node":"a","address":"10.0.0.1","ports":[{"name":"http","port":80}],"serviceAccount":"frontend"}}]`))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		res.put(o)
	}
	a.view.Store(buildView(a.self, res, nil, a.vip4, a.vip6, "fogmesh.local"))
	a.ident = &nodeIdentity{td: spiffeid.RequireTrustDomainFromString("fogmesh.local")}
	defer func() { a.ident = nil }()
	own := "spiffe://fogmesh.local/ns/demo/sa/frontend"

	// The foreign CA named its node "a", like the local node hosting web-a.
	fedID := spiffeid.RequireFromString("spiffe://other.example/site/x/node/a")
	fed := transport.ContextWithPeer(context.Background(), transport.Peer{ID: fedID, Site: "x", Node: "a"})
	h := transport.Header{Namespace: "demo", Service: "web", Endpoint: "web-a", Port: "http", Source: "a", SourceID: own}
	if src, node := a.vouch(fed, h, own); src != "" || node != fedID.String() {
		t.Errorf("federated node %s (named like local node a) claiming this domain's %s: vouched as %q from node %q, want unknown from %q", fedID, own, src, node, fedID)
	}
	if src, node := a.vouch(fed, transport.Header{Source: "a"}, ""); src != "" || node != fedID.String() {
		t.Errorf("federated node without a claim: %q from node %q, want node %q", src, node, fedID)
	}
	theirs := "spiffe://other.example/ns/demo/sa/client"
	if src, _ := a.vouch(fed, h, theirs); src != theirs {
		t.Errorf("federated node claiming its own domain's %s: vouched as %q", theirs, src)
	}
	// The local node a may claim its own workload's identity.
	local := transport.ContextWithPeer(context.Background(), transport.Peer{ID: spiffeid.RequireFromString("spiffe://fogmesh.local/site/s1/node/a"), Site: "s1", Node: "a"})
	if src, node := a.vouch(local, h, own); src != own || node != "a" {
		t.Errorf("local node a claiming its workload's %s: %q from node %q", own, src, node)
	}
}
