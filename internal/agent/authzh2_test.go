package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/h2up"
	"github.com/fogmesh/fogmesh/internal/testenv/grpcsvc"
	"github.com/fogmesh/fogmesh/internal/transport"
)

// TestAuthzHTTP2OnMeshStream: HTTP/2 written straight onto a mesh stream
// of an h2c port, as a peer agent's h2up writes it, is served by the
// agent's own HTTP/2 server (package h2srv), which normalises each
// request's path before it authorizes it and forwards exactly the path it
// authorized; a refused spelling never reaches the workload.
func TestAuthzHTTP2OnMeshStream(t *testing.T) {
	files := startFileServer(t)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: h2files, namespace: demo}
spec: {ports: [{name: h2, port: 19633, protocol: http2}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: h2files-public, namespace: demo}
spec: {service: h2files, rules: [{to: [{methods: [GET], paths: ["/public/*"]}]}]}
`)
	a := startAgent(t, agentOpts{name: "h2d", site: "s1", region: "r1", vipOctet: 33, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{{Name: "h2files-1", Service: "h2files", Namespace: "demo", Ports: []api.EndpointPort{{Name: "h2", Port: files}}}}})
	// With the policy, the agent serves the peer's streams per request (an
	// insecure agent without one relays bytes).
	waitFor(t, "endpoint and policy", func() bool { return len(endpointsOf(a, "demo/h2files")) == 1 && a.view.Load().authz.Len() == 1 })
	mc := transport.NewClient(transport.ClientConfig{SourceNode: "peer"})
	defer mc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := mc.Dial(ctx, a.MeshAddr(), transport.Header{Namespace: "demo", Service: "h2files", Endpoint: "h2files-1", Port: "h2", Source: "peer", L7: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cc, err := (&http2.Transport{AllowHTTP: true}).NewClientConn(s)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	send := func(method, target string) pathResult {
		t.Helper()
		dec, err := url.PathUnescape(target)
		if err != nil {
			t.Fatal(err)
		}
		req := &http.Request{Method: method, URL: &url.URL{Scheme: "http", Host: "files", Path: dec, RawPath: target}, Host: "files", Header: http.Header{}}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		resp, err := cc.RoundTrip(req.WithContext(rctx))
		if err != nil {
			t.Fatalf("%s %s on the mesh stream: %v", method, target, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return pathResult{resp.StatusCode, resp.Header.Get("X-Got-Path"), string(b)}
	}
	for _, c := range []struct {
		method, target string
		code           int
		got            string // the path the workload must have received
	}{
		{"GET", "/public/a.txt", 200, "/public/a.txt"},
		{"GET", "/public/%2e/%61.txt", 200, "/public/a.txt"},
		{"GET", "/public/../admin/secret.txt", 403, ""},
		{"GET", "/public/%2e%2e/admin/secret.txt", 403, ""},
		{"GET", "/public%2f..%2fadmin/secret.txt", 403, ""},
		{"POST", "/public/a.txt", 403, ""},
		{"get", "/public/a.txt", 400, ""},
	} {
		r := send(c.method, c.target)
		if r.code != c.code || r.got != c.got || strings.Contains(r.body, "ADMIN SECRET") {
			t.Errorf("%s %s: %d, workload got %q (%q); want %d, %q", c.method, c.target, r.code, r.got, r.body, c.code, c.got)
		}
	}
	if n := a.authzHTTP.h2Streams.Load(); n != 1 {
		t.Errorf("%d mesh streams served by the HTTP/2 server (h2srv), want 1", n)
	}
}

// TestAuthzHTTP1OnH2CPortMeshStream: HTTP/1.1 on a mesh stream of an h2c
// port (the bytes the preface check read are replayed) is still served,
// and authorized, per request by net/http's server.
func TestAuthzHTTP1OnH2CPortMeshStream(t *testing.T) {
	files := startFileServer(t)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: h1files, namespace: demo}
spec: {ports: [{name: h2, port: 19634, protocol: http2}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: h1files-public, namespace: demo}
spec: {service: h1files, rules: [{to: [{paths: ["/public/*"]}]}]}
`)
	a := startAgent(t, agentOpts{name: "h1d", site: "s1", region: "r1", vipOctet: 34, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(),
		workloads: []Workload{{Name: "h1files-1", Service: "h1files", Namespace: "demo", Ports: []api.EndpointPort{{Name: "h2", Port: files}}}}})
	waitFor(t, "endpoint and policy", func() bool { return len(endpointsOf(a, "demo/h1files")) == 1 && a.view.Load().authz.Len() == 1 })
	mc := transport.NewClient(transport.ClientConfig{SourceNode: "peer"})
	defer mc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range []struct {
		target string
		want   string
	}{{"/public/a.txt", "HTTP/1.1 200"}, {"/public/../admin/secret.txt", "HTTP/1.1 403"}} {
		s, err := mc.Dial(ctx, a.MeshAddr(), transport.Header{Namespace: "demo", Service: "h1files", Endpoint: "h1files-1", Port: "h2", Source: "peer", L7: true})
		if err != nil {
			t.Fatal(err)
		}
		s.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(s, "GET "+c.target+" HTTP/1.1\r\nHost: files\r\nConnection: close\r\n\r\n")
		out, _ := io.ReadAll(s)
		s.Close()
		if !strings.HasPrefix(string(out), c.want) || strings.Contains(string(out), "ADMIN SECRET") {
			t.Errorf("GET %s: %q, want %s", c.target, out, c.want)
		}
	}
	if n := a.authzHTTP.h2Streams.Load(); n != 0 {
		t.Errorf("%d HTTP/1.1 streams served by the HTTP/2 server", n)
	}
}

// TestMeshStreamUpstreamPools: the destination agent forwards the requests
// of an h2c or gRPC port's mesh stream with the lean HTTP/2 client (h2up),
// as the source agent does, and an http port's with net/http's HTTP/1.1
// transport; the stream's end closes the pool.
func TestMeshStreamUpstreamPools(t *testing.T) {
	for proto, want := range map[string]string{"grpc": "*h2up.Pool", "http2": "*h2up.Pool", "http": "*http.Transport"} {
		ms := &meshStream{proto: proto, local: &meshConn{addr: "127.0.0.1:1"}}
		if got := fmt.Sprintf("%T", ms.transport(nil)); got != want {
			t.Errorf("%s port: upstream %s, want %s", proto, got, want)
		}
		ms.closeIdle()
	}
	if t.Failed() {
		return // the pools below would dial the test's placeholder connection
	}
	ms := &meshStream{proto: "grpc", local: &meshConn{addr: "127.0.0.1:1"}}
	p := ms.transport(nil)
	ms.closeIdle()
	req, _ := http.NewRequest("GET", "http://x/", nil)
	if _, err := p.RoundTrip(req); !errors.Is(err, h2up.ErrPoolClosed) {
		t.Errorf("request after the stream's end: %v, want %v", err, h2up.ErrPoolClosed)
	}
}

// TestGRPCThroughTwoAgents: grpc-go through two agents, the destination
// agent serving the mesh stream per request (a policy selects the
// service) with its own HTTP/2 server and forwarding with h2up:
// grpcsvc.Exercise's unary calls with headers and trailers, error status,
// messages past every flow-control window, streaming both ways, a
// deadline and a cancelled stream.
func TestGRPCThroughTwoAgents(t *testing.T) {
	s := grpcsvc.Start(t)
	_, port, _ := net.SplitHostPort(s.Addr)
	var p int
	fmt.Sscan(port, &p)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `apiVersion: fogmesh.io/v1alpha1
kind: Service
metadata: {name: g2svc, namespace: demo}
spec: {ports: [{name: web, port: 19635, protocol: grpc}]}
---
apiVersion: fogmesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: g2svc-all, namespace: demo}
spec: {service: g2svc, rules: [{to: [{paths: ["/*"]}]}]}
`)
	srv := startAgent(t, agentOpts{name: "g2srv", site: "s1", region: "r1", vipOctet: 34, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{webWorkload("g2svc", "g2svc-1", p)}})
	waitFor(t, "the policy on the endpoint's node", func() bool { return srv.view.Load().authz.Len() == 1 })
	cli := startAgent(t, agentOpts{name: "g2cli", site: "s1", region: "r1", vipOctet: 33, control: []string{cp.SyncAddr()}, stateDir: t.TempDir()})
	waitFor(t, "the remote endpoint and the policy on the client node", func() bool {
		eps := endpointsOf(cli, "demo/g2svc")
		return len(eps) == 1 && eps[0].Healthy && cli.view.Load().authz.Len() == 1
	})
	waitListening(t, "127.33.0.1:19635")
	grpcsvc.Exercise(t, "127.33.0.1:19635", s)
	if srv.authzHTTP.h2Streams.Load() == 0 {
		t.Error("no mesh stream served by the destination's HTTP/2 server")
	}
}
