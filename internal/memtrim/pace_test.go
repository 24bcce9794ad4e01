package memtrim

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestPacePercent(t *testing.T) {
	p := pace{base: 100, headroom: 16 * mib, cur: 100}
	for _, c := range []struct {
		busy        bool
		live, roots uint64
		want        int
	}{
		{false, 2 * mib, 0, 100},        // idle: the start's percent
		{true, 0, 0, 100},               // live heap not known
		{true, 2 * mib, 0, 450},         // the least goal, 4 MiB × 4.5, is 2 + 16 MiB
		{true, 100 << 10, 0, 402},       // a tiny heap: the least goal bounds it
		{true, 4 * mib, 0, 400},         // 4 + (4 × 4) MiB
		{true, 8 * mib, 0, 200},         // 16 above 8
		{true, 4 * mib, 4 * mib, 200},   // the stacks and globals count: 4 + (8 × 2) MiB
		{true, mib, 31 * mib, 100},      // many stacks: never below the start's
		{true, 16 * mib, 0, 100},        // headroom reached: as before
		{true, 64 * mib, 0, 100},        // never below the start's
		{true, 8*mib + 4096, 0, 199},    // just over 8 MiB
		{true, 8*mib - 4096, mib, 177},  // 16/9 of 100
		{true, 3 * mib, mib / 2, 457},   // the stacks' bound below the least goal's 475
		{true, 3 * mib, mib / 8, 475},   // the least goal's bound below the stacks' 512
		{false, 3 * mib, 31 * mib, 100}, // idle
	} {
		if got := p.percent(c.busy, c.live, c.roots); got != c.want {
			t.Errorf("percent(busy %v, live %d, roots %d) = %d, want %d", c.busy, c.live, c.roots, got, c.want)
		}
	}
	big := pace{base: 100, headroom: 64 * mib}
	if got := big.percent(true, 4*mib, 0); got != 800 {
		t.Errorf("headroom 64 MiB, live 4: %d, want the cap 800", got)
	}
	if got := (&pace{base: 100, headroom: 1 << 62}).percent(true, 1<<40, 0); got != 100 {
		t.Errorf("headroom 2^62, live 1 TiB: %d, want 100 (the headroom taken as 1 TiB, no overflow)", got)
	}
	if got := (&pace{base: 300, headroom: 16 * mib}).percent(true, 8*mib, 0); got != 300 {
		t.Errorf("start at 300 %%, live 8 MiB: %d, want 300 (never below the start's)", got)
	}
	if got := (&pace{base: 100}).percent(true, mib, 0); got != 100 {
		t.Errorf("no headroom: %d, want 100", got)
	}
}

// TestPaceNextSkipsSmallMoves: a busy tick whose live heap moved a little
// leaves the percent; a return to the start's is always made.
func TestPaceNextSkipsSmallMoves(t *testing.T) {
	p := pace{base: 100, headroom: 16 * mib, cur: 100}
	steps := []struct {
		busy bool
		live uint64
		want int
	}{
		{true, 4 * mib, 400},
		{true, 4*mib + 200<<10, -1}, // 380 %: within an eighth of 400
		{true, 6 * mib, 266},        // a third less: set
		{true, 6 * mib, -1},         // unchanged
		{false, 6 * mib, 100},       // idle: back
		{false, 6 * mib, -1},        // already there
		{true, 15 * mib, 106},       // 106 against 100: within an eighth, but
	}
	for i, s := range steps[:len(steps)-1] {
		if got := p.next(s.busy, s.live, 0); got != s.want {
			t.Fatalf("step %d: next(busy %v, live %d) = %d, want %d", i, s.busy, s.live, got, s.want)
		}
	}
	// ... a move away from the start's percent under an eighth is left.
	if got := p.next(true, 15*mib, 0); got != -1 {
		t.Fatalf("106 %% from 100 %%: set %d, want left", got)
	}
}

func TestHeadroomFromEnv(t *testing.T) {
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	for _, c := range []struct {
		v    string
		want uint64
		why  bool
	}{
		{"", DefaultHeadroom, false},
		{"off", 0, true},
		{"0", 0, true},
		{"8MiB", 8 << 20, false},
		{"8 MiB", 8 << 20, false},
		{"8mib", 8 << 20, false},
		{"10mb", 10e6, false},
		{"10MB", 10e6, false},
		{"4194304", 4 << 20, false},
		{"512KiB", 512 << 10, false},
		{"1GiB", 1 << 30, false},
		{"lots", 0, true},
		{"-1MiB", 0, true},
		{"2TiB", 0, true},
		{"5000GiB", 0, true},
		{"MiB", 0, true},
		{"0MiB", 0, true}, // off, with the reason the agent's warning gives
		{" 0 B ", 0, true},
	} {
		t.Setenv("FOGMESH_GC_HEADROOM", c.v)
		got, why := HeadroomFromEnv()
		if got != c.want || (why != "") != c.why {
			t.Errorf("FOGMESH_GC_HEADROOM=%q: %d (%q), want %d (a reason: %v)", c.v, got, why, c.want, c.why)
		}
	}
	t.Setenv("FOGMESH_GC_HEADROOM", "")
	for _, env := range []string{"GOGC", "GOMEMLIMIT"} {
		t.Setenv(env, "200")
		if got, why := HeadroomFromEnv(); got != 0 || why == "" {
			t.Errorf("%s set: headroom %d (%q), want none with a reason", env, got, why)
		}
		t.Setenv(env, "")
	}
}

// TestRunPacesGCWhileLoaded drives run with samples: loaded ticks with a
// small live heap raise the runtime's GC percent, the first idle tick
// puts the start's back, and so does the end of run.
func TestRunPacesGCWhileLoaded(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	var mu sync.Mutex
	var changes [][2]int
	tr := NewTrimmer(Config{Interval: time.Millisecond, IdleTicks: 1000, Headroom: 16 * mib,
		OnPace: func(from, to int) { mu.Lock(); changes = append(changes, [2]int{from, to}); mu.Unlock() }})
	tr.pace = newPace(tr.cfg.Headroom)
	if tr.pace == nil || tr.pace.base != 100 {
		t.Fatalf("pace %+v at GOGC 100, want one with base 100", tr.pace)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Ticks 1-20 loaded (64 MiB a tick, live 2 MiB), 21-30 idle, then
	// loaded again until run ends.
	const loaded, idle = 20, 30
	tick := 0
	var allocs uint64
	seen := make(chan [2]int, 1000) // (tick, percent) as each sample is read
	read := func() Sample {
		tick++
		seen <- [2]int{tick, GCPercent()}
		if tick <= loaded || tick > idle {
			allocs += 64 * mib
		}
		return Sample{Allocs: allocs, Live: 2 * mib}
	}
	tr.Step(read())
	done := make(chan struct{})
	go func() { tr.run(ctx, read); close(done) }()
	at := map[int]int{} // tick: the percent as its sample was read
	deadline := time.After(10 * time.Second)
	for at[idle+10] == 0 {
		select {
		case s := <-seen:
			at[s[0]] = s[1]
		case <-deadline:
			t.Fatalf("run read %d samples in 10 s", len(at))
		}
	}
	// End run while loaded and paced: the start's percent is back.
	cancel()
	for drained := false; !drained; {
		select {
		case <-seen:
		case <-done:
			drained = true
		}
	}
	if at[10] != 450 || at[idle+10] != 450 {
		t.Errorf("GC percent at loaded ticks: %d, %d, want 450 (the least goal, 4 MiB × 4.5, 16 MiB above a 2 MiB live heap)", at[10], at[idle+10])
	}
	if at[idle] != 100 {
		t.Errorf("GC percent after idle ticks: %d, want the start's 100", at[idle])
	}
	if p := GCPercent(); p != 100 {
		t.Errorf("GC percent after run ended while loaded: %d, want 100", p)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := [][2]int{{100, 450}, {450, 100}, {100, 450}, {450, 100}}; !slices.Equal(changes, want) {
		t.Errorf("OnPace saw %v, want %v", changes, want)
	}
}

// TestStartPacesRealLoad: Start with the runtime's own samples: a
// goroutine allocating garbage raises the GC percent within a few ticks;
// once it stops, the percent is back at the start's.
func TestStartPacesRealLoad(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	runtime.GC()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wait := Start(ctx, Config{Interval: 20 * time.Millisecond, IdleTicks: 3, Headroom: 16 * mib})
	defer func() { cancel(); wait() }()
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		var sink [][]byte
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			sink = append(sink, make([]byte, 64<<10))
			if len(sink) > 16 {
				sink = sink[:0]
			}
			if i%64 == 0 {
				time.Sleep(time.Millisecond) // a steady load, not a spin
			}
		}
	}()
	waitFor := func(what string, ok func(int) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for p := GCPercent(); !ok(p); p = GCPercent() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: GC percent %d after 10 s", what, p)
			}
			time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
		}
	}
	waitFor("under load", func(p int) bool { return p > 100 })
	close(stop)
	<-stopped
	waitFor("idle again", func(p int) bool { return p == 100 })
}

// deep parks on release with about depth KiB of stack in use, once it
// has told down.
func deep(depth int, down func(), release <-chan struct{}) byte {
	var frame [1 << 10]byte
	frame[depth%len(frame)] = byte(depth)
	if depth > 0 {
		return deep(depth-1, down, release) + frame[0]
	}
	down()
	<-release
	return frame[0]
}

// heapGoal reads the runtime's heap goal.
func heapGoal() uint64 {
	ms := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}}
	metrics.Read(ms)
	return ms[0].Value.Uint64()
}

// TestPaceGoalWithinHeadroom: the percent a loaded tick asks for gives a
// heap goal (the runtime's own, /gc/heap/goal:bytes) at most Headroom
// above the live heap (or the start's goal, where that is higher): the
// runtime grows the goal by the percent of the goroutine stacks and
// globals too, and its least goal (4 MiB at 100 %) by the percent.
func TestPaceGoalWithinHeadroom(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	const headroom = 16 * mib
	for _, stacks := range []int{0, 128} { // none; 128 goroutines on 64 KiB (8 MiB of stack)
		release := make(chan struct{})
		var down, parked sync.WaitGroup
		for range stacks {
			down.Add(1)
			parked.Add(1)
			go func() { defer parked.Done(); deep(64, down.Done, release) }()
		}
		down.Wait()
		runtime.GC() // the stacks' scan and the live heap as of now
		s := Read()
		before := heapGoal()
		p := newPace(headroom)
		pct := p.percent(true, s.Live, s.Roots)
		debug.SetGCPercent(pct)
		goal := heapGoal()
		debug.SetGCPercent(100)
		close(release)
		parked.Wait()
		if limit := max(before, s.Live+headroom); goal > limit+64<<10 {
			t.Errorf("%d parked goroutines: live heap %d KiB, goal at 100 %% %d KiB; paced to %d %%, goal %d KiB, want at most %d KiB (live + headroom)",
				stacks, s.Live>>10, before>>10, pct, goal>>10, limit>>10)
		}
	}
}

// TestPaceLeavesOthersPercent: a GC percent set by others while run paces
// (a test turning the GC off, the program's own) is left as it is, by the
// next change the pace would make, the idle tick and the end of run.
func TestPaceLeavesOthersPercent(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	for _, c := range []struct {
		name   string
		loaded func(tick int) bool
		live   func(tick int) uint64
		theirs int // set as tick 10 is read
	}{
		// Paced to 450, then off; the pace would go to 200, then to 100.
		{"paced", func(tick int) bool { return tick <= 20 }, func(tick int) uint64 { return uint64(2+6*min(tick/11, 1)) * mib }, -1},
		// Never paced: only run's end would set it.
		{"idle", func(int) bool { return false }, func(int) uint64 { return 2 * mib }, 50},
	} {
		debug.SetGCPercent(100)
		var changes [][2]int // run's goroutine only until done
		tr := NewTrimmer(Config{Interval: time.Millisecond, IdleTicks: 1000, Headroom: 16 * mib,
			OnPace: func(from, to int) { changes = append(changes, [2]int{from, to}) }})
		tr.pace = newPace(tr.cfg.Headroom)
		ctx, cancel := context.WithCancel(context.Background())
		tick := 0
		var allocs uint64
		seen := make(chan [2]int, 1000)
		read := func() Sample {
			tick++
			if tick == 10 {
				debug.SetGCPercent(c.theirs)
			}
			seen <- [2]int{tick, GCPercent()}
			if c.loaded(tick) {
				allocs += 64 * mib
			}
			return Sample{Allocs: allocs, Live: c.live(tick)}
		}
		tr.Step(read())
		done := make(chan struct{})
		go func() { tr.run(ctx, read); close(done) }()
		at := map[int]int{}
		deadline := time.After(10 * time.Second)
		for at[40] == 0 {
			select {
			case s := <-seen:
				at[s[0]] = s[1]
			case <-deadline:
				cancel()
				t.Fatalf("%s: run read %d samples in 10 s", c.name, len(at))
			}
		}
		cancel()
		for drained := false; !drained; {
			select {
			case <-seen:
			case <-done:
				drained = true
			}
		}
		end := GCPercent()
		for _, tk := range []int{15, 25, 40} {
			if at[tk] != c.theirs {
				t.Errorf("%s: GC percent at tick %d: %d, want %d (set by others at tick 10)", c.name, tk, at[tk], c.theirs)
			}
		}
		if end != c.theirs {
			t.Errorf("%s: GC percent after run: %d, want %d (set by others)", c.name, end, c.theirs)
		}
		if c.name == "paced" && (at[5] != 450 || !slices.Equal(changes, [][2]int{{100, 450}})) {
			t.Errorf("%s: paced to %d at tick 5, changes %v; want 450, [[100 450]]", c.name, at[5], changes)
		}
	}
}

// TestGCPercentOff: GCPercent reads -1 with the GC off (the gauge
// fogmesh_agent_gc_percent shows it), and newPace paces nothing then.
func TestGCPercentOff(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	if p := GCPercent(); p != -1 {
		t.Errorf("GC off: GCPercent %d, want -1", p)
	}
	if p := newPace(16 * mib); p != nil {
		t.Errorf("GC off: pace %+v, want none", p)
	}
}
