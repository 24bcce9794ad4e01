package outlier

import (
	"sync"
	"sync/atomic"
	"time"
)

// Set is an agent's outlier state: one Detector per destination (a
// service, or one of its subsets or ports with a traffic policy of its
// own: Istio makes each an Envoy cluster with a detector of its own) and
// the quarantine of unreachable endpoints. An endpoint may be in several
// destinations' pools; each detector counts and ejects it apart. Safe for
// concurrent use; the zero value is ready.
//
// A destination's configuration and pool are set only by Sync (from the
// agent's view of the policies); Report only feeds outcomes, so traffic
// to one destination never changes another's configuration.
//
// The quarantine is fogmesh's own fast failover, apart from outlier
// detection: an endpoint that refused a connection is skipped for a fixed
// time (the agent's ejectFor), not subject to max ejection percent. The
// agent applies it only when the service's policy asks for it (fogmesh's
// default; Istio documents only count the failure).
type Set struct {
	mu        sync.RWMutex         // guards detectors
	detectors map[string]*Detector // destination key -> its pool's detector

	quarantine sync.Map // endpoint key -> time.Time until which it is skipped
	// anyQuarantine: Quarantine was ever called. Until then the request
	// path's check of every candidate skips the map.
	anyQuarantine atomic.Bool
}

// Sync sets one destination's configuration and pool (its endpoints'
// keys), creating its detector (sweeps starting at now) if it has none,
// and returns it: the destination's until Prune drops it (a caller may
// keep it for EjectedIn and Detector.Report rather than look it up by
// dest for every request).
func (s *Set) Sync(dest string, cfg Config, endpoints []string, now time.Time) *Detector {
	s.mu.Lock()
	d := s.detectors[dest]
	if d == nil {
		if s.detectors == nil {
			s.detectors = map[string]*Detector{}
		}
		d = New(cfg, now)
		s.detectors[dest] = d
	}
	s.mu.Unlock()
	d.SetConfig(cfg, now)
	d.SetHosts(endpoints)
	return d
}

// Prune forgets the destinations not in keep.
func (s *Set) Prune(keep map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for dest := range s.detectors {
		if !keep[dest] {
			delete(s.detectors, dest)
		}
	}
}

func (s *Set) detector(dest string) *Detector {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.detectors[dest]
}

// Report records an outcome of an attempt at endpoint key of destination
// dest. A destination Sync has not configured has no detection.
func (s *Set) Report(dest, key string, o Outcome, now time.Time) Event {
	d := s.detector(dest)
	if d == nil {
		return Event{}
	}
	return d.Report(key, o, now)
}

// Quarantine skips endpoint key until the given time.
func (s *Set) Quarantine(key string, until time.Time) {
	s.anyQuarantine.Store(true)
	s.quarantine.Store(key, until)
}

func (s *Set) quarantined(key string, now func() time.Time) bool {
	if !s.anyQuarantine.Load() {
		return false
	}
	if v, ok := s.quarantine.Load(key); ok {
		if now().Before(v.(time.Time)) {
			return true
		}
		s.quarantine.CompareAndDelete(key, v)
	}
	return false
}

// Ejected reports whether endpoint key is skipped now by requests to
// destination dest: quarantined, or ejected by dest's detector.
func (s *Set) Ejected(dest, key string, now time.Time) bool {
	return s.EjectedNow(dest, key, func() time.Time { return now })
}

// EjectedNow is Ejected with the time read from clock (time.Now) only if
// an ejection or quarantine is there to compare it with: the request
// path asks for every candidate.
func (s *Set) EjectedNow(dest, key string, clock func() time.Time) bool {
	if s.quarantined(key, clock) {
		return true
	}
	d := s.detector(dest)
	return d != nil && d.ejectedNow(key, clock)
}

// EjectedIn is EjectedNow for the destination whose detector is d (from
// Sync; nil: none), without looking it up.
func (s *Set) EjectedIn(d *Detector, key string, clock func() time.Time) bool {
	if s.quarantined(key, clock) {
		return true
	}
	return d != nil && d.ejectedNow(key, clock)
}

// EjectedAnywhere reports whether endpoint key is quarantined or ejected
// by any destination's detector (for status pages).
func (s *Set) EjectedAnywhere(key string, now time.Time) bool {
	if s.quarantined(key, func() time.Time { return now }) {
		return true
	}
	for _, d := range s.all() {
		if d.Ejected(key, now) {
			return true
		}
	}
	return false
}

func (s *Set) all() []*Detector {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*Detector, 0, len(s.detectors))
	for _, d := range s.detectors {
		out = append(out, d)
	}
	return out
}

// Uneject returns endpoint key at once (its active health check passed):
// it lifts the quarantine and every destination's ejection of it.
func (s *Set) Uneject(key string, now time.Time) {
	s.quarantine.Delete(key)
	for _, d := range s.all() {
		d.Uneject(key, now)
	}
}

// State returns endpoint key's state in destination dest's detector (zero
// if it has none).
func (s *Set) State(dest, key string, now time.Time) HostState {
	d := s.detector(dest)
	if d == nil {
		return HostState{}
	}
	return d.State(key, now)
}

// Reset forgets every quarantine and detector.
func (s *Set) Reset() {
	s.quarantine.Clear()
	s.mu.Lock()
	s.detectors = nil
	s.mu.Unlock()
}
