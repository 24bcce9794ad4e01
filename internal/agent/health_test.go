package agent

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// TestGRPCHealthCheck: workloads checked with type grpc against real
// grpc-go health servers. SERVING is healthy; NOT_SERVING (and
// SERVICE_UNKNOWN) turn the endpoint unhealthy and calls through the VIP move
// to the other server; SERVING again brings it back.
func TestGRPCHealthCheck(t *testing.T) {
	cp := startControl(t, t.TempDir(), "")
	apply(t, cp, httpSvcDoc("ghc", 19110, "grpc"))
	healths := map[string]*health.Server{}
	var wls []Workload
	for _, name := range []string{"g1", "g2"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		name := name
		s := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			grpc.SetHeader(ctx, metadata.Pairs("x-server", name))
			return h(ctx, req)
		}))
		hs := health.NewServer()
		hs.SetServingStatus("app", healthpb.HealthCheckResponse_SERVING)
		healthpb.RegisterHealthServer(s, hs)
		go s.Serve(ln)
		t.Cleanup(s.Stop)
		healths[name] = hs
		w := webWorkload("ghc", "ghc-"+name, ln.Addr().(*net.TCPAddr).Port)
		w.Check = Check{Type: "grpc", GRPCService: "app"}
		wls = append(wls, w)
	}
	a := startAgent(t, agentOpts{name: "ghcn", site: "s1", region: "r1", vipOctet: 210, control: []string{cp.SyncAddr()}, stateDir: t.TempDir(), workloads: wls})
	healthyOf := func(name string) bool {
		for _, e := range endpointsOf(a, "demo/ghc") {
			if e.Name == "ghc-"+name {
				return e.Healthy && !e.Ejected
			}
		}
		return false
	}
	waitFor(t, "both healthy", func() bool { return healthyOf("g1") && healthyOf("g2") })

	conn, err := grpc.NewClient("127.210.0.1:19110", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	// calls counts which server answered 20 calls (the server as a whole
	// stays SERVING; only "app" changes).
	calls := func() map[string]int {
		seen := map[string]int{}
		for i := 0; i < 20; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var md metadata.MD
			_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md))
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			seen[strings.Join(md.Get("x-server"), "")]++
		}
		return seen
	}
	waitFor(t, "listener", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil
	})
	if seen := calls(); seen["g1"] == 0 || seen["g2"] == 0 {
		t.Fatalf("both SERVING: calls went to %v", seen)
	}
	healths["g1"].SetServingStatus("app", healthpb.HealthCheckResponse_NOT_SERVING)
	waitFor(t, "g1 unhealthy", func() bool { return !healthyOf("g1") })
	if !healthyOf("g2") {
		t.Fatal("g2 turned unhealthy too")
	}
	if seen := calls(); seen["g1"] != 0 || seen["g2"] != 20 {
		t.Fatalf("g1 NOT_SERVING: calls went to %v, want all to g2", seen)
	}
	healths["g1"].SetServingStatus("app", healthpb.HealthCheckResponse_SERVING)
	waitFor(t, "g1 healthy again", func() bool { return healthyOf("g1") })
	healths["g2"].SetServingStatus("app", healthpb.HealthCheckResponse_SERVICE_UNKNOWN)
	waitFor(t, "g2 unhealthy (SERVICE_UNKNOWN)", func() bool { return !healthyOf("g2") })
	if seen := calls(); seen["g2"] != 0 || seen["g1"] != 20 {
		t.Fatalf("g2 SERVICE_UNKNOWN: calls went to %v, want all to g1", seen)
	}
}

// TestGRPCCheckConfig: grpcService is only for grpc checks.
func TestGRPCCheckConfig(t *testing.T) {
	w := webWorkload("s", "s-1", 1)
	w.Check = Check{Type: "tcp", GRPCService: "x"}
	if err := w.normalize("n"); err == nil || !strings.Contains(err.Error(), "check.grpcService") {
		t.Fatalf("got %v", err)
	}
	w.Check = Check{Type: "grpc", GRPCService: "x"}
	if err := w.normalize("n"); err != nil {
		t.Fatal(err)
	}
}
