package agent

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/api"
	"github.com/fogmesh/fogmesh/internal/transport"
	"github.com/fogmesh/fogmesh/internal/wire"
)

// TestObservedStreamWaitsForItsService: an insecure agent with an access
// log (or traces) serves its HTTP ports per request, for the endpoint
// side's log line and span. A mesh stream for a workload here whose
// service the agent does not hold yet waits for it and is then served per
// request, not decided as bytes: the source pools that connection, and
// every later request on it would go unlogged and untraced (a CI run of
// TestTraceTwoAgents lost every HTTP/1.1 server span so). Without traces,
// logs, policies or secure mode the answer is bytes either way: no wait.
// With traces or logs only and the service never coming, the stream is
// relayed as bytes after the wait; with a policy (another service's), it
// is refused after the wait, counted, as in secure mode.
func TestObservedStreamWaitsForItsService(t *testing.T) {
	a, err := New(Config{Node: NodeConfig{Name: "n", Site: "s", Region: "r"}, StateDir: t.TempDir(), MeshAddr: "127.0.0.1:0",
		DNSAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", VIPRange: "127.51.0.0/16", Insecure: true,
		AccessLog: AccessLogConfig{Path: filepath.Join(t.TempDir(), "access.log")},
		Workloads: []Workload{webWorkload("late", "late-1", 1)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if hasService(a, "demo/late") || a.obs == nil {
		t.Fatal("the agent holds demo/late without a control plane, or observes nothing: the test shows nothing")
	}
	h := transport.Header{Namespace: "demo", Service: "late", Endpoint: "late-1", Port: "web", Source: "peer"}

	obs := a.obs
	a.obs = nil
	start := time.Now()
	if mode, err := a.authorizeStream(context.Background(), h); err != nil || mode != modeNone {
		t.Fatalf("unobserved: mode %v, %v; want bytes", mode, err)
	}
	if took := time.Since(start); took >= scopeWait {
		t.Fatalf("unobserved: waited %v for the service", took)
	}
	a.obs = obs

	type result struct {
		mode authzMode
		err  error
	}
	done := make(chan result, 1)
	go func() {
		m, err := a.authorizeStream(context.Background(), h)
		done <- result{m, err}
	}()
	// Only once the stream waits does the service come: without the wait
	// it would have been decided as bytes by then.
	waitFor(t, "the stream to wait for its service", func() bool { return a.scope.waiters.Load() == 1 })
	svc, err := wire.NewResource(&api.Service{APIVersion: api.APIVersion, Kind: api.KindService, Meta: api.Meta{Namespace: "demo", Name: "late"},
		Spec: api.ServiceSpec{Ports: []api.ServicePort{{Name: "web", Port: 18080, Protocol: "http"}}}, Status: api.ServiceStatus{VIPIndex: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.applyUpdate(&wire.Message{Type: wire.TypeUpdate, Version: 1, Resources: []wire.Resource{svc}}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.mode != modeHTTP {
			t.Fatalf("mode %v, %v once the service came; want it served per request", r.mode, r.err)
		}
	case <-time.After(2 * scopeWait):
		t.Fatal("the stream still waits after its service came")
	}

	// Traces or logs only (insecure, no policies): a stream for a service
	// that never comes waits scopeWait, then is relayed as bytes, not
	// refused (the README's claim): nothing here needs to authorize it.
	never := transport.Header{Namespace: "demo", Service: "never", Endpoint: "never-1", Port: "web", Source: "peer"}
	a.mu.Lock()
	a.workloads["never-1"] = &workloadState{w: Workload{Name: "never-1", Service: "never", Namespace: "demo"}, healthy: true}
	a.mu.Unlock()
	start = time.Now()
	if mode, err := a.authorizeStream(context.Background(), never); err != nil || mode != modeNone {
		t.Fatalf("observed, service never held: mode %v, %v; want bytes after the wait", mode, err)
	}
	if took := time.Since(start); took < scopeWait {
		t.Fatalf("observed, service never held: decided after %v, before waiting %v for it", took, scopeWait)
	}
	if got := a.m.streamsUnknownService.Get(); got != 0 {
		t.Fatalf("fogmesh_agent_streams_unknown_service_total = %d after a relayed stream, want 0", got)
	}

	// Policies, no traces or logs: a stream for a service that never
	// comes waits scopeWait and is refused: its policies are unknown.
	a.obs = nil
	defer func() { a.obs = obs }()
	a.mu.Lock()
	a.res.put(&api.AuthorizationPolicy{APIVersion: api.APIVersion, Kind: api.KindAuthorizationPolicy,
		Meta: api.Meta{Namespace: "demo", Name: "other-api"}, Spec: api.AuthorizationPolicySpec{Service: "other", Action: api.ActionAllow,
			Rules: []api.AuthzRule{{To: []api.AuthzOperation{{Paths: []string{"/api/*"}}}}}}})
	a.rebuildLocked()
	a.mu.Unlock()
	if a.view.Load().authz == nil {
		t.Fatal("no policies in the view: the check below shows nothing")
	}
	start = time.Now()
	if mode, err := a.authorizeStream(context.Background(), never); !errors.Is(err, transport.ErrUnknownDestination) {
		t.Fatalf("policies, service never held: mode %v, %v; want it refused", mode, err)
	}
	if took := time.Since(start); took < scopeWait {
		t.Fatalf("refused after %v, before waiting %v for the service", took, scopeWait)
	}
	if got := a.m.streamsUnknownService.Get(); got != 1 {
		t.Fatalf("fogmesh_agent_streams_unknown_service_total = %d, want 1", got)
	}
}
