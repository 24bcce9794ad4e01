// Command benchjson reads the JSON that bench.sh's load tools write and
// prints the figures bench.sh tabulates, space-separated on one line.
//
//	benchjson iperf3 FILE   ->  <Gbit/s received> <retransmits>
//	benchjson fortio FILE   ->  <p50 ms> <p99 ms> <p99.9 ms> <actual req/s> <non-OK count> <requests>
package main

import (
	"encoding/json"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: benchjson iperf3|fortio FILE")
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
// seconds, Percent the share of requests up to End.
type bucket struct {
	Start, End, Percent float64
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
