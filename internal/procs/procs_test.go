package procs

import (
	"context"
	"fmt"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

const tick = 100 * time.Millisecond

// feed steps p with a tick of the given CPU use (cores) and scheduling
// counts, after the sample before it.
type feed struct {
	p *Pacer
	s Sample
}

func newFeed(p *Pacer) *feed {
	f := &feed{p: p}
	p.Step(f.s)
	return f
}

func (f *feed) tick(cores float64, runnable, slow uint64) int {
	f.s.At += tick
	f.s.CPU += time.Duration(cores * float64(tick))
	f.s.Runnable += runnable
	f.s.Slow += slow
	return f.p.Step(f.s)
}

func TestPacerScalesUpOnCPU(t *testing.T) {
	f := newFeed(NewPacer(Config{Max: 4}, 1))
	if got := f.tick(0.69, 100, 0); got != 1 {
		t.Fatalf("0.69 cores with one P: %d Ps, want 1", got)
	}
	if got := f.tick(0.71, 100, 0); got != 4 {
		t.Fatalf("0.71 cores with one P: %d Ps, want all 4", got)
	}
}

func TestPacerScalesUpOnSchedulingLatency(t *testing.T) {
	f := newFeed(NewPacer(Config{Max: 2}, 1))
	if got := f.tick(0.1, 1000, 10); got != 1 {
		t.Fatalf("1 %% of goroutines waited: %d Ps, want 1 (the share must be exceeded)", got)
	}
	if got := f.tick(0.1, 3, 3); got != 1 {
		t.Fatalf("3 of 3 sampled goroutines waited: %d Ps, want 1 (fewer than 4 slow ones say little)", got)
	}
	if got := f.tick(0.1, 1000, 11); got != 2 {
		t.Fatalf("1.1 %% of goroutines waited over 1 ms: %d Ps, want 2", got)
	}
	// With every P, slow goroutines are no reason to change (the OS,
	// not the Ps, delayed them); only a quiet spell is.
	if got := f.tick(0.5, 1000, 500); got != 2 {
		t.Fatalf("slow goroutines with every P: %d Ps, want 2", got)
	}
}

func TestPacerScalesDownAfterAQuietSpell(t *testing.T) {
	f := newFeed(NewPacer(Config{Max: 2}, 2))
	for i := range 19 {
		if got := f.tick(0.44, 0, 0); got != 2 {
			t.Fatalf("quiet tick %d: %d Ps, want 2 until 20 in a row", i+1, got)
		}
	}
	// A busy tick starts the count again.
	if got := f.tick(0.5, 0, 0); got != 2 {
		t.Fatalf("busy tick: %d Ps", got)
	}
	for i := range 19 {
		if got := f.tick(0.2, 0, 0); got != 2 {
			t.Fatalf("quiet tick %d after the busy one: %d Ps, want 2", i+1, got)
		}
	}
	if got := f.tick(0.2, 0, 0); got != 1 {
		t.Fatalf("20th quiet tick: %d Ps, want 1", got)
	}
	// Back on one P, goroutines waiting for it bring every P back.
	if got := f.tick(0.2, 10, 10); got != 2 {
		t.Fatalf("slow goroutines with one P: %d Ps, want 2", got)
	}
}

func TestPacerIgnoresCountersGoingBack(t *testing.T) {
	p := NewPacer(Config{Max: 2}, 1)
	p.Step(Sample{At: time.Second, CPU: 10 * time.Second, Runnable: 100, Slow: 50})
	// A clock or counter that went back (a restarted reading) is no load.
	if got := p.Step(Sample{At: 2 * time.Second, CPU: time.Second, Runnable: 200, Slow: 150}); got != 1 {
		t.Fatalf("CPU time going back: %d Ps, want 1", got)
	}
	if got := p.Step(Sample{At: 3 * time.Second, CPU: time.Second, Runnable: 10, Slow: 10}); got != 1 {
		t.Fatalf("scheduling counts going back: %d Ps, want 1", got)
	}
	if got := p.Step(Sample{At: 3 * time.Second, CPU: 2 * time.Second}); got != 1 {
		t.Fatalf("no time passed: %d Ps, want 1", got)
	}
}

func TestCountAbove(t *testing.T) {
	h := &metrics.Float64Histogram{
		Counts:  []uint64{5, 7, 11, 13},
		Buckets: []float64{0, 1e-4, 1e-3, 1e-2, 1e-1},
	}
	total, above := countAbove(h, 1e-3)
	if total != 36 || above != 24 {
		t.Fatalf("countAbove(1 ms) = %d, %d; want 36, 24", total, above)
	}
}

// TestStartPacesTheProcess runs the real loop: one P at start, every P
// under a load of more than a core, the runtime's default after the
// context ends (also when it ends on one P).
func TestStartPacesTheProcess(t *testing.T) {
	runtime.SetDefaultGOMAXPROCS()
	def := runtime.GOMAXPROCS(0)
	if def < 2 {
		t.Skip("one P by default here (cores, CPU limit or GOMAXPROCS): nothing to pace")
	}
	defer runtime.SetDefaultGOMAXPROCS()

	// Ended while on one P: the default comes back.
	ctx, cancel := context.WithCancel(context.Background())
	var first [2]int
	var firstSet atomic.Bool
	wait := Start(ctx, Config{Interval: time.Hour, OnChange: func(from, to int) {
		if firstSet.CompareAndSwap(false, true) {
			first = [2]int{from, to}
		}
	}})
	if first != [2]int{def, 1} {
		t.Fatalf("Start's first change: %v, want %d to 1", first, def)
	}
	cancel()
	wait()
	if got := runtime.GOMAXPROCS(0); got != def {
		t.Fatalf("GOMAXPROCS after a Start ended on one P: %d, want the default %d", got, def)
	}

	var changes atomic.Int32
	ctx, cancel = context.WithCancel(context.Background())
	// Up at 0.3 of a core: with other test binaries on the machine the
	// two spinning goroutines may get half a core between them.
	wait = Start(ctx, Config{Interval: 20 * time.Millisecond, Up: 0.3, OnChange: func(from, to int) { changes.Add(1) }})
	defer func() { cancel(); wait() }()
	// Two goroutines that spin until every P is back (bounded: 10 s).
	stop := make(chan struct{})
	var stopOnce sync.Once
	stopSpin := func() { stopOnce.Do(func() { close(stop) }) }
	defer stopSpin()
	deadline := time.Now().Add(10 * time.Second)
	for range 2 {
		go func() {
			for time.Now().Before(deadline) {
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("every P (%d) back under two spinning goroutines", def),
		func() bool { return runtime.GOMAXPROCS(0) == def })
	stopSpin()
	cancel()
	wait()
	if got := runtime.GOMAXPROCS(0); got != def {
		t.Fatalf("GOMAXPROCS after the context ended: %d, want the default %d", got, def)
	}
	if changes.Load() < 2 {
		t.Fatalf("OnChange called %d times, want at least 2 (to 1, back to every P)", changes.Load())
	}
}
