package balance

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// EWMADecay is the peak-EWMA time constant.
const EWMADecay = 5 * time.Second

// Stats is what one agent measures of one endpoint: its requests in
// flight and its peak-EWMA latency. The caller passes the time, so tests
// choose it. The zero value is ready; safe for concurrent use.
type Stats struct {
	Active atomic.Int64 // connections and requests in flight

	mu   sync.Mutex // guards the following
	ewma float64    // seconds; 0 until the first sample
	last time.Time
}

// Observe adds a latency sample taken at now (connect time for L4, time to
// response headers for L7). A sample above the average replaces it
// (peak); below, it decays in with a time constant of EWMADecay.
func (s *Stats) Observe(now time.Time, d time.Duration) {
	x := d.Seconds()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ewma == 0 || x > s.ewma {
		s.ewma = x
	} else {
		w := math.Exp(-now.Sub(s.last).Seconds() / EWMADecay.Seconds())
		s.ewma = s.ewma*w + x*(1-w)
	}
	s.last = now
}

// Latency is the peak EWMA at now, decayed by the time since the last
// sample, so an endpoint that lost the comparison once (a slow first
// sample) becomes cheap again and is probed, instead of being skipped
// forever.
func (s *Stats) Latency(now time.Time) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ewma == 0 {
		return 0
	}
	return s.ewma * math.Exp(-now.Sub(s.last).Seconds()/EWMADecay.Seconds())
}
