package memtrim

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fogmesh/fogmesh/internal/testenv"
)

const mib = 1 << 20

// steps feeds samples to a fresh Trimmer and returns its answers.
func steps(cfg Config, ss ...Sample) []bool {
	t := NewTrimmer(cfg)
	out := make([]bool, len(ss))
	for i, s := range ss {
		out[i] = t.Step(s)
	}
	return out
}

func TestTrimmerTrimsOnceIdleWithSlack(t *testing.T) {
	cfg := Config{IdleTicks: 3, IdleAlloc: mib, Slack: 4 * mib}
	tr := NewTrimmer(cfg)
	// Start at 10 MiB held, load (100 MiB a tick) grows it to 70 MiB, then
	// three quiet ticks: trim on the third quiet tick, not before.
	seq := []struct {
		s    Sample
		want bool
	}{
		{Sample{Allocs: 0, Held: 10 * mib}, false},
		{Sample{Allocs: 100 * mib, Held: 70 * mib}, false},
		{Sample{Allocs: 100*mib + 1000, Held: 70 * mib}, false},
		{Sample{Allocs: 100*mib + 2000, Held: 70 * mib}, false},
		{Sample{Allocs: 100*mib + 3000, Held: 70 * mib}, true},
	}
	for i, st := range seq {
		if got := tr.Step(st.s); got != st.want {
			t.Fatalf("tick %d: trim %v, want %v", i, got, st.want)
		}
	}
	// The trim left 12 MiB; the floor stays the least seen, 10 MiB. Quiet
	// ticks at up to 14 MiB are left alone; 14 MiB and a byte is trimmed
	// again, after IdleTicks quiet ticks.
	tr.Trimmed(Sample{Allocs: 100*mib + 4000, Held: 12 * mib})
	for i := range 10 {
		if tr.Step(Sample{Allocs: 100*mib + 5000 + uint64(i), Held: 14 * mib}) {
			t.Fatalf("quiet tick %d after the trim: trimmed at the floor plus the slack, the bound itself", i)
		}
	}
	if !tr.Step(Sample{Allocs: 100*mib + 6000, Held: 14*mib + 1}) {
		t.Fatal("no trim one byte over the floor plus the slack")
	}
}

// TestTrimmerBacksOffWhileHeapIsLive: trims that cannot bring the heap down
// (it is live) double the idle wait, up to 64 times IdleTicks; load resets
// it.
func TestTrimmerBacksOffWhileHeapIsLive(t *testing.T) {
	tr := NewTrimmer(Config{IdleTicks: 2, IdleAlloc: mib, Slack: 4 * mib})
	tr.Step(Sample{Held: 10 * mib})
	var allocs uint64
	quietUntilTrim := func() int {
		for i := 1; i <= 1000; i++ {
			allocs++
			if tr.Step(Sample{Allocs: allocs, Held: 50 * mib}) {
				tr.Trimmed(Sample{Allocs: allocs, Held: 40 * mib}) // live: the trim gives little back
				return i
			}
		}
		t.Fatal("no trim in 1000 quiet ticks")
		return 0
	}
	var got []int
	for range 9 {
		got = append(got, quietUntilTrim())
	}
	want := []int{2, 4, 8, 16, 32, 64, 128, 128, 128}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("quiet ticks before each trim: %v, want %v", got, want)
		}
	}
	allocs += 10 * mib
	tr.Step(Sample{Allocs: allocs, Held: 60 * mib}) // load
	if n := quietUntilTrim(); n != 2 {
		t.Fatalf("after load, a trim after %d quiet ticks, want 2", n)
	}
}

// TestTrimmerBackoffEndsWhenConnectionsClose: 1,000 idle connections (2,000
// goroutines) keep the heap live and the trims backing off; when they
// close, with little allocation, the next trim comes after IdleTicks again.
func TestTrimmerBackoffEndsWhenConnectionsClose(t *testing.T) {
	tr := NewTrimmer(Config{IdleTicks: 2, IdleAlloc: mib, Slack: 2 * mib})
	tr.Step(Sample{Held: 10 * mib, Goroutines: 40})
	var allocs uint64
	step := func(held, g uint64) bool {
		allocs++
		return tr.Step(Sample{Allocs: allocs, Held: held, Goroutines: g})
	}
	for trims := 0; trims < 5; {
		if step(45*mib, 2040) {
			tr.Trimmed(Sample{Allocs: allocs, Held: 40 * mib, Goroutines: 2040})
			trims++
		}
	}
	// The wait is now 64 ticks; the connections close.
	if step(40*mib, 40) {
		t.Fatal("trimmed on the first tick after the connections closed, want IdleTicks (2)")
	}
	if !step(40*mib, 40) {
		t.Fatal("no trim 2 quiet ticks after 2,000 goroutines ended")
	}
	// A few goroutines more or less are no change.
	tr.Trimmed(Sample{Allocs: allocs, Held: 30 * mib, Goroutines: 40})
	tr.Trimmed(Sample{Allocs: allocs, Held: 30 * mib, Goroutines: 40}) // backoff 4
	for i := range 7 {
		if step(30*mib, 50) {
			t.Fatalf("tick %d: trimmed during the backoff when 10 goroutines came", i)
		}
	}
	if !step(30*mib, 50) {
		t.Fatal("no trim after the backoff's 8 ticks")
	}
}

func TestTrimmerLeavesBusyProcessAlone(t *testing.T) {
	cfg := Config{IdleTicks: 2, IdleAlloc: mib, Slack: 4 * mib}
	tr := NewTrimmer(cfg)
	tr.Step(Sample{Held: 10 * mib})
	var allocs uint64
	for i := range 50 {
		allocs += 2 * mib // above IdleAlloc every tick
		if tr.Step(Sample{Allocs: allocs, Held: 200 * mib}) {
			t.Fatalf("tick %d: trimmed a process allocating 2 MiB a tick", i)
		}
	}
	// One busy tick among quiet ones starts the count again.
	if tr.Step(Sample{Allocs: allocs, Held: 200 * mib}) {
		t.Fatal("trimmed after one quiet tick, want two")
	}
	allocs += 5 * mib
	if tr.Step(Sample{Allocs: allocs, Held: 200 * mib}) {
		t.Fatal("trimmed on a busy tick")
	}
	if tr.Step(Sample{Allocs: allocs, Held: 200 * mib}) {
		t.Fatal("trimmed one quiet tick after a busy one, want two")
	}
	if !tr.Step(Sample{Allocs: allocs, Held: 200 * mib}) {
		t.Fatal("no trim after two quiet ticks holding 190 MiB over the floor")
	}
}

// TestTrimmerBusyCPUIsNotIdle: a process that allocates nothing but burns
// CPU (relays that splice or reuse pooled buffers) is under load: no trim,
// however much the heap holds; once its CPU drops, the idle count starts.
func TestTrimmerBusyCPUIsNotIdle(t *testing.T) {
	tr := NewTrimmer(Config{Interval: time.Second, IdleTicks: 2, IdleAlloc: mib, Slack: 2 * mib})
	tr.Step(Sample{Held: 10 * mib})
	var cpu time.Duration
	for i := range 20 {
		cpu += 300 * time.Millisecond // 30 % of a core, no allocation
		if tr.Step(Sample{Held: 40 * mib, CPU: cpu}) {
			t.Fatalf("tick %d: trimmed a process using 30 %% of a core", i)
		}
	}
	cpu += 49 * time.Millisecond // under the default, 5 % of the interval
	if tr.Step(Sample{Held: 40 * mib, CPU: cpu}) {
		t.Fatal("trimmed after one quiet tick, want two")
	}
	cpu += 10 * time.Millisecond
	if !tr.Step(Sample{Held: 40 * mib, CPU: cpu}) {
		t.Fatal("no trim after two quiet ticks")
	}
}

func TestTrimmerCounterWrapIsNotIdle(t *testing.T) {
	// A sample whose counter went backwards (a new runtime, a bad read)
	// is no evidence of idleness.
	got := steps(Config{IdleTicks: 1},
		Sample{Allocs: 100 * mib, Held: 10 * mib},
		Sample{Allocs: 10, Held: 90 * mib},
		Sample{Allocs: 20, Held: 90 * mib},
	)
	if got[1] || !got[2] {
		t.Fatalf("got %v, want [false false true]", got)
	}
}

func TestReadSeesTheHeap(t *testing.T) {
	Trim() // free memory an earlier test left would take the allocations below
	// No collection while it allocates: one would free what an earlier
	// test left and the heap would grow by less than it allocated.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	before := Read()
	keep := make([][]byte, 0, 64)
	for range 64 {
		keep = append(keep, make([]byte, mib))
	}
	after := Read()
	if after.Allocs-before.Allocs < 64*mib {
		t.Errorf("allocations grew by %d bytes, want at least 64 MiB", after.Allocs-before.Allocs)
	}
	// 58 of the 64: pages the runtime kept free (its per-P page caches,
	// what the test binary's other goroutines freed meanwhile) count as
	// held before and take some of the allocations (up to 2.5 MiB seen).
	if after.Held < before.Held+58*mib {
		t.Errorf("held heap %d -> %d bytes, want 64 MiB more (%+v -> %+v)", before.Held, after.Held, before, after)
	}
	runtime.KeepAlive(keep)
}

// garbage is a sink the compiler cannot see through, so the allocations
// below are real heap garbage.
var garbage [][]byte

// TestRunReturnsFreedHeap: a burst of allocation leaves the heap holding
// ~64 MiB it no longer uses; once allocation stops, Start's goroutine gives it back
// (held heap near the live heap again) within a few ticks.
func TestRunReturnsFreedHeap(t *testing.T) {
	Trim() // what earlier tests left
	base := Read()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var released atomic.Int32
	wait := Start(ctx, Config{Interval: 20 * time.Millisecond, IdleTicks: 3, Release: func() { released.Add(1) }})
	for range 64 {
		garbage = append(garbage, make([]byte, mib))
	}
	runtime.GC() // the burst is live for one collection: the heap goal grows
	garbage = nil
	if h := Read().Held; h < base.Held+48*mib {
		t.Fatalf("held heap %d MiB after the burst, want 48 MiB above the %d MiB before", h/mib, base.Held/mib)
	}
	bound := base.Held + 8*mib
	deadline := time.Now().Add(10 * time.Second)
	var s Sample
	for s = Read(); s.Held > bound && time.Now().Before(deadline); s = Read() {
		time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
	}
	cancel()
	trims := wait()
	if s.Held > bound {
		t.Fatalf("held heap %d MiB after 10 s idle, want at most %d MiB (%d trims)", s.Held/mib, bound/mib, trims)
	}
	if trims == 0 {
		t.Fatal("heap returned without a trim: the test shows nothing")
	}
	if n := released.Load(); n != int32(trims) {
		t.Fatalf("Release ran %d times for %d trims, want once per trim", n, trims)
	}
}

// TestTrimmerDefaultsTrimOneSecondAfterLoad: the zero Config reads every
// 250 ms and trims on the fourth quiet tick (one second after the load),
// not before; a process allocating 1.2 MiB a second or using 6 % of a core
// is under load and never trimmed.
func TestTrimmerDefaultsTrimOneSecondAfterLoad(t *testing.T) {
	if d := (Config{}).withDefaults(); d.Interval != 250*time.Millisecond || d.IdleTicks != 4 ||
		d.IdleAlloc != 256<<10 || d.IdleCPU != 12500*time.Microsecond {
		t.Fatalf("defaults %+v, want 250 ms, 4 ticks, 256 KiB and 12.5 ms a tick", d)
	}
	tr := NewTrimmer(Config{})
	tr.Step(Sample{Held: 10 * mib})
	var allocs uint64
	var cpu time.Duration
	for i := range 40 { // ten seconds of load
		allocs += 10 * mib
		cpu += 100 * time.Millisecond
		if tr.Step(Sample{Allocs: allocs, CPU: cpu, Held: 40 * mib}) {
			t.Fatalf("tick %d: trimmed under load", i)
		}
	}
	for i := range 3 {
		allocs += 10 << 10
		cpu += time.Millisecond
		if tr.Step(Sample{Allocs: allocs, CPU: cpu, Held: 40 * mib}) {
			t.Fatalf("quiet tick %d: trimmed before one idle second", i+1)
		}
	}
	if !tr.Step(Sample{Allocs: allocs, CPU: cpu, Held: 40 * mib}) {
		t.Fatal("no trim on the fourth quiet tick")
	}
	tr.Trimmed(Sample{Allocs: allocs, CPU: cpu, Held: 10 * mib})

	// Light load: 300 KiB a tick (1.2 MiB/s) with no CPU, then 13 ms of
	// CPU a tick with no allocation.
	for i := range 40 {
		allocs += 300 << 10
		if tr.Step(Sample{Allocs: allocs, CPU: cpu, Held: 40 * mib}) {
			t.Fatalf("tick %d: trimmed a process allocating 1.2 MiB a second", i)
		}
	}
	for i := range 40 {
		cpu += 13 * time.Millisecond
		if tr.Step(Sample{Allocs: allocs, CPU: cpu, Held: 40 * mib}) {
			t.Fatalf("tick %d: trimmed a process using 5.2 %% of a core", i)
		}
	}
}

// TestTrimmerSettlesAtTheFirstIdleSpell: Settled turns true at the first
// IdleTicks quiet ticks in a row, whatever the heap holds, and stays true
// through later load; a load tick before that starts the count again.
func TestTrimmerSettlesAtTheFirstIdleSpell(t *testing.T) {
	tr := NewTrimmer(Config{IdleTicks: 3, IdleAlloc: mib})
	seq := []struct {
		allocs uint64
		want   bool
	}{
		{0, false},              // first sample
		{1000, false},           // quiet 1
		{2000, false},           // quiet 2
		{100 * mib, false},      // load: start again
		{100*mib + 1, false},    // quiet 1
		{100*mib + 2, false},    // quiet 2
		{100*mib + 3, true},     // quiet 3: settled
		{300 * mib, true},       // load: still settled
		{300*mib + 1000, true},  // quiet
		{900 * mib, true},       // load
		{900*mib + 1000, true},  // quiet
		{1900 * mib, true},      // load
		{1900*mib + 1000, true}, // quiet
	}
	for i, st := range seq {
		tr.Step(Sample{Allocs: st.allocs, Held: 10 * mib})
		if got := tr.Settled(); got != st.want {
			t.Fatalf("tick %d: settled %v, want %v", i, got, st.want)
		}
	}
}

// TestRunCallsSettledOnce: the trimming goroutine runs Config.Settled
// once, when the process first counts as idle, and never again however
// many quiet ticks follow.
func TestRunCallsSettledOnce(t *testing.T) {
	var calls, reads, readsAtSettle atomic.Int64
	tr := NewTrimmer(Config{
		Interval: time.Millisecond, IdleTicks: 2,
		Settled: func() { calls.Add(1); readsAtSettle.Store(reads.Load()) },
	})
	// Quiet samples: the same counters every tick.
	read := func() Sample { reads.Add(1); return Sample{Allocs: 1, Held: mib} }
	ctx, cancel := context.WithCancel(context.Background())
	tr.Step(read()) // as Start does: the floor
	done := make(chan int)
	go func() { done <- tr.run(ctx, read) }()
	testenv.WaitFor(t, 10*time.Second, "Settled, then 50 more ticks", func() bool {
		return calls.Load() > 0 && reads.Load() >= readsAtSettle.Load()+50
	})
	cancel()
	<-done
	if n, r := calls.Load(), reads.Load()-readsAtSettle.Load(); n != 1 || r < 50 {
		t.Fatalf("Settled ran %d times (want 1), %d ticks after it (want 50 or more)", n, r)
	}
	if at := readsAtSettle.Load(); at != 3 {
		t.Fatalf("Settled ran after %d samples, want 3 (the floor, then IdleTicks quiet ticks)", at)
	}
}
