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
