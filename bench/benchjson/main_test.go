package main

import "testing"

// TestCoarse holds benchjson to refusing a percentile read from fortio's
// default 1 ms buckets (a loopback run in one bucket, whose p50 fortio
// draws as a line from the fastest request to 1 ms) and to reading one
// from 10 µs buckets.
func TestCoarse(t *testing.T) {
	oneMS := []bucket{ // fortio load -r 0.001 (its default), a loopback run
		{Start: 57e-6, End: 0.001, Percent: 94.4},
		{Start: 0.001, End: 0.002, Percent: 97.7},
		{Start: 0.002, End: 0.003, Percent: 99.1},
		{Start: 0.003, End: 0.004, Percent: 100},
	}
	if b, ok := coarse(oneMS, 50); !ok {
		t.Errorf("p50 in [%v, %v) at 1 ms resolution: read as fine", b.Start, b.End)
	}
	tenUS := []bucket{ // fortio load -r 0.00001, the same kind of run
		{Start: 36e-6, End: 40e-6, Percent: 0.1},
		{Start: 300e-6, End: 310e-6, Percent: 49},
		{Start: 310e-6, End: 320e-6, Percent: 52},
		{Start: 1.8e-3, End: 2e-3, Percent: 98.5},
		{Start: 2e-3, End: 2.5e-3, Percent: 99.4},
		{Start: 2.5e-3, End: 3e-3, Percent: 100},
	}
	for _, p := range []float64{50, 99} {
		if b, ok := coarse(tenUS, p); ok {
			t.Errorf("p%v in [%v, %v) at 10 µs resolution: refused as coarse", p, b.Start, b.End)
		}
	}
	// The first bucket starts at the fastest request: from 0 to 20 µs it
	// is narrow however it compares with its edge.
	if _, ok := coarse([]bucket{{Start: 1e-6, End: 15e-6, Percent: 60}}, 50); ok {
		t.Error("a 14 µs bucket refused as coarse")
	}
}

// TestPooled holds fortio-pool to fortio's own reading of one histogram
// (the requests of a bucket spread evenly over it) and to reading two
// rounds as one set of requests, not as the mean of their percentiles.
func TestPooled(t *testing.T) {
	ms := func(v float64) float64 { return v / 1000 }
	near := func(name string, got, want float64) {
		t.Helper()
		if d := got - want; d > 1e-9 || d < -1e-9 {
			t.Errorf("%s: %.6f ms, want %.6f ms", name, got*1000, want*1000)
		}
	}
	one := []bucket{
		{Start: ms(0.2), End: ms(0.3), Count: 40},
		{Start: ms(0.3), End: ms(0.4), Count: 40},
		{Start: ms(0.4), End: ms(2), Count: 20},
	}
	near("one round's p50", pooled(one, 50), ms(0.325)) // 10 of the second bucket's 40
	near("one round's p99", pooled(one, 99), ms(1.92))  // 19 of the last bucket's 20
	// Two rounds: a quick one and a slow one, 100 requests each. Their
	// p50s are 0.15 and 3.5 ms; over the 200 requests the median is
	// where the quick round ends.
	quick := []bucket{{Start: ms(0.1), End: ms(0.2), Count: 100}}
	slow := []bucket{{Start: ms(3), End: ms(4), Count: 100}}
	both := append(append([]bucket{}, quick...), slow...)
	near("two rounds' p50", pooled(both, 50), ms(0.2))
	near("two rounds' p99", pooled(both, 99), ms(3.98))
	// Overlapping buckets of two rounds (their first and last buckets
	// start and end at their own fastest and slowest requests).
	a := []bucket{{Start: ms(0.05), End: ms(0.1), Count: 50}, {Start: ms(0.1), End: ms(0.2), Count: 50}}
	b := []bucket{{Start: ms(0.08), End: ms(0.1), Count: 50}, {Start: ms(0.1), End: ms(0.2), Count: 50}}
	near("overlapping rounds' p50", pooled(append(a, b...), 50), ms(0.1))
}
