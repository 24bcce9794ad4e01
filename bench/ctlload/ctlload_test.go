package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConvergenceAcrossRestart: 200 simulated agents (mutual TLS, node
// certificates from the control plane's CA) and 1,000 endpoints over 100
// services; endpoints change at 100/s for 2 s; the control plane (`fogmesh
// control`, built without the race detector so that only the load runs
// instrumented) is killed and started again on the same state dir. Every
// change must reach every agent, every agent must resubscribe, and at the
// end every agent must hold exactly the control plane's services,
// endpoints (at the version of their last write) and nodes, with no
// resource twice in an update and no version going back. Correctness only:
// timings are the benchmark's business.
func TestConvergenceAcrossRestart(t *testing.T) {
	n, m := 200, 1000
	if testing.Short() {
		n, m = 50, 250
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "fogmesh")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/fogmesh/fogmesh/cmd/fogmesh").CombinedOutput(); err != nil {
		t.Fatalf("build fogmesh: %v\n%s", err, out)
	}
	var log strings.Builder
	res, err := runLoad(ctx, config{Bin: bin,
		N: n, M: m, Rate: 100, Duration: 2 * time.Second, Jitter: 200 * time.Millisecond,
		Heartbeat: 2 * time.Second, Dir: t.TempDir(), Restart: true, Verify: true,
		Dialers: 32, PhaseTimeout: 90 * time.Second, Log: &log, // a CI run at load 20 took > 40 s to subscribe 200
	})
	t.Log("\n" + log.String())
	if err != nil {
		t.Fatal(err)
	}
	if res.ChangesSent < 10 {
		t.Fatalf("only %d changes sent", res.ChangesSent)
	}
	if res.Incomplete != 0 {
		t.Errorf("%d of %d changes did not reach every agent", res.Incomplete, res.ChangesSent)
	}
	if !res.AfterRestartOK {
		t.Error("a change after the restart did not reach every agent")
	}
	for i, f := range res.Faults {
		if i == 10 {
			t.Errorf("... %d faults in all", len(res.Faults))
			break
		}
		t.Error(f)
	}
}

// TestScopedConvergenceAcrossRestart: as TestConvergenceAcrossRestart,
// with agents that subscribe to 3 services each (wire.Scope.Services):
// every change reaches every agent that subscribes to its service, and at
// the end every agent holds exactly its services, their endpoints and its
// own node, nothing else, also after the restart.
func TestScopedConvergenceAcrossRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "fogmesh")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/fogmesh/fogmesh/cmd/fogmesh").CombinedOutput(); err != nil {
		t.Fatalf("build fogmesh: %v\n%s", err, out)
	}
	var log strings.Builder
	res, err := runLoad(ctx, config{Bin: bin,
		N: 100, M: 500, Services: 50, Scope: 3, Rate: 100, Duration: 2 * time.Second, Jitter: 200 * time.Millisecond,
		Heartbeat: 2 * time.Second, Dir: t.TempDir(), Restart: true, Verify: true,
		Dialers: 32, PhaseTimeout: 90 * time.Second, Log: &log, // a CI run at load 20 took > 40 s to subscribe 200
	})
	t.Log("\n" + log.String())
	if err != nil {
		t.Fatal(err)
	}
	if res.ChangesSent < 10 || res.Incomplete != 0 || !res.AfterRestartOK {
		t.Fatalf("%d changes sent, %d incomplete, after restart ok %v", res.ChangesSent, res.Incomplete, res.AfterRestartOK)
	}
	if res.Reach < 4 || res.Reach > 8 { // 100 agents × 3 services / 50 services = 6 per change
		t.Errorf("a change had to reach %.1f agents on average, want 6 (the service's subscribers)", res.Reach)
	}
	for i, f := range res.Faults {
		if i == 10 {
			t.Errorf("... %d faults in all", len(res.Faults))
			break
		}
		t.Error(f)
	}
}

// TestTrackerScoped: a change waits only for the agents that subscribe to
// its service.
func TestTrackerScoped(t *testing.T) {
	c := config{N: 4, Services: 4, Scope: 1} // agent i subscribes to service i
	tr := newTracker(4, c.inScope)
	t0 := time.Unix(1000, 0)
	tr.record(t0)
	tr.register(t0, 10, 2)
	tr.applied(2, 10, t0.Add(5*time.Millisecond))
	lat, _, inc, reach := tr.latencies()
	if inc != 0 || len(lat) != 1 || lat[0] != 5*time.Millisecond || reach != 1 {
		t.Fatalf("latencies %v incomplete %d reach %v, want [5ms] 0 1", lat, inc, reach)
	}
	if sc := c.scopeOf(3); sc == nil || len(sc.Services) != 1 || sc.Services[0] != "bench/svc-3" {
		t.Fatalf("scope of agent 3: %+v", sc)
	}
}

// TestTracker: a change counts as applied at an agent once it applied any
// version at or above the change's revision, also when that version came
// before the writer learnt the revision, and whatever the order in which
// changes are registered.
func TestTracker(t *testing.T) {
	tr := newTracker(2, nil)
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

	tr.applied(0, 8, at(-10)) // before recording
	tr.applied(1, 8, at(-10))
	tr.record(at(-1))
	tr.applied(0, 10, at(5))  // agent 0 has rev 10 at 5ms
	tr.applied(1, 9, at(6))   // agent 1 is not there yet
	tr.register(at(0), 10, 0) // change 0 at rev 10, registered late
	if lat, _, inc, _ := tr.latencies(); inc != 1 || len(lat) != 0 {
		t.Fatalf("latencies %v incomplete %d, want none done and 1 incomplete", lat, inc)
	}
	// Agent 1 applies rev 12 before the writer registers change 1 (rev 12):
	// it covers change 0 now and change 1 once registered.
	tr.applied(1, 12, at(8))
	tr.applied(0, 11, at(9))   // below change 1: not it
	tr.register(at(20), 15, 0) // change 2, registered before change 1
	tr.register(at(7), 12, 0)
	tr.applied(0, 15, at(30)) // covers 1 and 2
	tr.applied(1, 15, at(40))
	tr.applied(1, 14, at(50)) // a lower version later changes nothing
	lat, fan, inc, _ := tr.latencies()
	if inc != 0 {
		t.Fatalf("incomplete %d", inc)
	}
	// change 0: last agent at 8ms; change 1: sent 7, last at 30 → 23ms;
	// change 2: sent 20, last at 40 → 20ms.
	want := []time.Duration{8 * time.Millisecond, 20 * time.Millisecond, 23 * time.Millisecond}
	if len(lat) != 3 || lat[0] != want[0] || lat[1] != want[1] || lat[2] != want[2] {
		t.Fatalf("latencies %v, want %v", lat, want)
	}
	// Fan-out, first to last agent: change 0 5..8 → 3ms; change 1 8..30
	// → 22ms; change 2 30..40 → 10ms.
	if len(fan) != 3 || fan[0] != 3*time.Millisecond || fan[1] != 10*time.Millisecond || fan[2] != 22*time.Millisecond {
		t.Fatalf("fan-out %v", fan)
	}
	if q := quantile(lat, 0.5); q != 20*time.Millisecond {
		t.Fatalf("p50 %v", q)
	}
	if got := tr.minApplied(); got != 15 {
		t.Fatalf("minApplied %d", got)
	}
	if got := tr.maxRev(); got != 15 {
		t.Fatalf("maxRev %d", got)
	}

	// Resync bookkeeping: an agent welcomed at rev 20 holding 15 is in sync
	// once it applies 20; one holding 20 is in sync at once.
	kill := at(100)
	tr.subscribed(0, 20, 15, at(110))
	tr.subscribed(1, 20, 20, at(120))
	if subs, synced, _, _ := tr.resync(kill); subs != 2 || synced != 1 {
		t.Fatalf("resync %d subscribed %d synced, want 2 1", subs, synced)
	}
	tr.applied(0, 20, at(130))
	if subs, synced, lastSub, lastSync := tr.resync(kill); subs != 2 || synced != 2 || !lastSub.Equal(at(120)) || !lastSync.Equal(at(130)) {
		t.Fatalf("resync %d %d %v %v", subs, synced, lastSub, lastSync)
	}
}

// TestLogFromTwoGoroutines: the watchdog's progress lines and a phase's
// lines go to one writer (a strings.Builder in the test above) at once.
func TestLogFromTwoGoroutines(t *testing.T) {
	var log strings.Builder
	r := &run{cfg: config{Log: &log}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 100 {
			r.logf("progress %d", i)
		}
	}()
	for i := range 100 {
		r.logf("phase %d", i)
	}
	<-done
	if n := strings.Count(log.String(), "\n"); n != 200 {
		t.Fatalf("%d lines logged, want 200", n)
	}
}
