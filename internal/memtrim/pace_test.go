package memtrim

import (
	"context"
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
	"time"
)

func TestPacePercent(t *testing.T) {
	p := pace{base: 100, headroom: 16 * mib, cur: 100}
	for _, c := range []struct {
		busy bool
		live uint64
		want int
	}{
		{false, 2 * mib, 100},        // idle: the start's percent
		{true, 0, 100},               // live heap not known
		{true, 2 * mib, 800},         // 16 MiB above 2: 800 %
		{true, 4 * mib, 400},         // 16 above 4
		{true, 8 * mib, 200},         // 16 above 8
		{true, 16 * mib, 100},        // headroom reached: as before
		{true, 64 * mib, 100},        // never below the start's
		{true, 100 << 10, 800},       // a tiny heap: capped
		{true, 16*mib/8 - 1, 800},    // just under the cap's live heap
		{true, 16*mib/8 + 4096, 798}, // just over it
	} {
		if got := p.percent(c.busy, c.live); got != c.want {
			t.Errorf("percent(busy %v, live %d) = %d, want %d", c.busy, c.live, got, c.want)
		}
	}
	if got := (&pace{base: 300, headroom: 16 * mib}).percent(true, 8*mib); got != 300 {
		t.Errorf("start at 300 %%, live 8 MiB: %d, want 300 (never below the start's)", got)
	}
	if got := (&pace{base: 100}).percent(true, mib); got != 100 {
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
		if got := p.next(s.busy, s.live); got != s.want {
			t.Fatalf("step %d: next(busy %v, live %d) = %d, want %d", i, s.busy, s.live, got, s.want)
		}
	}
	// ... a move away from the start's percent under an eighth is left.
	if got := p.next(true, 15*mib); got != -1 {
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
		{"10MB", 10e6, false},
		{"4194304", 4 << 20, false},
		{"512KiB", 512 << 10, false},
		{"1GiB", 1 << 30, false},
		{"lots", 0, true},
		{"-1MiB", 0, true},
		{"2TiB", 0, true},
		{"5000GiB", 0, true},
		{"MiB", 0, true},
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
	// Ticks 1-20 loaded (64 MiB a tick, live 2 MiB), then idle.
	const loaded = 20
	tick := 0
	seen := make(chan [2]int, 1000) // (tick, percent) as each sample is read
	read := func() Sample {
		tick++
		seen <- [2]int{tick, GCPercent()}
		if tick <= loaded {
			return Sample{Allocs: uint64(tick) * 64 * mib, Live: 2 * mib}
		}
		return Sample{Allocs: loaded * 64 * mib, Live: 2 * mib}
	}
	tr.Step(read())
	done := make(chan struct{})
	go func() { tr.run(ctx, read); close(done) }()
	var at10, atEnd int
	deadline := time.After(10 * time.Second)
	for atEnd == 0 {
		select {
		case s := <-seen:
			switch s[0] {
			case 10:
				at10 = s[1]
			case loaded + 10:
				atEnd = s[1]
			}
		case <-deadline:
			t.Fatal("run read no samples for 10 s")
		}
	}
	if at10 != 800 {
		t.Errorf("GC percent at a loaded tick: %d, want 800 (16 MiB above a 2 MiB live heap, capped)", at10)
	}
	if atEnd != 100 {
		t.Errorf("GC percent after idle ticks: %d, want the start's 100", atEnd)
	}
	// Load again, then end run while loaded: the start's percent is back.
	cancel()
	<-done
	if p := GCPercent(); p != 100 {
		t.Errorf("GC percent after run ended: %d, want 100", p)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(changes) != 2 || changes[0] != [2]int{100, 800} || changes[1] != [2]int{800, 100} {
		t.Errorf("OnPace saw %v, want [[100 800] [800 100]]", changes)
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
