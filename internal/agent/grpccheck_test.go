package agent

import (
	"bytes"
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
	"google.golang.org/protobuf/proto"
)

// TestGRPCHealthCodec: the hand-written encoding matches protobuf's bytes,
// and the decoder reads protobuf's output, skips unknown fields and refuses
// broken frames.
func TestGRPCHealthCodec(t *testing.T) {
	for _, svc := range []string{"", "app", strings.Repeat("s", 200)} {
		want, err := proto.Marshal(&healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatal(err)
		}
		if got := grpcHealthRequest(svc); !bytes.Equal(got[5:], want) || int(got[4])|int(got[3])<<8 != len(want) || got[0] != 0 {
			t.Fatalf("service %q: framed %x, protobuf %x", svc, got, want)
		}
	}
	frame := func(msg []byte) []byte {
		return append([]byte{0, 0, 0, 0, byte(len(msg))}, msg...)
	}
	for st := range grpcStatusNames {
		msg, _ := proto.Marshal(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_ServingStatus(st)})
		if got, err := parseGRPCHealthResponse(frame(msg)); err != nil || got != uint64(st) {
			t.Fatalf("status %d: got %d %v", st, got, err)
		}
	}
	for _, c := range []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"unknown fields skipped", frame([]byte{0x12, 2, 'h', 'i', 0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x25, 1, 2, 3, 4, 0x08, 1}), true},
		{"short frame", []byte{0, 0, 0}, false},
		{"compressed", []byte{1, 0, 0, 0, 0}, false},
		{"length beyond frame", []byte{0, 0, 0, 0, 9, 0x08}, false},
		{"truncated varint", frame([]byte{0x08, 0x80}), false},
		{"length-delimited too long", frame([]byte{0x12, 9, 'x'}), false},
		{"group wire type", frame([]byte{0x0b}), false},
	} {
		st, err := parseGRPCHealthResponse(c.b)
		if (err == nil) != c.ok || (c.ok && st != grpcServing) {
			t.Errorf("%s: status %d, err %v", c.name, st, err)
		}
	}
}

// FuzzGRPCHealthResponse: no frame crashes the decoder.
func FuzzGRPCHealthResponse(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 2, 0x08, 1})
	f.Add([]byte{0, 0, 0, 0, 3, 0x12, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) { parseGRPCHealthResponse(b) })
}

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
