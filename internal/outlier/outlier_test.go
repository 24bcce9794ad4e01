package outlier

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// clock is a fake clock: tests move it by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time                { return c.t }
func (c *clock) add(d time.Duration) time.Time { c.t = c.t.Add(d); return c.t }

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

var (
	r500 = Outcome{Status: 500}
	r503 = Outcome{Status: 503}
	r200 = Outcome{Status: 200}
	cf   = Outcome{Local: ConnectFailed}
	to   = Outcome{Local: Timeout}
	rst  = Outcome{Local: Reset}
	conn = Outcome{Local: Connected}
	fin  = Outcome{Local: ConnectedFinal}
)

// TestCountersAreIndependent: each counter ejects on its own threshold;
// one never overwrites the other (issue 11: consecutive5xxErrors: 2 with
// consecutiveGatewayErrors: 10 never ejected an always-500 endpoint).
func TestCountersAreIndependent(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		seq  []Outcome
		at   int    // 1-based index of the outcome that ejects; 0: none
		why  Reason // its reason
	}{
		{"5xx 2 beside gateway 10, always 500", Config{Consecutive5xx: 2, ConsecutiveGateway: 10}, []Outcome{r500, r500, r500}, 2, Consecutive5xx},
		{"gateway 2 beside 5xx 5, always 503", Config{Consecutive5xx: 5, ConsecutiveGateway: 2}, []Outcome{r503, r503}, 2, ConsecutiveGateway},
		{"gateway only: 500 is not a gateway error", Config{ConsecutiveGateway: 2}, []Outcome{r500, r500, r500, r500}, 0, ""},
		{"a 500 resets the gateway counter", Config{ConsecutiveGateway: 3}, []Outcome{r503, r503, r500, r503, r503, r503}, 6, ConsecutiveGateway},
		{"a 200 resets both", Config{Consecutive5xx: 3, ConsecutiveGateway: 3}, []Outcome{r503, r503, r200, r503, r503}, 0, ""},
		{"5xx counts gateway errors too", Config{Consecutive5xx: 3, ConsecutiveGateway: 9}, []Outcome{r503, r500, r503}, 3, Consecutive5xx},
		{"both off", Config{}, []Outcome{r500, r500, r500, r500, r500, r500}, 0, ""},
		{"connect failure is a 503", Config{ConsecutiveGateway: 2}, []Outcome{cf, rst}, 2, ConsecutiveGateway},
		{"timeout is a 504", Config{Consecutive5xx: 2}, []Outcome{r500, to}, 2, Consecutive5xx},
		{"a final connect is a success", Config{Consecutive5xx: 2}, []Outcome{cf, fin, cf}, 0, ""},
		{"a connect for a request is not a success", Config{Consecutive5xx: 2}, []Outcome{r500, conn, r500}, 3, Consecutive5xx},
		{"split: local failures counted apart", Config{Consecutive5xx: 2, SplitLocalOrigin: true, ConsecutiveLocalOrigin: 3},
			[]Outcome{cf, cf, r500, cf, rst, to}, 6, ConsecutiveLocalOrigin},
		{"split: 5xx ignores local failures", Config{Consecutive5xx: 2, SplitLocalOrigin: true, ConsecutiveLocalOrigin: 9},
			[]Outcome{r500, cf, r500}, 3, Consecutive5xx},
		{"split: a connect resets the local counter", Config{SplitLocalOrigin: true, ConsecutiveLocalOrigin: 3},
			[]Outcome{cf, cf, conn, cf, cf}, 0, ""},
		{"split with the local counter off", Config{SplitLocalOrigin: true}, []Outcome{cf, cf, cf, cf, cf, cf}, 0, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := New(tc.cfg, t0)
			d.SetHosts([]string{"a", "b"})
			at := 0
			for i, o := range tc.seq {
				ev := d.Report("a", o, t0)
				if ev.Ejected && at == 0 {
					at = i + 1
					if ev.Reason != tc.why {
						t.Errorf("reason %q, want %q", ev.Reason, tc.why)
					}
				}
			}
			if at != tc.at {
				t.Fatalf("ejected at outcome %d, want %d", at, tc.at)
			}
			if got := d.Ejected("a", t0); got != (tc.at > 0) {
				t.Fatalf("Ejected = %v", got)
			}
			if d.Ejected("b", t0) {
				t.Fatal("the other endpoint is ejected")
			}
		})
	}
}

// TestEjectionTimeGrowsCapsAndDecays: base × multiplier, capped; each
// sweep that finds the endpoint back decrements the multiplier (issue 11:
// an endpoint was ejected for 1 min two minutes after a 10 s ejection).
func TestEjectionTimeGrowsCapsAndDecays(t *testing.T) {
	c := &clock{t0}
	d := New(Config{Consecutive5xx: 1, Interval: time.Second, BaseEjectionTime: 10 * time.Second, MaxEjectionTime: 30 * time.Second}, c.now())
	d.SetHosts([]string{"a", "b"})
	// eject ejects a, checks the time it is out for, and waits (sweep by
	// sweep) until it is back.
	eject := func(want time.Duration) {
		t.Helper()
		ev := d.Report("a", r500, c.now())
		if !ev.Ejected || ev.For != want {
			t.Fatalf("at %v: %+v, want ejected for %v", c.now().Sub(t0), ev, want)
		}
		start := c.now()
		for d.Ejected("a", c.now()) {
			if c.now().Sub(start) > want+time.Second {
				t.Fatalf("still ejected %v after an ejection for %v", c.now().Sub(start), want)
			}
			c.add(100 * time.Millisecond)
		}
		if out := c.now().Sub(start); out < want {
			t.Fatalf("back after %v, want %v", out, want)
		}
	}
	eject(10 * time.Second)
	eject(20 * time.Second) // again before the next sweep: ×2
	eject(30 * time.Second)
	eject(30 * time.Second) // capped
	if m := d.State("a", c.now()).Multiplier; m != 4 {
		t.Fatalf("multiplier %d, want 4 (Envoy grows it one step past the cap)", m)
	}
	// Healthy for three sweeps: 4 → 1.
	c.add(3 * time.Second)
	if m := d.State("a", c.now()).Multiplier; m != 1 {
		t.Fatalf("after 3 healthy sweeps: multiplier %d, want 1", m)
	}
	eject(20 * time.Second)
	// Two minutes later a 10 s ejection, not 1 min.
	c.add(2 * time.Minute)
	eject(10 * time.Second)
}

// TestUnejectionWaitsForTheSweep: an ejection ends at the first sweep
// after its time, as Envoy's interval timer un-ejects.
func TestUnejectionWaitsForTheSweep(t *testing.T) {
	d := New(Config{Consecutive5xx: 1, Interval: 5 * time.Second, BaseEjectionTime: time.Second}, t0)
	d.SetHosts([]string{"a", "b"})
	if ev := d.Report("a", r500, t0.Add(time.Second)); !ev.Ejected || ev.For != time.Second {
		t.Fatalf("%+v", ev)
	}
	for _, tc := range []struct {
		at   time.Duration
		want bool
	}{{2 * time.Second, true}, {4900 * time.Millisecond, true}, {5 * time.Second, false}} {
		if got := d.Ejected("a", t0.Add(tc.at)); got != tc.want {
			t.Fatalf("at %v: ejected %v, want %v", tc.at, got, tc.want)
		}
	}
	// The counters restart: one more 500 ejects again (threshold 1), now
	// for 2 s (the sweep at 5 s un-ejected it; no sweep since).
	if ev := d.Report("a", r500, t0.Add(6*time.Second)); !ev.Ejected || ev.For != 2*time.Second {
		t.Fatalf("%+v", ev)
	}
}

// TestMaxEjectionPercent: no more than the share, but always one.
func TestMaxEjectionPercent(t *testing.T) {
	for _, tc := range []struct {
		hosts, pct, want int
	}{
		{10, 20, 2}, {10, 0, 1}, {3, 0, 1}, {2, 50, 1}, {2, 100, 2}, {4, 50, 2}, {1, 10, 1}, {3, 34, 1},
	} {
		t.Run(fmt.Sprintf("%d hosts %d%%", tc.hosts, tc.pct), func(t *testing.T) {
			d := New(Config{Consecutive5xx: 1, MaxEjectionPercent: tc.pct}, t0)
			var keys []string
			for i := range tc.hosts {
				keys = append(keys, fmt.Sprint("e", i))
			}
			d.SetHosts(keys)
			out, skipped := 0, 0
			for _, k := range keys {
				ev := d.Report(k, r500, t0)
				if ev.Ejected {
					out++
				} else if ev.Reason != "" {
					skipped++
				}
			}
			if out != tc.want || out+skipped != tc.hosts {
				t.Fatalf("ejected %d, skipped %d; want %d ejected", out, skipped, tc.want)
			}
		})
	}
}

// TestMinHealthPercent: below the share of endpoints not ejected, no
// endpoint counts as ejected (Istio: detection is disabled and the proxy
// balances across all hosts).
func TestMinHealthPercent(t *testing.T) {
	d := New(Config{Consecutive5xx: 1, MaxEjectionPercent: 100, MinHealthPercent: 75}, t0)
	d.SetHosts([]string{"a", "b", "c", "d"})
	d.Report("a", r500, t0)
	if !d.Ejected("a", t0) {
		t.Fatal("3 of 4 healthy is 75%: a should be ejected")
	}
	d.Report("b", r500, t0)
	if d.Ejected("a", t0) || d.Ejected("b", t0) {
		t.Fatal("2 of 4 healthy is below 75%: nothing should count as ejected")
	}
	if !d.State("b", t0).Ejected {
		t.Fatal("b's ejection should be recorded all the same")
	}
	d.SetHosts([]string{"a", "b", "c", "d", "e", "f", "g", "h"})
	if !d.Ejected("a", t0) || !d.Ejected("b", t0) {
		t.Fatal("6 of 8 healthy is 75%: a and b should be ejected")
	}
}

// TestUnejectClearsCounters: a passing health check returns the endpoint
// and restarts its counters, keeping the multiplier.
func TestUnejectClearsCounters(t *testing.T) {
	d := New(Config{Consecutive5xx: 2}, t0)
	d.SetHosts([]string{"a", "b"})
	d.Report("a", r500, t0)
	d.Report("a", r500, t0)
	d.Uneject("a", t0)
	if d.Ejected("a", t0) {
		t.Fatal("still ejected")
	}
	if ev := d.Report("a", r500, t0); ev.Ejected {
		t.Fatal("ejected after one 500: the counter was not cleared")
	}
	if ev := d.Report("a", r500, t0); !ev.Ejected || ev.For != 2*DefaultBaseEjectionTime {
		t.Fatalf("%+v: want ejected for 2× the base", ev)
	}
}

// TestTurningOffReturnsEveryone: a configuration without any counter
// ejects nothing and returns the endpoints ejected before.
func TestTurningOffReturnsEveryone(t *testing.T) {
	d := New(Config{Consecutive5xx: 1}, t0)
	d.SetHosts([]string{"a", "b"})
	d.Report("a", r500, t0)
	d.SetConfig(Config{}, t0)
	if d.Ejected("a", t0) {
		t.Fatal("still ejected with detection off")
	}
	for range 10 {
		if ev := d.Report("b", r500, t0); ev != (Event{}) {
			t.Fatalf("%+v with detection off", ev)
		}
	}
}

// TestSetHostsForgets: an endpoint that leaves the pool takes its ejection
// with it (it no longer counts against the max share).
func TestSetHostsForgets(t *testing.T) {
	d := New(Config{Consecutive5xx: 1, MaxEjectionPercent: 50}, t0)
	d.SetHosts([]string{"a", "b"})
	d.Report("a", r500, t0)
	if ev := d.Report("b", r500, t0); ev.Ejected {
		t.Fatal("second of two ejected at 50%")
	}
	d.SetHosts([]string{"b", "c"})
	if ev := d.Report("b", r500, t0); !ev.Ejected {
		t.Fatal("a left the pool: b should be ejectable")
	}
}

// TestLazySweepsMatchEverySweep: running missed sweeps in closed form
// gives the state that running each sweep on time gives.
func TestLazySweepsMatchEverySweep(t *testing.T) {
	cfg := Config{Consecutive5xx: 2, ConsecutiveGateway: 1, Interval: time.Second, BaseEjectionTime: 1500 * time.Millisecond,
		MaxEjectionTime: 6 * time.Second, MaxEjectionPercent: 50}
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		eager, lazy := New(cfg, t0), New(cfg, t0)
		keys := []string{"a", "b", "c", "d"}
		eager.SetHosts(keys)
		lazy.SetHosts(keys)
		now := t0
		for step := range 400 {
			now = now.Add(time.Duration(rng.IntN(1500)) * time.Millisecond)
			// eager looks at every sweep on its way
			for s := eager.start.Add(time.Duration(eager.swept+1) * cfg.Interval); !s.After(now); s = s.Add(cfg.Interval) {
				eager.State("a", s)
			}
			k := keys[rng.IntN(len(keys))]
			o := []Outcome{r500, r503, r200, cf}[rng.IntN(4)]
			e1, e2 := eager.Report(k, o, now), lazy.Report(k, o, now)
			if e1 != e2 {
				t.Fatalf("seed %d step %d: eager %+v, lazy %+v", seed, step, e1, e2)
			}
			for _, k := range keys {
				if s1, s2 := eager.State(k, now), lazy.State(k, now); s1 != s2 {
					t.Fatalf("seed %d step %d %s: eager %+v, lazy %+v", seed, step, k, s1, s2)
				}
			}
		}
	}
}

// TestSetQuarantineAndDetectors: the set answers for both the quarantine
// and each service's detector, and a health check lifts both.
func TestSetQuarantineAndDetectors(t *testing.T) {
	var s Set
	cfg := Config{Consecutive5xx: 1}
	s.Sync("ns/a", cfg, []string{"ns/a1", "ns/a2"}, t0)
	s.Sync("ns/b", Config{}, []string{"ns/b1"}, t0)
	s.Quarantine("ns/b1", t0.Add(time.Second))
	if !s.Ejected("ns/b", "ns/b1", t0) || s.Ejected("ns/b", "ns/b1", t0.Add(time.Second)) {
		t.Fatal("quarantine is not until the given time")
	}
	if ev := s.Report("ns/a", "ns/a1", r500, t0); !ev.Ejected || !s.Ejected("ns/a", "ns/a1", t0) || !s.EjectedAnywhere("ns/a1", t0) {
		t.Fatalf("%+v", ev)
	}
	if ev := s.Report("ns/b", "ns/b1", r500, t0); ev.Ejected || s.Ejected("ns/b", "ns/b1", t0) {
		t.Fatal("ejected with detection off")
	}
	s.Quarantine("ns/a1", t0.Add(time.Hour))
	s.Uneject("ns/a1", t0)
	if s.Ejected("ns/a", "ns/a1", t0) {
		t.Fatal("a passing check did not return it")
	}
	s.Report("ns/a", "ns/a2", r500, t0)
	s.Prune(map[string]bool{"ns/b": true})
	if s.Ejected("ns/a", "ns/a2", t0) || s.EjectedAnywhere("ns/a2", t0) {
		t.Fatal("a removed service's ejection is still applied")
	}
	if ev := s.Report("ns/a", "ns/a2", r500, t0); ev != (Event{}) {
		t.Fatal("an outcome for a destination not synced was counted")
	}
	var zero Set
	if zero.Ejected("d", "x", t0) || zero.EjectedAnywhere("x", t0) || zero.State("d", "x", t0) != (HostState{}) {
		t.Fatal("the zero set is not empty")
	}
	zero.Uneject("x", t0)
	zero.Prune(nil)
	zero.Reset()
}

// TestSetDestinationsApart: two destinations of one service (the service
// and a subset with its own outlierDetection interval) share endpoints;
// traffic to the subset neither changes the service's configuration nor
// restarts its sweeps, so the service's ejection ends on time
// (reviewer's regression: each report used to re-set one shared
// detector's config and restart its sweep clock, so x was never returned).
func TestSetDestinationsApart(t *testing.T) {
	var s Set
	now := time.Unix(1000, 0)
	a := Config{Consecutive5xx: 1, Interval: time.Second, BaseEjectionTime: time.Second, MaxEjectionPercent: 100}
	b := a
	b.Interval = 2 * time.Second
	s.Sync("shop/r", a, []string{"x", "y"}, now)
	s.Sync("shop/r|v1|", b, []string{"x", "y"}, now)
	if e := s.Report("shop/r", "x", Outcome{Status: 500}, now); !e.Ejected {
		t.Fatal("setup: not ejected")
	}
	if s.Ejected("shop/r|v1|", "x", now) {
		t.Fatal("the service's ejection applies to the subset's pool")
	}
	for i := 0; i < 600; i++ { // a minute of traffic, 100 ms apart, alternating destinations
		now = now.Add(100 * time.Millisecond)
		dest := "shop/r"
		if i%2 == 1 {
			dest = "shop/r|v1|"
		}
		s.Report(dest, "y", Outcome{Status: 200}, now)
	}
	if s.Ejected("shop/r", "x", now) {
		t.Error("x still ejected a minute after a 1 s ejection")
	}
}

// The detector Sync returns is the destination's: what is reported to it
// is what the set reports by name, the same detector is returned by a
// later Sync (a caller's cached one stays current), and EjectedIn counts
// the quarantine too.
func TestSetSyncReturnsTheDestinationsDetector(t *testing.T) {
	var s Set
	cfg := Config{Consecutive5xx: 1, MaxEjectionPercent: 100}
	d := s.Sync("ns/a", cfg, []string{"ns/a1", "ns/a2"}, t0)
	if d == nil || s.Sync("ns/a", cfg, []string{"ns/a1", "ns/a2"}, t0) != d {
		t.Fatal("Sync did not return the destination's one detector")
	}
	clock := func() time.Time { return t0 }
	if ev := d.Report("ns/a1", r500, t0); !ev.Ejected {
		t.Fatalf("%+v", ev)
	}
	if !s.Ejected("ns/a", "ns/a1", t0) || !s.EjectedIn(d, "ns/a1", clock) || s.EjectedIn(d, "ns/a2", clock) {
		t.Fatal("the returned detector's ejection is not the destination's")
	}
	s.Quarantine("ns/a2", t0.Add(time.Second))
	if !s.EjectedIn(d, "ns/a2", clock) || !s.EjectedIn(nil, "ns/a2", clock) || s.EjectedIn(nil, "ns/a1", clock) {
		t.Fatal("EjectedIn does not apply the quarantine alone")
	}
}

// TestUnlockedPathsMatchLocked: Report's and Ejected's unlocked paths (a
// response below 500 while nothing counts; nothing ejected) answer as the
// locked ones, sweeps left to later calls and all: the same random
// outcomes, health checks, pool changes and checks on a detector that
// always locks give the same events, answers and states.
func TestUnlockedPathsMatchLocked(t *testing.T) {
	cfg := Config{Consecutive5xx: 3, ConsecutiveGateway: 2, Interval: time.Second, BaseEjectionTime: 1500 * time.Millisecond,
		MaxEjectionTime: 6 * time.Second, MaxEjectionPercent: 50, MinHealthPercent: 30}
	outcomes := []Outcome{r200, r200, r200, r200, {Status: 404}, r500, r503, cf, to, rst, conn, fin}
	fast := 0
	for seed := range uint64(500) {
		rng := rand.New(rand.NewPCG(seed, 2))
		c := cfg
		c.SplitLocalOrigin = seed%2 == 1
		if c.SplitLocalOrigin {
			c.ConsecutiveLocalOrigin = 2
		}
		got, want := New(c, t0), New(c, t0)
		want.slowOnly = true
		keys := []string{"a", "b", "c", "d"}
		got.SetHosts(keys)
		want.SetHosts(keys)
		now := t0
		for step := range 600 {
			now = now.Add(time.Duration(rng.IntN(400)) * time.Millisecond)
			k := keys[rng.IntN(len(keys))]
			switch r := rng.IntN(100); {
			case r < 3:
				got.Uneject(k, now)
				want.Uneject(k, now)
			case r < 5:
				pool := keys[:2+rng.IntN(3)]
				got.SetHosts(pool)
				want.SetHosts(pool)
			case r < 25:
				if g, w := got.Ejected(k, now), want.Ejected(k, now); g != w {
					t.Fatalf("seed %d step %d: Ejected(%s) %v, locked %v", seed, step, k, g, w)
				}
			default:
				o := outcomes[rng.IntN(len(outcomes))]
				if o.Local == NoLocal && o.Status < 500 && got.nCounting.Load() == 0 {
					fast++
				}
				if g, w := got.Report(k, o, now), want.Report(k, o, now); g != w {
					t.Fatalf("seed %d step %d: Report(%s, %+v) %+v, locked %+v", seed, step, k, o, g, w)
				}
			}
			if step%50 == 49 {
				for _, k := range keys {
					if g, w := got.State(k, now), want.State(k, now); g != w {
						t.Fatalf("seed %d step %d %s: %+v, locked %+v", seed, step, k, g, w)
					}
				}
			}
		}
	}
	if fast == 0 {
		t.Fatal("no report took the unlocked path")
	}
}
