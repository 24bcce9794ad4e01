// Command benchjson reads the JSON that bench.sh's load tools write and
// prints the figures bench.sh tabulates, space-separated on one line.
//
//	benchjson iperf3 FILE   ->  <Gbit/s received> <retransmits>
//	benchjson fortio FILE   ->  <p50 ms> <p99 ms> <p99.9 ms> <actual req/s> <non-OK count> <requests>
//	benchjson fortio-pool FILE...  ->  <p50 ms> <p99 ms> <p99.9 ms> <requests>
//
// fortio-pool reads the percentiles of every request of several runs
// (rounds) together: their histograms summed, each bucket's requests
// spread evenly over it, as fortio reads one run's.
package main

import (
	"encoding/json"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "fortio-pool" {
		pool(os.Args[2:])
		return
	}
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: benchjson iperf3|fortio FILE | fortio-pool FILE...")
		os.Exit(2)
	}
	b, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail(err)
	}
	switch os.Args[1] {
	case "iperf3":
		var r struct {
			Error string `json:"error"`
			End   struct {
				SumSent struct {
					Retransmits int `json:"retransmits"`
				} `json:"sum_sent"`
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal(b, &r); err != nil {
			fail(err)
		}
		if r.Error != "" {
			fail(fmt.Errorf("iperf3: %s", r.Error))
		}
		if r.End.SumReceived.BitsPerSecond == 0 {
			fail(fmt.Errorf("iperf3: no data received"))
		}
		fmt.Printf("%.2f %d\n", r.End.SumReceived.BitsPerSecond/1e9, r.End.SumSent.Retransmits)
	case "fortio":
		var r struct {
			ActualQPS         float64
			RetCodes          map[string]int64
			DurationHistogram struct {
				Count       int64
				Data        []bucket
				Percentiles []struct {
					Percentile float64
					Value      float64
				}
			}
		}
		if err := json.Unmarshal(b, &r); err != nil {
			fail(err)
		}
		pct := map[float64]float64{}
		for _, p := range r.DurationHistogram.Percentiles {
			pct[p.Percentile] = p.Value * 1000
		}
		for _, want := range []float64{50, 99, 99.9} {
			if _, ok := pct[want]; !ok {
				fail(fmt.Errorf("fortio: no p%v in %s", want, os.Args[2]))
			}
		}
		// A percentile read from a bucket as wide as the values in it is a
		// straight line through the bucket, not a measurement (fortio's
		// default 1 ms resolution puts a whole loopback run in one).
		for _, want := range []float64{50, 99} {
			if b, ok := coarse(r.DurationHistogram.Data, want); ok {
				fail(fmt.Errorf("fortio: p%v of %s falls in the bucket [%.3f, %.3f) ms: too coarse to read; run fortio with a finer -r",
					want, os.Args[2], b.Start*1000, b.End*1000))
			}
		}
		var bad int64
		for code, n := range r.RetCodes {
			// HTTP: 200; fortio's gRPC ping and health runs count SERVING.
			if code != "200" && code != "SERVING" && code != "OK" {
				bad += n
			}
		}
		fmt.Printf("%.3f %.3f %.3f %.0f %d %d\n", pct[50], pct[99], pct[99.9], r.ActualQPS, bad, r.DurationHistogram.Count)
	default:
		fail(fmt.Errorf("unknown kind %q", os.Args[1]))
	}
}

// bucket is one bar of fortio's duration histogram: [Start, End)
// seconds, Percent the share of requests up to End, Count the requests
// in it.
type bucket struct {
	Start, End, Percent float64
	Count               int64
}

// pool prints the p50, p99 and p99.9 (ms) of the requests of every file,
// and how many there were.
func pool(files []string) {
	var all []bucket
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			fail(err)
		}
		var r struct{ DurationHistogram struct{ Data []bucket } }
		if err := json.Unmarshal(b, &r); err != nil {
			fail(fmt.Errorf("%s: %w", f, err))
		}
		all = append(all, r.DurationHistogram.Data...)
	}
	var n int64
	for _, b := range all {
		n += b.Count
	}
	if n == 0 {
		fail(fmt.Errorf("fortio-pool: no requests in %d files", len(files)))
	}
	fmt.Printf("%.3f %.3f %.3f %d\n", pooled(all, 50)*1000, pooled(all, 99)*1000, pooled(all, 99.9)*1000, n)
}

// pooled returns the value under which p % of the requests in buckets
// (of several histograms, overlapping) fall, each bucket's requests
// spread evenly over [Start, End).
func pooled(buckets []bucket, p float64) float64 {
	var n int64
	lo, hi := buckets[0].Start, buckets[0].End
	for _, b := range buckets {
		n += b.Count
		lo, hi = min(lo, b.Start), max(hi, b.End)
	}
	want := p / 100 * float64(n)
	below := func(x float64) float64 { // requests under x
		var c float64
		for _, b := range buckets {
			switch {
			case x >= b.End:
				c += float64(b.Count)
			case x > b.Start:
				c += float64(b.Count) * (x - b.Start) / (b.End - b.Start)
			}
		}
		return c
	}
	for range 100 { // bisection: far below a microsecond
		mid := (lo + hi) / 2
		if below(mid) < want {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi
}

// coarse returns the bucket that holds percentile p when it is wider than
// half its upper edge and than 20 µs: a value interpolated in it says
// little about where the requests were.
func coarse(data []bucket, p float64) (bucket, bool) {
	for _, b := range data {
		if b.Percent >= p {
			w := b.End - b.Start
			return b, w > b.End/2 && w > 20e-6
		}
	}
	return bucket{}, false
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "benchjson:", err)
	os.Exit(1)
}
