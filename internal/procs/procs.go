// Package procs paces the Go scheduler's processors (GOMAXPROCS) to the
// process's load: one while the process uses well under a core, all of
// them as soon as it needs more.
//
// With more than one P, a goroutine made runnable (a read loop handing a
// request to its handler, a response waking the handler) finds an idle P
// and wakes a second thread to run it: a futex wake, a thread that spins
// for work it rarely finds, and a futex sleep again. On the 2-core bench
// machine one P saved the agent 15 to 30 % of its CPU per h2c request and
// gRPC call (BENCHMARKS.md, sessions 10 and 11). It costs latency: with
// one P a goroutine made runnable waits for the one thread, and an
// HTTP/1.1 request at 2,000 req/s took 0.06 to 0.12 ms more at p50. So the
// agent paces only when asked (FOGMESH_PROCS=auto), for boards where the
// CPU it leaves to the workloads counts more.
//
// The decision core (Pacer) does no I/O: Start feeds it samples of the
// process's CPU time and of the scheduler's latency histogram; tests
// drive it with samples.
package procs

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"time"

	"github.com/fogmesh/fogmesh/internal/memtrim"
)

// Config tunes the Pacer; zero values take the defaults.
type Config struct {
	// Max is the most Ps (default: GOMAXPROCS when Start is called: the
	// core count, or the container's CPU limit). It is read once: a CPU
	// limit changed while the process is paced is not followed (the
	// runtime's own updates stop at the first GOMAXPROCS call, and come
	// back when Start ends).
	Max int
	// Interval between samples (100 ms).
	Interval time.Duration
	// Up: with one P, a tick whose CPU use reaches Up cores (0.7) gives
	// back every P. One P cannot use much more than a core, so CPU near
	// one core is a P that is never idle: requests queue behind each
	// other.
	Up float64
	// SlowRun, SlowShare and SlowMin: with one P, a tick in which more
	// than SlowShare (1 %) of the goroutines that became runnable, and at
	// least SlowMin (4) of them, waited SlowRun (1 ms) or more for a P
	// gives back every P too (a burst, or long-running work, delays the
	// rest before the CPU use shows it). The runtime samples one
	// transition in eight: a quiet process records a few a tick, and one
	// delay by the OS alone is no reason for more Ps.
	SlowRun   time.Duration
	SlowShare float64
	SlowMin   uint64
	// Down: with more than one P, DownTicks ticks in a row (20: two
	// seconds) under Down cores (0.45) go back to one P. The hysteresis
	// against Up is wide: the same load costs about a fifth more CPU with
	// more Ps.
	Down      float64
	DownTicks int
	// OnChange, if set, is called after each change (from Start's
	// goroutine).
	OnChange func(from, to int)
}

func (c Config) withDefaults() Config {
	if c.Max <= 0 {
		c.Max = runtime.GOMAXPROCS(0)
	}
	if c.Interval <= 0 {
		c.Interval = 100 * time.Millisecond
	}
	if c.Up <= 0 {
		c.Up = 0.7
	}
	if c.SlowRun <= 0 {
		c.SlowRun = time.Millisecond
	}
	if c.SlowShare <= 0 {
		c.SlowShare = 0.01
	}
	if c.SlowMin == 0 {
		c.SlowMin = 4
	}
	if c.Down <= 0 {
		c.Down = 0.45
	}
	if c.DownTicks <= 0 {
		c.DownTicks = 20
	}
	return c
}

// Sample is one tick's reading of the process.
type Sample struct {
	// At is when it was read (any monotonic origin).
	At time.Duration
	// CPU is the process's user and system CPU time so far.
	CPU time.Duration
	// Runnable is how many goroutine scheduling latencies the runtime
	// has sampled so far; Slow how many of them were at least SlowRun.
	Runnable, Slow uint64
}

// Pacer decides, tick by tick, how many Ps the process should have.
type Pacer struct {
	cfg   Config
	procs int // what it last decided
	last  Sample
	seen  bool
	quiet int // ticks in a row under Down
}

// NewPacer returns a Pacer for a process that has procs Ps now.
func NewPacer(cfg Config, procs int) *Pacer {
	return &Pacer{cfg: cfg.withDefaults(), procs: procs}
}

// Procs is the Ps the Pacer last decided on.
func (p *Pacer) Procs() int { return p.procs }

// Step takes a sample and returns the Ps the process should have now.
func (p *Pacer) Step(s Sample) int {
	prev, seen := p.last, p.seen
	p.last, p.seen = s, true
	if !seen || s.At <= prev.At || s.CPU < prev.CPU {
		return p.procs
	}
	cores := float64(s.CPU-prev.CPU) / float64(s.At-prev.At)
	if p.procs == 1 {
		runnable, slow := s.Runnable-prev.Runnable, s.Slow-prev.Slow
		if s.Runnable < prev.Runnable || s.Slow < prev.Slow {
			runnable, slow = 0, 0
		}
		if cores >= p.cfg.Up || slow >= p.cfg.SlowMin && float64(slow) > p.cfg.SlowShare*float64(runnable) {
			p.procs, p.quiet = p.cfg.Max, 0
		}
		return p.procs
	}
	if cores < p.cfg.Down {
		p.quiet++
	} else {
		p.quiet = 0
	}
	if p.quiet >= p.cfg.DownTicks {
		p.procs, p.quiet = 1, 0
	}
	return p.procs
}

// Wanted reports whether the process asked to be paced
// (FOGMESH_PROCS=auto) and can be; if not, why. GOMAXPROCS set in the
// environment wins (the operator's number stands), and a process with one
// P to begin with or without a CPU clock is not paced.
func Wanted() (bool, string) {
	switch v := os.Getenv("FOGMESH_PROCS"); {
	case v == "" || v == "fixed":
		return false, "FOGMESH_PROCS is not auto"
	case v != "auto":
		return false, fmt.Sprintf("FOGMESH_PROCS=%q is neither auto nor fixed", v)
	case os.Getenv("GOMAXPROCS") != "":
		return false, "GOMAXPROCS is set"
	case runtime.GOMAXPROCS(0) < 2:
		return false, "one P to begin with"
	case memtrim.ProcessCPU() == 0:
		return false, "the process's CPU time is not known here"
	}
	return true, ""
}

// Start paces GOMAXPROCS until ctx ends, then gives it back to the
// runtime (its default, and its updates when the CPU limit changes); wait
// returns after that. It starts at one P. Call it only if Wanted says so
// (the runtime's default it gives back ignores GOMAXPROCS in the
// environment, which Wanted refuses).
func Start(ctx context.Context, cfg Config) (wait func()) {
	cfg = cfg.withDefaults()
	r := newReader(cfg.SlowRun)
	p := NewPacer(cfg, 1)
	orig := runtime.GOMAXPROCS(1)
	if cfg.OnChange != nil {
		cfg.OnChange(orig, 1)
	}
	p.Step(r.read())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(cfg.Interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				runtime.SetDefaultGOMAXPROCS()
				return
			case <-tick.C:
			}
			from := p.Procs()
			if to := p.Step(r.read()); to != from {
				runtime.GOMAXPROCS(to)
				if cfg.OnChange != nil {
					cfg.OnChange(from, to)
				}
			}
		}
	}()
	return func() { <-done }
}

// reader samples the process: its CPU time (getrusage) and the runtime's
// scheduling latency histogram.
type reader struct {
	start time.Time
	ms    []metrics.Sample
	slow  float64 // seconds
}

const mSchedLatencies = "/sched/latencies:seconds"

func newReader(slow time.Duration) *reader {
	return &reader{start: time.Now(), ms: []metrics.Sample{{Name: mSchedLatencies}}, slow: slow.Seconds()}
}

func (r *reader) read() Sample {
	s := Sample{At: time.Since(r.start), CPU: memtrim.ProcessCPU()}
	metrics.Read(r.ms)
	if r.ms[0].Value.Kind() == metrics.KindFloat64Histogram {
		s.Runnable, s.Slow = countAbove(r.ms[0].Value.Float64Histogram(), r.slow)
	}
	return s
}

// countAbove returns a histogram's total count and the count of its
// buckets that lie wholly at or above min.
func countAbove(h *metrics.Float64Histogram, min float64) (total, above uint64) {
	for i, c := range h.Counts {
		total += c
		if lo := h.Buckets[i]; lo >= min && !math.IsInf(lo, 1) {
			above += c
		}
	}
	return total, above
}
