// Package memtrim gives the heap a process freed back to the OS once the
// process goes idle after a load.
//
// The Go runtime keeps memory it freed for reuse up to about the heap goal
// of its last collection (twice the live heap then), and an idle agent
// allocates too little to start another collection before the forced one
// every two minutes: after a bulk transfer through the mesh the agent sat at
// 25-90 MB of RSS for an idle live heap of a few MB. GOMEMLIMIT would bound
// that, but it makes a busy agent whose live heap is above the limit collect
// back to back. memtrim instead watches the runtime's own counters and the
// process's CPU time and, once allocation and CPU have stayed low for a few
// ticks while the heap holds much more than it needs at rest, collects and
// returns the free memory (debug.FreeOSMemory). It reads the counters four
// times a second and trims after one idle second: a reading taken a few
// seconds after a load meets the trimmed heap, not the load's.
// Under load it does nothing; at rest it runs about once per load.
package memtrim

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Config tunes a Trimmer. The zero value works.
type Config struct {
	// Interval is how often the runtime's counters are read (default
	// 250 ms).
	Interval time.Duration
	// IdleTicks is how many ticks in a row must allocate less than
	// IdleAlloc before the process counts as idle (default 4: one second
	// at the default Interval).
	IdleTicks int
	// IdleAlloc is the most bytes a tick may allocate and still count as
	// idle (default 1 MiB a second: 256 KiB a tick at the default
	// Interval): an idle agent's keepalives, health checks and metrics
	// allocate far less; a loaded one far more.
	IdleAlloc uint64
	// IdleCPU is the most CPU time (user and system) the process may use
	// in a tick and still count as idle (default Interval/20: 5 % of a
	// core). Relays that splice or reuse pooled buffers allocate almost
	// nothing while they move gigabytes; their CPU shows the load.
	IdleCPU time.Duration
	// Release, if not nil, runs before each trim's collections: caches
	// outside the runtime drop what idle users hold (the mesh streams'
	// receive buffers, transport.ShrinkIdleStreams).
	Release func()
	// Settled, if not nil, runs once, the first time the process counts
	// as idle (IdleTicks quiet ticks in a row): its start-up is over. The
	// agent unmaps the code pages start-up used then (ReleaseCode).
	Settled func()
	// Headroom, if not 0, paces the GC under load (pace.go): while a tick
	// counts as loaded, the GC percent is raised so that the heap may grow
	// Headroom bytes above the live heap between collections (never below
	// the percent at the start, at most 800); the first idle tick puts the
	// start's percent back, and so does the end of Start's run. A percent
	// set by others meanwhile (debug.SetGCPercent) is left, and the pace
	// stops. HeadroomFromEnv gives the agent's.
	Headroom uint64
	// OnPace, if not nil, is told each change of the GC percent the pace
	// makes.
	OnPace func(from, to int)
	// Slack is how many bytes the heap may hold above the least it held
	// after a trim before an idle process returns them (default 2 MiB):
	// below it a collection costs more than the memory is worth.
	Slack uint64
}

// DefaultInterval is Config.Interval's default.
const DefaultInterval = 250 * time.Millisecond

func (c Config) withDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.IdleTicks <= 0 {
		c.IdleTicks = 4
	}
	if c.IdleAlloc == 0 {
		c.IdleAlloc = max(uint64(c.Interval.Seconds()*(1<<20)), 1)
	}
	if c.IdleCPU <= 0 {
		c.IdleCPU = c.Interval / 20
	}
	if c.Slack == 0 {
		c.Slack = 2 << 20
	}
	return c
}

// Sample is what one tick reads from the runtime.
type Sample struct {
	// Allocs is the bytes allocated since the process started.
	Allocs uint64
	// CPU is the process's CPU time (user and system) so far; 0 where
	// the system does not say (then allocation alone tells load).
	CPU time.Duration
	// Held is the heap memory the runtime holds from the OS: objects live
	// or dead, unused parts of spans, free spans not yet released, and
	// goroutine stacks.
	Held uint64
	// Goroutines is the number of live goroutines: in an agent, about two
	// per open connection.
	Goroutines uint64
	// Live is the heap the last collection found live (0 where the
	// runtime does not say).
	Live uint64
	// Roots is the goroutine stacks and globals the last collection
	// scanned: the runtime grows its heap goal by the GC percent of these
	// too.
	Roots uint64
}

// Trimmer decides, tick by tick, when to trim. It does no I/O: Start feeds
// it samples and trims when Step says so; tests drive it with samples.
type Trimmer struct {
	cfg     Config
	last    Sample
	seen    bool   // last is set
	quiet   int    // idle ticks in a row
	floor   uint64 // the least Held seen after a trim (or at the first sample)
	backoff int    // IdleTicks multiplier: doubles while trims give little back
	gAtTrim uint64 // Goroutines after the last trim
	settled bool   // the process has counted as idle once
	busy    bool   // the last tick counted as load
	pace    *pace  // the GC's pace under load; nil: left alone
}

// maxBackoff caps the backoff: an idle process whose live heap stays high
// (connections held open) is still trimmed every 64 IdleTicks (64 s at the
// defaults).
const maxBackoff = 64

// NewTrimmer returns a Trimmer with cfg's values (defaults for zeros).
func NewTrimmer(cfg Config) *Trimmer {
	return &Trimmer{cfg: cfg.withDefaults(), backoff: 1}
}

// Step takes one tick's sample and reports whether to trim now. It says so
// once the process has been idle (under IdleAlloc and IdleCPU a tick) for
// IdleTicks ticks while holding more than Slack bytes above the floor: the
// least it held right after a trim (or at the first sample). The caller trims and then reports what is held
// after it (Trimmed). The live heap the runtime reports is no guide here:
// it is as of the last collection, which may have been at the peak of the
// load.
func (t *Trimmer) Step(s Sample) bool {
	prev, seen := t.last, t.seen
	t.last, t.seen = s, true
	if !seen {
		t.floor = s.Held
		return false
	}
	t.busy = s.Allocs-prev.Allocs >= t.cfg.IdleAlloc || s.Allocs < prev.Allocs || s.CPU-prev.CPU >= t.cfg.IdleCPU
	if t.busy {
		t.quiet, t.backoff = 0, 1 // load: the next idle spell is new
		return false
	}
	if t.backoff > 1 && moved(s.Goroutines, t.gAtTrim) {
		// Connections that held the heap live closed (or many opened)
		// with little allocation: what the last trim met is gone.
		t.backoff = 1
	}
	t.quiet++
	if t.quiet >= t.cfg.IdleTicks {
		t.settled = true
	}
	if t.quiet < t.cfg.IdleTicks*t.backoff || s.Held <= t.floor+t.cfg.Slack {
		return false
	}
	t.quiet = 0
	return true
}

// setPercent sets the GC percent the pace asks for and tells OnPace. Where
// the percent was no longer prev, the one the pace set last (a test or the
// program set its own since), it puts that one back and paces no more.
func (t *Trimmer) setPercent(prev, pct int) {
	from := debug.SetGCPercent(pct)
	if from != prev {
		debug.SetGCPercent(from)
		t.pace = nil
		return
	}
	if from != pct && t.cfg.OnPace != nil {
		t.cfg.OnPace(from, pct)
	}
}

// Settled reports whether the process has counted as idle (IdleTicks quiet
// ticks in a row) at least once since the Trimmer started.
func (t *Trimmer) Settled() bool { return t.settled }

// Trimmed takes the sample read right after a trim. A trim that got the
// heap back near the floor keeps the idle wait at IdleTicks; one that could
// not (the heap is live: connections held open) doubles the wait before the
// next, up to maxBackoff times, so an idle process with a large live heap
// is not collected over and over.
func (t *Trimmer) Trimmed(s Sample) {
	t.last, t.seen, t.quiet, t.gAtTrim = s, true, 0, s.Goroutines
	t.floor = min(t.floor, s.Held)
	if s.Held > t.floor+t.cfg.Slack {
		t.backoff = min(2*t.backoff, maxBackoff)
	} else {
		t.backoff = 1
	}
}

// moved reports whether the goroutine count changed by more than an
// eighth (and at least 16) from then to now.
func moved(now, then uint64) bool {
	d := max(now, then) - min(now, then)
	return d >= 16 && d > max(now, then)/8
}

// The runtime/metrics names Read uses.
const (
	mAllocs  = "/gc/heap/allocs:bytes"
	mObjects = "/memory/classes/heap/objects:bytes"
	mUnused  = "/memory/classes/heap/unused:bytes"
	mFree    = "/memory/classes/heap/free:bytes"
	mStacks  = "/memory/classes/heap/stacks:bytes"
	mGorout  = "/sched/goroutines:goroutines"
	mLive    = "/gc/heap/live:bytes"
	mStackSc = "/gc/scan/stack:bytes"
	mGlobSc  = "/gc/scan/globals:bytes"
)

// Read samples the runtime's counters.
func Read() Sample {
	ms := []metrics.Sample{{Name: mAllocs}, {Name: mObjects}, {Name: mUnused}, {Name: mFree}, {Name: mStacks}, {Name: mGorout}, {Name: mLive}, {Name: mStackSc}, {Name: mGlobSc}}
	metrics.Read(ms)
	v := func(i int) uint64 {
		if ms[i].Value.Kind() != metrics.KindUint64 {
			return 0 // not in this runtime: counts as nothing
		}
		return ms[i].Value.Uint64()
	}
	return Sample{Allocs: v(0), Held: v(1) + v(2) + v(3) + v(4), Goroutines: v(5), Live: v(6), Roots: v(7) + v(8), CPU: ProcessCPU()}
}

// Trim collects twice and returns the freed memory to the OS: the first
// collection moves sync.Pool contents (the relays' large copy buffers) to
// the pools' victim caches, the second (inside debug.FreeOSMemory) frees
// them, then everything free is released.
func Trim() {
	runtime.GC()
	debug.FreeOSMemory()
}

// Start takes the first sample (the floor: what the process holds now)
// and then, in a goroutine, samples the runtime every cfg.Interval and
// trims when the process has gone idle with memory to give back, until ctx
// is done. wait waits for that goroutine to end and returns the number of
// trims.
func Start(ctx context.Context, cfg Config) (wait func() int) {
	t := NewTrimmer(cfg)
	t.pace = newPace(t.cfg.Headroom)
	t.Step(Read())
	done := make(chan int, 1)
	go func() { done <- t.run(ctx, Read) }()
	return func() int {
		n := <-done
		done <- n
		return n
	}
}

// run is Start's goroutine; read samples the process (Read).
func (t *Trimmer) run(ctx context.Context, read func() Sample) int {
	tick := time.NewTicker(t.cfg.Interval)
	defer tick.Stop()
	trims := 0
	settled := t.cfg.Settled
	defer func() {
		if t.pace != nil && t.pace.cur != t.pace.base {
			t.setPercent(t.pace.cur, t.pace.base)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return trims
		case <-tick.C:
		}
		s := read()
		trim := t.Step(s)
		if t.pace != nil {
			prev := t.pace.cur
			if pct := t.pace.next(t.busy, s.Live, s.Roots); pct >= 0 {
				t.setPercent(prev, pct)
			}
		}
		if settled != nil && t.Settled() {
			settled()
			settled = nil
		}
		if trim {
			if t.cfg.Release != nil {
				t.cfg.Release()
			}
			Trim()
			trims++
			t.Trimmed(read())
		}
	}
}
