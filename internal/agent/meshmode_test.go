package agent

import (
	"context"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/authz"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// TestMeshStreamsOfL7PortsServedPerRequest: in secure mode a mesh stream
// to an HTTP, HTTP/2 or gRPC port is served per request (where the request
// header's source identity is vouched for) even when no policy selects the
// destination, or none exists at all; on an auto port the first bytes
// decide; TCP streams, and every stream in insecure mode, are relayed as
// bytes. (TestSecureDataPlane shows a lying
// node's claim reaching the workload otherwise.)
func TestMeshStreamsOfL7PortsServedPerRequest(t *testing.T) {
	svc := &api.Service{Meta: api.Meta{Name: "web", Namespace: "demo"}, Spec: api.ServiceSpec{Ports: []api.ServicePort{
		{Name: "h1", Port: 80, Protocol: "http"}, {Name: "h2", Port: 81, Protocol: "http2"}, {Name: "rpc", Port: 82, Protocol: "grpc"},
		{Name: "raw", Port: 83, Protocol: "tcp"}, {Name: "any", Port: 84, Protocol: "auto"}}}}
	other, err := api.Decode([]byte(`{"apiVersion":"fogmesh.io/v1alpha1","kind":"AuthorizationPolicy","metadata":{"name":"p","namespace":"elsewhere"},"spec":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	var a Agent
	for _, engine := range []*authz.Engine{nil, mustCompile(t, other[0].(*api.AuthorizationPolicy))} {
		a.view.Store(&view{services: map[string]*serviceView{"demo/web": {svc: svc}}, authz: engine})
		for _, secure := range []bool{false, true} {
			a.ident = nil
			if secure {
				a.ident = &nodeIdentity{td: spiffeid.RequireTrustDomainFromString("fogmesh.local")}
			}
			for port, want := range map[string]authzMode{"h1": modeHTTP, "h2": modeHTTP, "rpc": modeHTTP, "raw": modeNone, "any": modeDetect} {
				if !secure {
					want = modeNone
				}
				h := transport.Header{Namespace: "demo", Service: "web", Endpoint: "web-a", Port: port, Source: "b"}
				if mode, err := a.authorizeStream(context.Background(), h); err != nil || mode != want {
					t.Errorf("policies %d, secure %v, port %s: mode %d, %v; want %d", engine.Len(), secure, port, mode, err, want)
				}
			}
		}
	}
}

func mustCompile(t *testing.T, ps ...*api.AuthorizationPolicy) *authz.Engine {
	t.Helper()
	e, err := authz.Compile(ps)
	if err != nil {
		t.Fatal(err)
	}
	return e
}
