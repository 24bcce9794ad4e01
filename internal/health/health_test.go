package health

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// listen binds a loopback port and closes it when the test ends.
func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// closedAddr is a loopback address nothing listens on (bound, then closed).
func closedAddr(t *testing.T) string {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestProbers: each probe type against a real loopback server that is
// healthy, and against one that is not, with the reason in the error.
func TestProbers(t *testing.T) {
	tcp := listen(t)
	var mu sync.Mutex
	seen := map[string]string{} // path → user agent
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.URL.Path] = r.Header.Get("User-Agent")
		mu.Unlock()
		if r.URL.Path == "/sick" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(web.Close)
	webAddr := strings.TrimPrefix(web.URL, "http://")

	gln := listen(t)
	gs := grpc.NewServer()
	hs := grpchealth.NewServer()
	hs.SetServingStatus("up", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("down", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(gln)
	t.Cleanup(gs.Stop)

	for _, c := range []struct {
		name    string
		spec    Spec
		wantErr string // "" healthy
	}{
		{"tcp listening", Spec{Addr: tcp.Addr().String()}, ""},
		{"tcp refused", Spec{Type: "tcp", Addr: closedAddr(t)}, "refused"},
		{"http ok", Spec{Type: "http", Addr: webAddr, Path: "/ready"}, ""},
		{"http 503", Spec{Type: "http", Addr: webAddr, Path: "/sick"}, "http status 503"},
		{"http refused", Spec{Type: "http", Addr: closedAddr(t)}, "refused"},
		{"grpc serving", Spec{Type: "grpc", Addr: gln.Addr().String(), GRPCService: "up"}, ""},
		{"grpc whole server", Spec{Type: "grpc", Addr: gln.Addr().String()}, ""},
		{"grpc not serving", Spec{Type: "grpc", Addr: gln.Addr().String(), GRPCService: "down"}, "NOT_SERVING"},
		{"grpc unknown service", Spec{Type: "grpc", Addr: gln.Addr().String(), GRPCService: "nope"}, "status 5"}, // NOT_FOUND
		{"grpc against http/1 server", Spec{Type: "grpc", Addr: webAddr}, "grpc"},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.spec.Timeout = 10 * time.Second
			p, err := NewProber(c.spec)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			err = p.Probe(context.Background())
			if c.wantErr == "" && err != nil {
				t.Fatalf("want healthy, got %v", err)
			}
			if c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Fatalf("want error containing %q, got %v", c.wantErr, err)
			}
		})
	}
	mu.Lock()
	if seen["/ready"] != userAgent || seen["/sick"] != userAgent {
		t.Errorf("http probes: path → user agent %v, want /ready and /sick with %q", seen, userAgent)
	}
	mu.Unlock()
	if _, err := NewProber(Spec{Type: "exec"}); err == nil || !strings.Contains(err.Error(), `"exec"`) {
		t.Errorf("unknown type: got %v", err)
	}
}

// startChecker runs c until the test ends and returns its reports.
func startChecker(t *testing.T, c *Checker) <-chan error {
	t.Helper()
	reports := make(chan error, 100)
	c.Report = func(err error) {
		select {
		case reports <- err:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Checker.Run did not return after its context ended")
		}
	})
	return reports
}

func next(t *testing.T, reports <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-reports:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("no report: %s", what)
		return nil
	}
}

// TestCheckerWake: the first probe runs at once; with an interval far
// beyond the test, only a wake brings the next one, which sees the target
// gone.
func TestCheckerWake(t *testing.T) {
	ln := listen(t)
	p, _ := NewProber(Spec{Addr: ln.Addr().String(), Timeout: 5 * time.Second})
	wake := make(chan struct{}, 1)
	reports := startChecker(t, &Checker{Prober: p, Interval: time.Hour, Wake: wake, WakeDelay: time.Millisecond})
	if err := next(t, reports, "first probe"); err != nil {
		t.Fatalf("first probe: %v", err)
	}
	ln.Close()
	select {
	case err := <-reports:
		t.Fatalf("a probe without a wake: %v", err)
	default:
	}
	wake <- struct{}{}
	if err := next(t, reports, "probe after wake"); err == nil {
		t.Fatal("probe after the listener closed: healthy")
	}
}

// TestCheckerInterval: without wakes, probes repeat every Interval.
func TestCheckerInterval(t *testing.T) {
	ln := listen(t)
	p, _ := NewProber(Spec{Addr: ln.Addr().String(), Timeout: 5 * time.Second})
	reports := startChecker(t, &Checker{Prober: p, Interval: 5 * time.Millisecond})
	for i := 0; i < 3; i++ {
		if err := next(t, reports, "periodic probe"); err != nil {
			t.Fatalf("probe %d: %v", i, err)
		}
	}
}
