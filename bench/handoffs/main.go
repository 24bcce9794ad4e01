// Command handoffs counts goroutine wake-ups in a runtime trace (`go test
// -trace`, or a test binary's -test.trace): which goroutine, named by the
// function it started in, or the network poller and scheduler made which
// goroutine runnable, where the woken one had blocked, and the waker's
// first frames outside the runtime; besides, the goroutines that yielded
// (runtime.Gosched or a preemption, with the runtime's frames where: the
// GC's background sweeper's, session 31), how often each goroutine was
// switched in, and the GC cycles begun; per operation with -n. It is how
// BENCHMARKS.md's session 29 wrote down the hand-offs of a gRPC call
// through the agent (issue 14): a wake between goroutines costs the
// scheduler's work on both sides and, with a P idle, a thread woken
// (finish_task_switch, session 11).
//
// Its own module: golang.org/x/exp/trace reads the trace, and the agent's
// module does not take that dependency for a bench tool.
//
// Usage: handoffs [-n OPS] [-depth FRAMES] TRACE
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"golang.org/x/exp/trace"
)

func main() {
	ops := flag.Float64("n", 1, "operations in the trace: counts are divided by it")
	depth := flag.Int("depth", 3, "frames of the waker's stack named")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: handoffs [-n OPS] [-depth FRAMES] TRACE")
		os.Exit(2)
	}
	f, err := os.Open(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "handoffs:", err)
		os.Exit(1)
	}
	defer f.Close()
	c, err := count(f, *depth)
	if err != nil {
		fmt.Fprintln(os.Stderr, "handoffs:", err)
		os.Exit(1)
	}
	c.print(os.Stdout, *ops)
}

// pollerName stands for wakes made outside any goroutine: the network
// poller's, timers', the scheduler's.
const pollerName = "netpoll/sched"

// wake is one kind of wake-up: a goroutine (named by the function it
// started in, or pollerName) at frames made woken runnable, which had
// blocked for reason at blockedAt (new: it was just made).
type wake struct {
	by, frames, woken, reason, blockedAt string
	new                                  bool
}

func (w wake) String() string {
	if w.new {
		return fmt.Sprintf("%s [%s] -> new %s", w.by, w.frames, w.woken)
	}
	return fmt.Sprintf("%s [%s] -> %s (blocked: %s@%s)", w.by, w.frames, w.woken, w.reason, w.blockedAt)
}

// counts are a trace's wake-ups and blocks.
type counts struct {
	wakes map[wake]int
	// blocks: "GOROUTINE: REASON@frames".
	// blocks: "GOROUTINE: REASON@frames".
	blocks map[string]int
	// procStarts: Ps going from idle to running (a thread woken for
	// them, or one that was spinning).
	procStarts int
	// runs: goroutines switched in (to running), by the function each
	// started in: every wake and yield ends in one, and the runtime's
	// own goroutines (the GC's workers, the background sweeper) show
	// here, which wake no one's blocked goroutine.
	runs map[string]int
	// yields: "GOROUTINE: REASON", running goroutines put back to
	// runnable (runtime.Gosched, as the background sweeper's
	// goschedIfBusy, or a preemption).
	yields map[string]int
	// gcs: GC cycles (their concurrent mark phases begun).
	gcs int
}

// count reads a trace and counts its wake-ups, naming the waker's first
// depth frames outside the runtime and the standard library's sync.
func count(r io.Reader, depth int) (*counts, error) {
	tr, err := trace.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("reading the trace: %w", err)
	}
	c := &counts{wakes: map[wake]int{}, blocks: map[string]int{}, runs: map[string]int{}, yields: map[string]int{}}
	root := map[trace.GoID]string{}       // goroutine -> the function it started in
	blocked := map[trace.GoID][2]string{} // goroutine -> why and where it blocked last
	for {
		ev, err := tr.ReadEvent()
		if err == io.EOF {
			return c, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading the trace: %w", err)
		}
		if g := ev.Goroutine(); g != trace.NoGoroutine && (root[g] == "" || root[g] == "?") {
			// Running when the trace began, with no stack then.
			if r := lastFrame(ev.Stack()); r != "?" {
				root[g] = r
			}
		}
		if ev.Kind() == trace.EventRangeBegin && ev.Range().Name == "GC concurrent mark phase" {
			c.gcs++
		}
		if ev.Kind() != trace.EventStateTransition {
			continue
		}
		st := ev.StateTransition()
		switch st.Resource.Kind {
		case trace.ResourceProc:
			if from, to := st.Proc(); from == trace.ProcIdle && to == trace.ProcRunning {
				c.procStarts++
			}
		case trace.ResourceGoroutine:
			id := st.Resource.Goroutine()
			from, to := st.Goroutine()
			if from == trace.GoNotExist || from == trace.GoUndetermined {
				// A new goroutine's transition stack is where it starts; one
				// running before the trace began shows its current stack,
				// whose last frame is where it started too.
				if r := lastFrame(st.Stack, ev.Stack()); r != "?" || root[id] == "" {
					root[id] = r
				}
			}
			w := wake{by: pollerName, woken: root[id]}
			if g := ev.Goroutine(); g != trace.NoGoroutine && g != id {
				w.by, w.frames = root[g], frames(ev.Stack(), depth)
			}
			if from == trace.GoRunnable && to == trace.GoRunning {
				c.runs[root[id]]++
			}
			switch {
			case from == trace.GoRunning && to == trace.GoRunnable:
				c.yields[root[id]+": "+st.Reason+"@"+runtimeFrames(ev.Stack(), 2)]++
			case to == trace.GoWaiting:
				b := [2]string{st.Reason, frames(ev.Stack(), 2)}
				blocked[id] = b
				c.blocks[root[id]+": "+b[0]+"@"+b[1]]++
			case from == trace.GoWaiting && to == trace.GoRunnable:
				w.reason, w.blockedAt = blocked[id][0], blocked[id][1]
				c.wakes[w]++
			case from == trace.GoNotExist && to == trace.GoRunnable:
				w.new = true
				c.wakes[w]++
			}
		}
	}
}

// inRuntime: frames not named (the runtime's, sync's, context's, time's).
var inRuntime = []string{"runtime.", "internal/", "sync.", "context.", "time."}

// frames names the first n frames of st outside the runtime, innermost
// first, separated by '<'.
func frames(st trace.Stack, n int) string {
	var out []string
	for fr := range st.Frames() {
		skip := false
		for _, p := range inRuntime {
			skip = skip || strings.HasPrefix(fr.Func, p)
		}
		if skip {
			continue
		}
		out = append(out, short(fr.Func))
		if len(out) == n {
			break
		}
	}
	return strings.Join(out, "<")
}

// runtimeFrames names the first n frames of st below runtime.Gosched and
// runtime.goschedIfBusy, the runtime's included, with their lines: where
// a goroutine yielded.
func runtimeFrames(st trace.Stack, n int) string {
	var out []string
	for fr := range st.Frames() {
		if fr.Func == "runtime.Gosched" || fr.Func == "runtime.goschedIfBusy" {
			continue
		}
		out = append(out, fmt.Sprintf("%s:%d", short(fr.Func), fr.Line))
		if len(out) == n {
			break
		}
	}
	return strings.Join(out, "<")
}

// lastFrame is the outermost frame of the first stack that has one.
func lastFrame(sts ...trace.Stack) string {
	for _, st := range sts {
		last := ""
		for fr := range st.Frames() {
			last = fr.Func
		}
		if last != "" {
			return short(last)
		}
	}
	return "?"
}

// short drops a function's import path up to its package name.
func short(fn string) string {
	if i := strings.LastIndexByte(fn, '/'); i >= 0 {
		return fn[i+1:]
	}
	return fn
}

// print writes the counts per operation, largest first, leaving out
// those under 0.005 per operation.
func (c *counts) print(w io.Writer, ops float64) {
	wakes := map[string]int{}
	for w, n := range c.wakes {
		wakes[w.String()] += n
	}
	table := func(title string, m map[string]int) {
		keys := make([]string, 0, len(m))
		total := 0
		for k, v := range m {
			keys = append(keys, k)
			total += v
		}
		sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
		fmt.Fprintf(w, "%s: %.3f per op\n", title, float64(total)/ops)
		for _, k := range keys {
			if v := float64(m[k]) / ops; v >= 0.005 {
				fmt.Fprintf(w, "%8.3f  %s\n", v, k)
			}
		}
	}
	table("wakes (waker [frames] -> woken)", wakes)
	table("blocks", c.blocks)
	table("yields (running -> runnable)", c.yields)
	table("goroutines switched in", c.runs)
	fmt.Fprintf(w, "P idle -> running: %.3f per op\n", float64(c.procStarts)/ops)
	fmt.Fprintf(w, "GC cycles: %d (%.1f per 100,000 ops)\n", c.gcs, float64(c.gcs)*1e5/ops)
}
