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
		w := decay(now.Sub(s.last).Seconds() / EWMADecay.Seconds())
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
	return s.ewma * decay(now.Sub(s.last).Seconds()/EWMADecay.Seconds())
}

// decay is math.Exp(-t), t being the time since the last sample in units
// of EWMADecay. Under load samples come microseconds apart, where
// math.Exp's ~20 ns a request (issue 14) buys nothing: for |t| < 2⁻¹⁰
// (5 ms apart) its Taylor series to t⁴ is within t⁵/120 < 10⁻¹⁷ of it,
// below a float64's resolution near 1 (TestDecayMatchesExp).
func decay(t float64) float64 {
	if t < 0x1p-10 && t > -0x1p-10 {
		return 1 - t*(1-t*(0.5-t*(1.0/6-t*(1.0/24))))
	}
	return math.Exp(-t)
}
