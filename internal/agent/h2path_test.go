package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/fogmesh/fogmesh/internal/testenv"
	"github.com/fogmesh/fogmesh/internal/testenv/grpcsvc"
)

// The HTTP/2 path through one agent (h2up upstream, buffered reads),
// with real clients: grpc-go and h2load.

// TestGRPCThroughOneAgent: grpc-go through one agent (a port declared
// grpc) to a node-local endpoint: unary with headers and trailers, an
// error status, messages past every flow-control window, client, server
// and bidirectional streaming (ping-pong: a message the agent held back
// would stall it), and a cancelled stream reaching the server
// (grpcsvc.Exercise).
func TestGRPCThroughOneAgent(t *testing.T) {
	s := grpcsvc.Start(t)
	_, port, _ := net.SplitHostPort(s.Addr)
	var p int
	fmt.Sscan(port, &p)
	agentInFront(t, inFront{node: "g1", octet: 207, svc: "gsvc", vipPort: 19401, port: p, proto: "grpc", noRequest: true})
	grpcsvc.Exercise(t, "127.207.0.1:19401", s)
}

// TestH2LoadThroughOneAgent: h2load (nghttp2) sends 2,000 requests over 2
// connections, 10 streams each, through one agent (a port declared
// http2) to an h2c endpoint: every one is answered 200.
func TestH2LoadThroughOneAgent(t *testing.T) {
	h2load := testenv.NeedTool(t, "h2load")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			http.Error(w, "want HTTP/2", http.StatusHTTPVersionNotSupported)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("ok"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	agentInFront(t, inFront{node: "h1", octet: 182, svc: "hsvc", vipPort: 19402, port: ln.Addr().(*net.TCPAddr).Port,
		proto: "http2", noRequest: true})
	out, err := exec.Command(h2load, "-n", "2000", "-c", "2", "-m", "10", "-t", "1", "http://127.182.0.1:19402/").CombinedOutput()
	if err != nil {
		t.Fatalf("h2load: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored`).Match(out) ||
		!regexp.MustCompile(`status codes: 2000 2xx`).Match(out) {
		t.Fatalf("h2load through the agent:\n%s", out)
	}
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// TestGRPCMaxRequestsPerConnection: on a grpc port, maxRequestsPerConnection
// caps the streams one upstream connection carries (net/http's transport
// honoured only 1): 6 calls at 2 per connection open 3 connections.
func TestGRPCMaxRequestsPerConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(cl)
	t.Cleanup(gs.Stop)
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, `{"apiVersion":"fogmesh.io/v1alpha1","kind":"Service","metadata":{"name":"gmax","namespace":"demo"},
	"spec":{"ports":[{"name":"web","port":19404,"protocol":"grpc"}],"circuitBreaker":{"maxRequestsPerConnection":2}}}`)
	w := webWorkload("gmax", "gmax-1", ln.Addr().(*net.TCPAddr).Port)
	w.Check = Check{Type: "none"} // no health check dials to count
	a := startAgent(t, agentOpts{name: "g2", site: "s1", region: "r1", vipOctet: 207, control: []string{cp.SyncAddr()},
		stateDir: t.TempDir(), workloads: []Workload{w}})
	waitFor(t, "endpoint", func() bool { return len(endpointsOf(a, "demo/gmax")) == 1 })
	waitListening(t, "127.207.0.1:19404")
	conn, err := grpc.NewClient("127.207.0.1:19404", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	before := cl.n.Load()
	for range 6 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := cl.n.Load() - before; n != 3 {
		t.Fatalf("%d upstream connections for 6 calls at 2 per connection, want 3", n)
	}
}
